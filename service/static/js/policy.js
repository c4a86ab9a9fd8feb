/* #/policies/<id>: one policy — its summary, downloads and exports (the server's registered
   exporters), bits per layer, the loss/avg-bits trade-off and the sensitivity heatmap. Format
   labels and the uniform baselines' avg bits come from the server (POST /v1/cost). */
import { api, fetchFile, get } from "./api.js";
import { META } from "./meta.js";
import { bitsChart, bitsLegend, drawHeatmap, tradeoffChart } from "./charts.js";
import { floatFormat, priceFormats } from "./formats.js";
import { $, budgetText, esc, fmtNum, short } from "./util.js";
import { state } from "./view.js";

function download(obj, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([JSON.stringify(obj, null, 2)], { type: "application/json" }));
  a.download = name; a.click(); setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

async function exportAs(id, format) {
  $("#export-error").textContent = "";
  const r = await fetchFile(`/v1/policies/${encodeURIComponent(id)}/export?format=${encodeURIComponent(format)}`);
  if (!r.ok) { $("#export-error").textContent = `${format}: ${(await r.json().catch(() => ({}))).message || r.status}`; return; }
  const name = (r.headers.get("Content-Disposition") || "").split("filename=")[1]?.replace(/"/g, "") || `${id}-${format}`;
  const a = document.createElement("a");
  a.href = URL.createObjectURL(await r.blob()); a.download = name; a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function summary(policy, jobId) {
  const m = policy.measured || {}, loop = policy.refine?.loop, q = policy.quantizer;
  return `<dl class="kv">
    <dt>model</dt><dd>${esc(policy.model.ref)}</dd>
    <dt>job</dt><dd>${jobId ? `<a class="mono" href="#/jobs/${esc(jobId)}">${short(jobId)}</a>` : "—"}</dd>
    <dt>budget</dt><dd class="mono">${esc(budgetText(policy.budget))}</dd>
    <dt>cost</dt><dd class="mono">${Object.entries(policy.cost).filter(([, v]) => v !== null).map(([k, v]) => `${k} ${fmtNum(v, 6)}`).join(" · ")}</dd>
    <dt>measured</dt><dd><b>${esc(m.metric)} ${fmtNum(m.value)}</b>${m.extra?.kl_stderr != null ? ` ± ${fmtNum(m.extra.kl_stderr, 2)}` : ""} (float ${fmtNum(m.float)}; ${Object.entries(m.uniform || {}).map(([b, v]) => `uniform ${/^\d+$/.test(b) ? b + "-bit" : esc(b)} ${fmtNum(v, 3)}`).join(", ")})</dd>
    <dt>predicted</dt><dd id="predicted">${esc(policy.predicted?.proxy)} loss increase ${fmtNum(policy.predicted?.loss_increase)}${policy.predicted?.measured_increase != null ? `; measured on calibration ${fmtNum(policy.predicted.measured_increase)} over the ${esc(policy.predicted.reference)} model` : ""}</dd>
    ${loop ? `<dt>loop</dt><dd id="loop">uniform ${esc(loop.start)}${loop.began === "solver" ? ", begun at the solver's policy (judged better)" : ""}: judge loss ${fmtNum(loop.start_measured)} → ${fmtNum(loop.final_measured)} in ${loop.n_rounds ?? loop.rounds.length} rounds, ${loop.measured_cells} cells measured at the current policy (${esc(loop.stopped_by)})</dd>` : ""}
    ${policy.refine?.uniform_check?.chosen ? `<dt>uniform check</dt><dd>uniform ${esc(policy.refine.uniform_check.chosen)} judged better than the mixed policy: this policy is uniform</dd>` : ""}
    <dt>quantizer</dt><dd id="quantizer">${esc(q?.method || META.quantizers[0])}${q?.method === "gptq" ? ` (damp ${fmtNum(q.damp)}, act-order ${q.act_order ? "on" : "off"})` : ""}</dd>
    <dt>solver</dt><dd>${esc(policy.solver?.name)}: objective ${fmtNum(policy.solver?.objective)}, gap ${policy.solver?.gap ?? "—"}</dd>
    ${Object.keys(policy.sparsity || {}).length ? `<dt>pruning</dt><dd class="mono" id="sparsity">${Object.entries(policy.sparsity).map(([n, r]) => `${esc(n)} ${Math.round(r * 100)}%`).join(" · ")} <span class="muted">(${esc(policy.sparse_format || "")})</span></dd>` : ""}
  </dl>`;
}

function page(id, policy, jobId, table) {
  const m = policy.measured || {};
  return `
    <h1>Policy <span class="mono">${esc(id)}</span></h1>
    <div class="card row">
      <div>${summary(policy, jobId)}</div>
      <div style="margin-left:auto">
        <button id="dl-policy">Download policy JSON</button>
        ${table ? `<button class="secondary" id="dl-table">Download sensitivity JSON</button>` : ""}
        <div class="row" id="exports" style="margin-top:8px">${META.exporters.map((f) => `<button class="secondary" data-export="${esc(f)}">${esc(f)}</button>`).join("")}</div>
        <div class="error" id="export-error"></div>
      </div>
    </div>
    <div class="charts">
      <div class="card"><h2>Bits per layer (model order)</h2><div class="chartbox"><canvas id="bits-chart"></canvas></div><div class="legend" id="bits-legend"></div></div>
      <div class="card"><h2>Trade-off: loss vs average bits</h2><div class="chartbox"><canvas id="tradeoff-chart"></canvas></div>
        <p class="muted">Measured ${esc(m.metric)} on held-out data for every budget of this job, uniform policies and the float model on the same axes; the predicted loss increase (proxy units) on the right axis.</p></div>
      <div class="card"><h2>Sensitivity table (${table ? esc(table.proxy) : "not stored"})</h2>
        <p class="muted">log₁₀ predicted loss increase per layer × format (dark = small); the chosen format of each layer is outlined in pink.</p>
        <div class="heatwrap">${table ? `<canvas id="heatmap"></canvas>` : "—"}</div></div>
    </div>`;
}

/* the uniform baselines' formats whose avg bits the policy does not record (older policies):
   the reference group size, the job's symmetry */
function unpricedUniform(policy, job) {
  const m = policy.measured || {}, known = m.uniform_avg_bits || {};
  const symmetric = !!job?.request.formats.symmetric;
  return Object.keys(m.uniform || {}).filter((b) => known[b] === undefined)
    .map((b) => (/^\d+$/.test(b) ? { bits: Number(b), group_size: META.formats.reference_group_size, symmetric }
      : { runtime: b }));
}

export async function policyView(view, id) {
  const { body: policy, headers } = await api(`/v1/policies/${encodeURIComponent(id)}`);
  const jobId = headers.get("X-Bitplan-Job");
  const job = jobId ? await get(`/v1/jobs/${jobId}`) : null;
  const table = job && job.sensitivity_id ? await get(`/v1/sensitivities/${job.sensitivity_id}`) : null;
  const siblings = job ? await Promise.all(job.policy_ids.map((p) => get(`/v1/policies/${p}`))) : [policy];
  const uniform = unpricedUniform(policy, job);
  const priced = await priceFormats(job ? job.model_id : policy.model.sha256,
    [floatFormat(), ...policy.layers, ...(table ? table.formats : []), ...uniform]);

  const byName = {}; policy.layers.forEach((l) => (byName[l.name] = l));
  const layerFormat = (n) => byName[n] || floatFormat();
  // all layers in model order: the table knows them; else the policy's own order
  const order = table ? table.layers.map((l) => l.name) : policy.layers.map((l) => l.name).concat(policy.float_layers || []);
  const chosen = {}; order.forEach((n) => (chosen[n] = priced(layerFormat(n)).label));
  const m = policy.measured || {};
  const avgBits = Object.fromEntries(uniform.map((f) => [f.runtime || String(f.bits), priced(f).cost.avg_bits]));
  Object.assign(avgBits, m.uniform_avg_bits || {});
  const uni = Object.entries(m.uniform || {}).map(([b, v]) => ({ x: avgBits[b], y: v, b }));

  view.innerHTML = page(id, policy, jobId, table);
  $("#dl-policy").onclick = () => download(policy, `policy-${id}.json`);
  document.querySelectorAll("[data-export]").forEach((b) => (b.onclick = () => exportAs(id, b.dataset.export)));
  if (table) $("#dl-table").onclick = () => download(table, `sensitivity-${job.sensitivity_id}.json`);
  state.charts.push(bitsChart($("#bits-chart"), order, layerFormat, chosen, policy.sparsity || {}));
  $("#bits-legend").innerHTML = bitsLegend(order, layerFormat, chosen);
  state.charts.push(tradeoffChart($("#tradeoff-chart"), siblings, uni, m));
  if (table) drawHeatmap($("#heatmap"), table, chosen, table.formats.map((f) => priced(f).label));
}
