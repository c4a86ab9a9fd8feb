/* bitplan dashboard: a small single-page app over the public /v1 API only (no private
   endpoints), so it also proves the API is enough. Hash routes:
     #/jobs  #/jobs/<id>  #/policies/<id>  #/submit
   Polling keeps tables and progress bars live; a banner shows when the server is unreachable
   and requests are retried with back-off. The API token (if the server needs one) lives in
   sessionStorage only. */
"use strict";

// the job statuses and phases as the server defines them (GET /v1/meta), read once
const S = {};                      // status by name: S.SUCCEEDED === "succeeded"
const TERMINAL = [], PHASES = [];
let metaLoaded = null;             // one shared promise: two routes starting at once must not both fill the lists
function loadMeta() {
  metaLoaded ??= get("/v1/meta").then((m) => {
    Object.assign(S, m.job_statuses);
    TERMINAL.push(...m.terminal);
    PHASES.push(...m.phases);
  }).catch((e) => { metaLoaded = null; throw e; });
  return metaLoaded;
}
const PAGE = 50;
const state = { timer: null, charts: [], models: {}, route: "" };

// ---------------------------------------------------------------- helpers
const $ = (sel, root = document) => root.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const short = (id) => (id || "").slice(0, 8);
const fmtNum = (x, d = 4) => (x === null || x === undefined || Number.isNaN(x) ? "—" : Number(x).toPrecision(d));

function ago(iso) {
  if (!iso) return "—";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return s < 60 ? `${s.toFixed(0)}s` : s < 3600 ? `${(s / 60).toFixed(0)}m` : s < 86400 ? `${(s / 3600).toFixed(1)}h` : `${(s / 86400).toFixed(1)}d`;
}
function duration(job) {
  if (!job.started_at) return "—";
  const end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
  const s = (end - Date.parse(job.started_at)) / 1000;
  return s < 120 ? `${s.toFixed(1)}s` : `${(s / 60).toFixed(1)}m`;
}
function budgetText(b) {
  const n = (v) => +Number(v).toPrecision(6);
  const one = (x) => Object.entries(x).map(([k, v]) => `${k}≤${n(v)}`).join(", ");
  return Array.isArray(b) ? (b.length === 1 ? one(b[0]) : `${b.length} points: ${b.map((x) => n(Object.values(x)[0])).join(", ")}`) : one(b);
}
function progressBar(job, big = false) {
  const pct = Math.round((job.status === S.SUCCEEDED ? 1 : job.progress) * 100);
  const label = job.status === S.RUNNING ? `${job.phase || "starting"} ${pct}%` : job.status === S.QUEUED ? S.QUEUED : `${job.status} ${pct}%`;
  return `<div class="bar ${job.status} ${big ? "big" : ""}" role="progressbar" aria-valuenow="${pct}" aria-valuemin="0" aria-valuemax="100" data-phase="${esc(job.phase || "")}"><span style="width:${pct}%"></span><em>${esc(label)}</em></div>`;
}
const badge = (s) => `<span class="badge ${esc(s)}">${esc(s)}</span>`;

// ---------------------------------------------------------------- API access
function token() { return sessionStorage.getItem("bitplan.token") || ""; }

class ApiError extends Error {
  constructor(status, body) { super(body.message || `HTTP ${status}`); this.status = status; this.body = body; }
}

function banner(text, kind = "") {
  const b = $("#banner");
  if (!text) { b.hidden = true; b.textContent = ""; return; }
  b.hidden = false; b.className = `banner ${kind}`; b.textContent = text;
}

/* fetch + JSON with the token; network failures show the banner and retry with back-off
   (the call resolves once the server answers again). 4xx/5xx become ApiError. */
async function api(path, opts = {}, retry = true) {
  let wait = 1000;
  for (;;) {
    let r;
    try {
      const headers = Object.assign({}, opts.headers || {});
      if (token()) headers.Authorization = `Bearer ${token()}`;
      r = await fetch(path, Object.assign({}, opts, { headers }));
    } catch (e) {
      if (!retry) throw e;
      banner(`Server unreachable — retrying in ${Math.round(wait / 1000)} s …`);
      await new Promise((res) => setTimeout(res, wait));
      wait = Math.min(wait * 2, 10000);
      continue;
    }
    if (r.status >= 502 && r.status <= 504 && retry) {
      banner(`Server not available (HTTP ${r.status}) — retrying in ${Math.round(wait / 1000)} s …`);
      await new Promise((res) => setTimeout(res, wait));
      wait = Math.min(wait * 2, 10000);
      continue;
    }
    if (r.status === 401) {
      banner("The server needs an API token: enter it at the top right and press Save.", "info");
      throw new ApiError(401, await r.json().catch(() => ({})));
    }
    banner("");
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new ApiError(r.status, body);
    return { body, headers: r.headers };
  }
}
const get = async (path) => (await api(path)).body;

async function loadModels() {
  try {
    for (const m of await get("/v1/models")) state.models[m.id] = m;
  } catch (e) { /* shown by the banner */ }
  return state.models;
}

// ---------------------------------------------------------------- router
function clearView() {
  if (state.timer) { clearTimeout(state.timer); state.timer = null; }
  state.charts.forEach((c) => c.destroy());
  state.charts = [];
}
function poll(fn, ms) {
  const tick = async () => {
    const route = state.route;
    try { await fn(); } catch (e) { if (!(e instanceof ApiError)) console.error(e); }
    if (state.route === route) state.timer = setTimeout(tick, ms);
  };
  state.timer = setTimeout(tick, ms);
}

async function route() {
  clearView();
  const hash = location.hash || "#/jobs";
  state.route = hash + ":" + Date.now();
  const [, page, id] = hash.split("/");
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === page));
  const view = $("#view");
  try {
    await loadMeta();
    if (page === "jobs" && id) await jobView(view, decodeURIComponent(id));
    else if (page === "policies" && id) await policyView(view, decodeURIComponent(id));
    else if (page === "submit") await submitView(view);
    else await jobsView(view);
  } catch (e) {
    view.innerHTML = `<div class="errorbox">${esc(e.message)}</div>`;
  }
}

// ---------------------------------------------------------------- jobs table
async function jobsView(view) {
  const q = new URLSearchParams((location.hash.split("?")[1]) || "");
  const status = q.get("status") || "", model = q.get("model") || "";
  const cursors = [null];  // cursor of each page we have seen (for "newer")
  let page = 0;
  await loadModels();
  view.innerHTML = `
    <h1>Jobs</h1>
    <div class="card row">
      <div class="field"><label for="f-status">Status</label>
        <select id="f-status"><option value="">any</option>${Object.values(S).map((s) => `<option ${s === status ? "selected" : ""}>${s}</option>`).join("")}</select></div>
      <div class="field"><label for="f-model">Model</label>
        <select id="f-model"><option value="">any</option>${Object.values(state.models).map((m) => `<option value="${esc(m.id)}" ${m.id === model ? "selected" : ""}>${esc(m.ref)} (${short(m.id)})</option>`).join("")}</select></div>
      <div class="muted" id="jobs-count"></div>
    </div>
    <table id="jobs"><thead><tr><th>job</th><th>status</th><th>model</th><th>budget</th><th>proxy / solver</th><th>progress</th><th>age</th><th>duration</th></tr></thead><tbody></tbody></table>
    <div class="pager"><button class="secondary" id="newer">← newer</button><button class="secondary" id="older">older →</button><span class="muted" id="pageno"></span></div>`;
  const setFilter = () => {
    const p = new URLSearchParams();
    if ($("#f-status").value) p.set("status", $("#f-status").value);
    if ($("#f-model").value) p.set("model", $("#f-model").value);
    location.hash = `#/jobs${p.toString() ? "?" + p : ""}`;
  };
  $("#f-status").onchange = setFilter;
  $("#f-model").onchange = setFilter;
  let next = null;
  const render = async () => {
    const p = new URLSearchParams({ limit: PAGE });
    if (status) p.set("status", status);
    if (model) p.set("model_id", model);
    if (cursors[page]) p.set("cursor", cursors[page]);
    const data = await get(`/v1/jobs?${p}`);
    next = data.next_cursor;
    const body = $("#jobs tbody");
    if (!body) return;
    body.innerHTML = data.items.map((j) => {
      const m = state.models[j.model_id];
      const ps = `${esc(j.request.proxy || "recipe")} / ${esc(j.request.solver || "ilp")}`;
      return `<tr data-job="${esc(j.id)}"><td class="mono"><a href="#/jobs/${esc(j.id)}">${short(j.id)}</a></td><td>${badge(j.status)}</td>
        <td>${esc(m ? m.ref : short(j.model_id))}</td><td class="mono">${esc(budgetText(j.request.budgets))}</td><td>${ps}</td>
        <td>${progressBar(j)}</td><td>${ago(j.created_at)}</td><td>${duration(j)}</td></tr>`;
    }).join("") || `<tr><td colspan="8" class="muted">no jobs${status || model ? " match these filters" : " yet — submit one"}</td></tr>`;
    $("#newer").disabled = page === 0;
    $("#older").disabled = !next;
    $("#pageno").textContent = `page ${page + 1}`;
    $("#jobs-count").textContent = `${data.items.length} shown, ${PAGE} per page`;
  };
  $("#newer").onclick = async () => { if (page > 0) { page -= 1; await render(); } };
  $("#older").onclick = async () => { if (next) { cursors[page + 1] = next; page += 1; await render(); } };
  await render();
  poll(render, 2000);
}

// ---------------------------------------------------------------- one job
function timeline(job, events) {
  const seen = new Set(events.map((e) => e.phase).filter(Boolean));
  const cur = job.phase;
  return `<div class="timeline">${PHASES.map((p) => {
    let cls = "";
    if (job.status === S.SUCCEEDED && seen.has(p)) cls = "done";
    else if (p === cur && job.status === S.RUNNING) cls = "now";
    else if (p === cur && job.status === S.FAILED) cls = "failed";
    else if (seen.has(p) && PHASES.indexOf(p) < PHASES.indexOf(cur)) cls = "done";
    return `<div class="ph ${cls}" data-phase="${p}">${p}</div>`;
  }).join("")}</div>`;
}

async function jobView(view, id) {
  await loadModels();
  const render = async () => {
    const job = await get(`/v1/jobs/${encodeURIComponent(id)}`);
    const events = await get(`/v1/jobs/${encodeURIComponent(id)}/events`);
    const m = state.models[job.model_id];
    const pols = await Promise.all(job.policy_ids.map((p) => get(`/v1/policies/${p}`)));
    view.innerHTML = `
      <h1>Job <span class="mono">${esc(job.id)}</span> ${badge(job.status)}</h1>
      <div class="card">
        ${progressBar(job, true)}
        ${timeline(job, events)}
        <p class="muted" id="job-message">${esc(job.message)}</p>
        ${job.error ? `<div class="errorbox" id="job-error">${esc(job.error)}</div>` : ""}
        ${TERMINAL.includes(job.status) ? "" : `<button class="danger" id="cancel">Cancel job</button>`}
      </div>
      <div class="card"><dl class="kv">
        <dt>model</dt><dd>${esc(m ? m.ref : job.model_id)} <span class="mono muted">${short(job.model_id)}</span></dd>
        <dt>budget</dt><dd class="mono">${esc(budgetText(job.request.budgets))}</dd>
        <dt>formats</dt><dd class="mono">bits ${esc(job.request.formats.bits.join(","))} × group ${esc(JSON.stringify(job.request.formats.group_size))}${job.request.formats.symmetric ? " symmetric" : ""}</dd>
        <dt>proxy / solver</dt><dd>${esc(job.request.proxy || "recipe (by model kind)")} / ${esc(job.request.solver || "ilp")}${job.request.refine === false ? "" : " + refine"}</dd>
        <dt>sensitivity</dt><dd>${job.sensitivity_id ? `<span class="mono">${short(job.sensitivity_id)}</span> ${job.sensitivity_cached ? "(reused from cache)" : "(computed)"}` : "—"}</dd>
        <dt>timings</dt><dd class="mono">${Object.entries(job.timings).map(([k, v]) => `${k} ${v.toFixed(2)}s`).join(" · ") || "—"}</dd>
        <dt>created</dt><dd>${esc(job.created_at)} (${ago(job.created_at)} ago), attempts ${job.attempts}</dd>
      </dl></div>
      <h2>Policies</h2>
      <table id="policies"><thead><tr><th>policy</th><th>budget</th><th>avg bits</th><th>metric</th><th>value</th><th>float</th><th>uniform</th></tr></thead><tbody>
      ${pols.map((p, i) => `<tr><td class="mono"><a href="#/policies/${esc(job.policy_ids[i])}">${short(job.policy_ids[i])}</a></td>
        <td class="mono">${esc(budgetText(p.budget))}</td><td>${fmtNum(p.cost.avg_bits, 5)}</td><td>${esc(p.measured?.metric)}</td>
        <td><b>${fmtNum(p.measured?.value)}</b></td><td>${fmtNum(p.measured?.float)}</td>
        <td class="mono">${Object.entries(p.measured?.uniform || {}).map(([b, v]) => `${b}b ${fmtNum(v, 3)}`).join(" · ")}</td></tr>`).join("") || `<tr><td colspan="7" class="muted">${job.status === S.SUCCEEDED ? "none" : "available when the job succeeds"}</td></tr>`}
      </tbody></table>
      <h2>Progress log</h2>
      <table id="events"><thead><tr><th>#</th><th>time</th><th>status</th><th>phase</th><th>progress</th><th>message</th></tr></thead><tbody>
      ${events.slice(-200).map((e) => `<tr><td>${e.seq}</td><td class="mono">${esc(e.at.slice(11, 19))}</td><td>${esc(e.status)}</td><td>${esc(e.phase || "")}</td><td>${Math.round(e.progress * 100)}%</td><td>${esc(e.message)}</td></tr>`).join("")}
      </tbody></table>`;
    const btn = $("#cancel");
    if (btn) btn.onclick = async () => {
      btn.disabled = true;
      try { await api(`/v1/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" }); await render(); }
      catch (e) { btn.insertAdjacentHTML("afterend", `<div class="error">${esc(e.message)}</div>`); }
    };
    return job;
  };
  const job = await render();
  if (!TERMINAL.includes(job.status)) poll(async () => { const j = await render(); if (TERMINAL.includes(j.status)) clearView(); }, 1000);
}

// ---------------------------------------------------------------- one policy
const PALETTE = { 2: "#d64545", 3: "#f08c2e", 4: "#e3c02b", 5: "#8cc04b", 6: "#3fae6a", 7: "#2b9c9c", 8: "#2f6fed", 16: "#9aa3b2" };
function formatColor(bits, group) {
  const base = PALETTE[bits] || "#555";
  if (bits === 16 || group === 64 || group === null) return base;
  return base + (group === 32 ? "cc" : group === 128 ? "88" : "aa");
}
const fmtLabel = (f) => (f.bits >= 16 ? "float" : `w${f.bits}${f.group_size ? "g" + f.group_size : "pc"}${f.symmetric ? "s" : "a"}`);

function viridis(t) {  // a perceptual ramp for the heatmap (t in 0..1)
  const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const x = Math.min(Math.max(t, 0), 1) * (stops.length - 1), i = Math.min(Math.floor(x), stops.length - 2), f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + (stops[i + 1][k] - v) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function drawHeatmap(canvas, table, chosen) {
  const L = table.layers.length, K = table.formats.length;
  const ctx = canvas.getContext("2d");
  ctx.font = "11px ui-monospace, monospace";
  const names = table.layers.map((l) => (l.name.length > 48 ? "…" + l.name.slice(-47) : l.name));
  const left = Math.ceil(Math.max(...names.map((n) => ctx.measureText(n).width))) + 14;
  const cell = { w: 46, h: L > 60 ? 12 : 18 }, top = 64, legendW = 90;
  canvas.width = left + K * cell.w + legendW + 20;
  canvas.height = Math.max(top + L * cell.h + 10, 220);
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  const vals = table.values.flat().filter((v) => v > 0);
  const lo = Math.log10(Math.min(...vals)), hi = Math.log10(Math.max(...vals));
  ctx.font = "11px ui-monospace, monospace";
  // colour scale legend
  const lx = left + K * cell.w + 24, lh = Math.min(160, L * cell.h);
  for (let y = 0; y < lh; y++) { ctx.fillStyle = viridis(1 - y / lh); ctx.fillRect(lx, top + y, 14, 1); }
  ctx.fillStyle = "#333";
  ctx.fillText(`1e${hi.toFixed(1)}`, lx + 18, top + 9);
  ctx.fillText(`1e${lo.toFixed(1)}`, lx + 18, top + lh);
  ctx.fillStyle = "#f0f0f0"; ctx.fillRect(lx, top + lh + 10, 14, 10);
  ctx.fillStyle = "#333"; ctx.fillText("≤ 0", lx + 18, top + lh + 19);
  ctx.fillStyle = "#333";
  table.formats.forEach((f, k) => {
    ctx.save(); ctx.translate(left + k * cell.w + cell.w / 2, top - 6); ctx.rotate(-Math.PI / 4);
    ctx.fillText(fmtLabel(f), 0, 0); ctx.restore();
  });
  let painted = 0;
  table.layers.forEach((l, i) => {
    ctx.fillStyle = "#333"; ctx.textAlign = "right";
    ctx.fillText(names[i], left - 6, top + i * cell.h + cell.h - 4);
    ctx.textAlign = "left";
    table.values[i].forEach((v, k) => {
      ctx.fillStyle = v > 0 ? viridis((Math.log10(v) - lo) / Math.max(hi - lo, 1e-9)) : "#f0f0f0";
      ctx.fillRect(left + k * cell.w, top + i * cell.h, cell.w - 1, cell.h - 1);
      painted += 1;
      if (chosen[l.name] === fmtLabel(table.formats[k])) {
        ctx.strokeStyle = "#e0218a"; ctx.lineWidth = 2;
        ctx.strokeRect(left + k * cell.w + 1, top + i * cell.h + 1, cell.w - 3, cell.h - 3);
      }
    });
  });
  canvas.dataset.cells = String(painted);
  canvas.dataset.range = `${lo.toFixed(2)}..${hi.toFixed(2)}`;
}

async function policyView(view, id) {
  const { body: policy, headers } = await api(`/v1/policies/${encodeURIComponent(id)}`);
  const jobId = headers.get("X-Bitplan-Job");
  const job = jobId ? await get(`/v1/jobs/${jobId}`) : null;
  const table = job && job.sensitivity_id ? await get(`/v1/sensitivities/${job.sensitivity_id}`) : null;
  const siblings = job ? await Promise.all(job.policy_ids.map((p) => get(`/v1/policies/${p}`))) : [policy];
  const chosen = {}; policy.layers.forEach((l) => (chosen[l.name] = fmtLabel(l)));
  (policy.float_layers || []).forEach((n) => (chosen[n] = "float"));
  // all layers in model order: the table knows them; else the policy's own order
  const order = table ? table.layers.map((l) => l.name) : policy.layers.map((l) => l.name).concat(policy.float_layers || []);
  const byName = {}; policy.layers.forEach((l) => (byName[l.name] = l));
  const m = policy.measured || {};
  view.innerHTML = `
    <h1>Policy <span class="mono">${esc(id)}</span></h1>
    <div class="card row">
      <div><dl class="kv">
        <dt>model</dt><dd>${esc(policy.model.ref)}</dd>
        <dt>job</dt><dd>${jobId ? `<a class="mono" href="#/jobs/${esc(jobId)}">${short(jobId)}</a>` : "—"}</dd>
        <dt>budget</dt><dd class="mono">${esc(budgetText(policy.budget))}</dd>
        <dt>cost</dt><dd class="mono">${Object.entries(policy.cost).filter(([, v]) => v !== null).map(([k, v]) => `${k} ${fmtNum(v, 6)}`).join(" · ")}</dd>
        <dt>measured</dt><dd><b>${esc(m.metric)} ${fmtNum(m.value)}</b>${m.extra?.kl_stderr != null ? ` ± ${fmtNum(m.extra.kl_stderr, 2)}` : ""} (float ${fmtNum(m.float)}; ${Object.entries(m.uniform || {}).map(([b, v]) => `uniform ${b}-bit ${fmtNum(v, 3)}`).join(", ")})</dd>
        <dt>predicted</dt><dd id="predicted">${esc(policy.predicted?.proxy)} loss increase ${fmtNum(policy.predicted?.loss_increase)}${policy.predicted?.measured_increase != null ? `; measured on calibration ${fmtNum(policy.predicted.measured_increase)} over the ${esc(policy.predicted.reference)} model` : ""}</dd>
        ${policy.refine?.loop ? `<dt>loop</dt><dd id="loop">uniform ${esc(policy.refine.loop.start)}${policy.refine.loop.began === "solver" ? ", begun at the solver's policy (judged better)" : ""}: judge loss ${fmtNum(policy.refine.loop.start_measured)} → ${fmtNum(policy.refine.loop.final_measured)} in ${policy.refine.loop.n_rounds ?? policy.refine.loop.rounds.length} rounds, ${policy.refine.loop.measured_cells} cells measured at the current policy (${esc(policy.refine.loop.stopped_by)})</dd>` : ""}
        ${policy.refine?.uniform_check?.chosen ? `<dt>uniform check</dt><dd>uniform ${esc(policy.refine.uniform_check.chosen)} judged better than the mixed policy: this policy is uniform</dd>` : ""}
        <dt>quantizer</dt><dd id="quantizer">${esc(policy.quantizer?.method || "rtn")}${policy.quantizer?.method === "gptq" ? ` (damp ${fmtNum(policy.quantizer.damp)}, act-order ${policy.quantizer.act_order ? "on" : "off"})` : ""}</dd>
        <dt>solver</dt><dd>${esc(policy.solver?.name)}: objective ${fmtNum(policy.solver?.objective)}, gap ${policy.solver?.gap ?? "—"}</dd>
        ${Object.keys(policy.sparsity || {}).length ? `<dt>pruning</dt><dd class="mono" id="sparsity">${Object.entries(policy.sparsity).map(([n, r]) => `${esc(n)} ${Math.round(r * 100)}%`).join(" · ")} <span class="muted">(${esc(policy.sparse_format || "")})</span></dd>` : ""}
      </dl></div>
      <div style="margin-left:auto">
        <button id="dl-policy">Download policy JSON</button>
        ${table ? `<button class="secondary" id="dl-table">Download sensitivity JSON</button>` : ""}
        <div class="row" id="exports" style="margin-top:8px">${["gptqmodel", "compressed-tensors", "llmcompressor-recipe", "torchao", "llamacpp", "modelopt"].map((f) => `<button class="secondary" data-export="${f}">${f}</button>`).join("")}</div>
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
  const download = (obj, name) => {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([JSON.stringify(obj, null, 2)], { type: "application/json" }));
    a.download = name; a.click(); setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  };
  $("#dl-policy").onclick = () => download(policy, `policy-${id}.json`);
  document.querySelectorAll("[data-export]").forEach((b) => (b.onclick = async () => {
    $("#export-error").textContent = "";
    const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
    const r = await fetch(`/v1/policies/${encodeURIComponent(id)}/export?format=${b.dataset.export}`, { headers });
    if (!r.ok) { $("#export-error").textContent = `${b.dataset.export}: ${(await r.json().catch(() => ({}))).message || r.status}`; return; }
    const name = (r.headers.get("Content-Disposition") || "").split("filename=")[1]?.replace(/"/g, "") || `${id}-${b.dataset.export}`;
    const a = document.createElement("a");
    a.href = URL.createObjectURL(await r.blob()); a.download = name; a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }));
  if (table) $("#dl-table").onclick = () => download(table, `sensitivity-${job.sensitivity_id}.json`);

  // bits per layer
  const labels = order, bits = order.map((n) => (byName[n] ? byName[n].bits : 16));
  const colors = order.map((n) => (byName[n] ? formatColor(byName[n].bits, byName[n].group_size) : PALETTE[16]));
  state.charts.push(new Chart($("#bits-chart"), {
    type: "bar",
    data: { labels, datasets: [{ label: "bits", data: bits, backgroundColor: colors }] },
    options: {
      animation: false, maintainAspectRatio: false,
      plugins: { legend: { display: false }, tooltip: { callbacks: { label: (c) => {
        const n = labels[c.dataIndex], r = (policy.sparsity || {})[n];
        return (chosen[n] || "float") + (r ? `, ${Math.round(r * 100)}% pruned` : "");
      } } } },
      scales: { y: { title: { display: true, text: "bits (16 = float)" }, min: 0, max: Math.max(9, ...bits) },
        x: { ticks: { autoSkip: labels.length > 60, maxRotation: 90, minRotation: 60, font: { size: 9 } } } },
    },
  }));
  const used = [...new Set(order.map((n) => chosen[n] || "float"))].sort();
  $("#bits-legend").innerHTML = used.map((f) => {
    const l = Object.values(byName).find((x) => fmtLabel(x) === f);
    const n = order.filter((x) => (chosen[x] || "float") === f).length;
    return `<span><i style="background:${l ? formatColor(l.bits, l.group_size) : PALETTE[16]}"></i>${esc(f)} × ${n}</span>`;
  }).join("");

  // trade-off
  const pts = siblings.map((p) => ({ x: p.cost.avg_bits, y: p.measured?.value, pred: p.predicted?.loss_increase }));
  const uni = Object.entries(m.uniform || {}).map(([b, v]) => ({ x: (m.uniform_avg_bits || {})[b] ?? Number(b) + (16 + Number(b)) / 64, y: v, b }));
  const positive = [...pts.map((p) => p.y), ...uni.map((u) => u.y)].every((y) => y > 0);
  const lossLike = m.metric !== "accuracy";
  const xs = [...pts.map((p) => p.x), ...uni.map((u) => u.x)];
  const floatLine = [{ x: Math.min(...xs) - 0.2, y: m.float }, { x: Math.max(...xs) + 0.2, y: m.float }];
  const datasets = [
    { label: "this job's policies (measured)", data: pts.map((p) => ({ x: p.x, y: p.y })), backgroundColor: "#2f6fed", borderColor: "#2f6fed", showLine: true, pointRadius: 6 },
    { label: "uniform (measured)", data: uni.map((u) => ({ x: u.x, y: u.y })), backgroundColor: "#d64545", borderColor: "#d64545", showLine: true, borderDash: [4, 4], pointRadius: 5, pointStyle: "rectRot" },
    { label: "predicted loss increase (right axis)", data: pts.map((p) => ({ x: p.x, y: p.pred })), yAxisID: "y2", backgroundColor: "#f08c2e", borderColor: "#f08c2e", showLine: true, pointStyle: "triangle", pointRadius: 6 },
  ];
  if (!(lossLike && positive && m.float <= 0)) datasets.push({ label: `float (${fmtNum(m.float)})`, data: floatLine, borderColor: "#1f9d55", backgroundColor: "#1f9d55", showLine: true, pointRadius: 0, borderDash: [2, 3] });
  state.charts.push(new Chart($("#tradeoff-chart"), {
    type: "scatter", data: { datasets },
    options: {
      animation: false, maintainAspectRatio: false,
      plugins: { subtitle: { display: lossLike && positive && m.float <= 0, text: `float model: ${m.metric} = ${fmtNum(m.float)} (not drawable on a log axis)` } },
      scales: {
        x: { title: { display: true, text: "average bits per weight (scales and zero points included)" } },
        y: { type: lossLike && positive ? "logarithmic" : "linear", title: { display: true, text: `measured ${m.metric}` } },
        y2: { position: "right", grid: { drawOnChartArea: false }, title: { display: true, text: "predicted loss increase" },
          ticks: { callback: (v) => Number(v).toPrecision(2) } },
      },
    },
  }));
  if (table) drawHeatmap($("#heatmap"), table, chosen);
}

// ---------------------------------------------------------------- submit
function fieldFor(err) {
  const msg = (err.body && err.body.message) || err.message || "";
  const loc = (err.body && Array.isArray(err.body.detail) && err.body.detail[0] && err.body.detail[0].loc) || [];
  const key = loc.filter((x) => x !== "body")[0] || msg.split(/[:.\s]/)[0];
  const map = { budgets: "budgets", budget: "budgets", formats: "bits", bits: "bits", group_size: "groups", proxy: "proxy",
    solver: "solver", calibration: "calib", evaluation: "eval", model_id: "model", seed: "seed", unknown: "proxy",
    quantizer: "quantizer", quantizer_params: "quantizer", image_size: "imgsize", resize: "imgsize",
    image_mean: "imgmean", image_std: "imgstd" };
  if (map[key]) return map[key];
  if (/budget|feasible|cheapest/.test(msg)) return "budgets";
  if (/bit-width|bits/.test(msg)) return "bits";
  if (/group/.test(msg)) return "groups";
  if (/proxy/.test(msg)) return "proxy";
  if (/solver/.test(msg)) return "solver";
  if (/quantizer|gptq/i.test(msg)) return "quantizer";
  return "form";
}
function showError(form, field, message) {
  const box = form.querySelector(`[data-field="${field}"]`) || form.querySelector('[data-field="form"]');
  box.classList.add("invalid");
  box.querySelector(".error").textContent = message;
}
function clearErrors(form) {
  form.querySelectorAll(".field").forEach((f) => { f.classList.remove("invalid"); const e = f.querySelector(".error"); if (e) e.textContent = ""; });
}
const field = (name, label, input) => `<div class="field" data-field="${name}"><label>${label}</label>${input}<div class="error" id="err-${name}"></div></div>`;

function parseBudgets(text) {
  const points = text.split("\n").map((l) => l.trim()).filter(Boolean).map((line) => {
    const out = {};
    for (const part of line.split(",").map((p) => p.trim()).filter(Boolean)) {
      const [k, v] = part.split("=");
      if (!k || v === undefined || v.trim() === "" || Number.isNaN(Number(v))) throw new ApiError(422, { message: `budgets: '${part}' is not METRIC=NUMBER (e.g. avg_bits=3.3)` });
      out[k.trim()] = Number(v);
    }
    return out;
  });
  if (!points.length) throw new ApiError(422, { message: "budgets: give at least one budget, e.g. avg_bits=3.3" });
  return points.length === 1 ? points[0] : points;
}
function parseChannels(text, name) {
  const parts = text.split(",").map((t) => t.trim()).filter(Boolean);
  if (!parts.length) return null;
  if (![1, 3].includes(parts.length) || parts.some((t) => Number.isNaN(Number(t))))
    throw new ApiError(422, { message: `${name}: give 1 or 3 comma-separated numbers (one per channel, [0, 1] pixel units), e.g. 0.485,0.456,0.406` });
  return parts.map(Number);
}
function parseInts(text, name, allowPc = false) {
  return text.split(",").map((t) => t.trim()).filter(Boolean).map((t) => {
    if (allowPc && /^(pc|per-channel|none)$/i.test(t)) return null;
    if (!/^\d+$/.test(t)) throw new ApiError(422, { message: `${name}: '${t}' is not an integer` });
    return Number(t);
  });
}

async function submitView(view) {
  await loadModels();
  const models = Object.values(state.models);
  view.innerHTML = `
    <h1>Submit</h1>
    <div class="card"><h2>1 · Register a model</h2>
      <form id="model-form" class="row">
        ${field("builtin", "builtin model", `<select name="builtin"><option>builtin:digits-cnn</option><option>builtin:minilm-l6</option><option>builtin:smollm2-135m</option></select>`)}
        <div class="field"><label>&nbsp;</label><button type="submit" id="register">Register</button></div>
        ${field("upload", "…or upload a torch.export program (.pt2) or a TorchScript file", `<input type="file" name="file" accept=".pt2,.pt,.pth,.zip">`)}
        <div class="field"><label>&nbsp;</label><button type="button" class="secondary" id="upload">Upload</button></div>
        <div class="field" data-field="form"><div class="error"></div><div class="ok" id="model-ok"></div></div>
      </form></div>
    <div class="card"><h2>2 · Your data (optional)</h2>
      <form id="data-form" class="row">
        ${field("datafile", "upload images (.zip/.tar.gz of a folder; class/ subfolders = labels), tensors (.safetensors/.npz) or text (.txt/.jsonl)", `<input type="file" name="datafile" accept=".zip,.tar,.tgz,.gz,.safetensors,.npz,.txt,.jsonl">`)}
        <div class="field"><label>&nbsp;</label><button type="submit" class="secondary" id="upload-data">Upload data</button></div>
        <div class="field" data-field="form"><div class="error"></div><div class="ok" id="data-ok"></div></div>
      </form></div>
    <div class="card"><h2>3 · Submit a job</h2>
      <form id="job-form">
        <div class="row">
          ${field("model", "model", `<select name="model" id="job-model">${models.map((m) => `<option value="${esc(m.id)}">${esc(m.ref)} (${short(m.id)}, ${m.n_layers} layers)</option>`).join("") || "<option value=''>register a model first</option>"}</select>`)}
          ${field("bits", "bits (comma-separated, 2–8, 16 = float)", `<input name="bits" value="2,3,4,8">`)}
          ${field("groups", "group sizes (or pc)", `<input name="groups" value="32,64,128">`)}
          ${field("symmetric", "symmetric", `<input type="checkbox" name="symmetric">`)}
        </div>
        ${field("budgets", "budgets — one policy per line; constraints on a line must all hold (avg_bits, size_bytes, bops)", `<textarea name="budgets">avg_bits=3.3</textarea>`)}
        <div class="row">
          ${field("proxy", "proxy", `<select name="proxy"><option value="">recipe (fisher + loop for causal LMs, measured + moves otherwise)</option><option>measured</option><option>hessian_trace</option><option>fisher</option><option>orthogonality</option><option>output_error</option></select>`)}
          ${field("solver", "solver", `<select name="solver"><option value="">recipe (ilp)</option><option>ilp</option><option>lp</option><option>convex</option><option>pareto</option></select>`)}
          ${field("quantizer", "quantizer", `<select name="quantizer"><option value="rtn">rtn (round to nearest)</option><option value="gptq">gptq (error-compensating)</option></select>`)}
          ${field("seed", "seed", `<input name="seed" type="number" value="0" min="0">`)}
        </div>
        <div class="row">
          ${field("calib", "calibration data", `<input name="calib" list="data-sources" placeholder="model default">`)}
          ${field("ncalib", "calibration samples", `<input name="ncalib" type="number" min="1" placeholder="default">`)}
          ${field("eval", "evaluation data", `<input name="eval" list="data-sources" placeholder="held-out calibration samples">`)}
          <datalist id="data-sources"><option value="wikitext2-valid"><option value="wikitext2-test"><option value="tinyshakespeare"><option value="pydoc"><option value="digits"></datalist>
        </div>
        <div class="row">
          ${field("imgsize", "image size (px)", `<input name="imgsize" type="number" min="8" max="4096" placeholder="model's">`)}
          ${field("imgmean", "image mean (0–1 units)", `<input name="imgmean" placeholder="e.g. 0.485,0.456,0.406">`)}
          ${field("imgstd", "image std (0–1 units)", `<input name="imgstd" placeholder="e.g. 0.229,0.224,0.225">`)}
          ${field("foldbn", "fold BatchNorm", `<input type="checkbox" name="foldbn">`)}
        </div>
        <button type="submit" id="submit-job">Submit job</button>
        <div class="field" data-field="form"><div class="error"></div></div>
      </form></div>`;

  const mform = $("#model-form");
  const registered = async (promise) => {
    clearErrors(mform);
    try {
      const { body } = await promise;
      state.models[body.id] = body;
      $("#model-ok").textContent = `registered ${body.ref}: ${body.n_layers} layers, id ${short(body.id)}`;
      const sel = $("#job-model");
      if (![...sel.options].some((o) => o.value === body.id)) sel.insertAdjacentHTML("afterbegin", `<option value="${esc(body.id)}">${esc(body.ref)} (${short(body.id)}, ${body.n_layers} layers)</option>`);
      sel.value = body.id;
      [...sel.options].filter((o) => !o.value).forEach((o) => o.remove());
    } catch (e) { showError(mform, mform.file.files.length ? "upload" : "builtin", e.message); }
  };
  mform.onsubmit = (ev) => { ev.preventDefault(); $("#model-ok").textContent = "loading the model …"; registered(api("/v1/models", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ ref: mform.builtin.value }) })); };
  $("#upload").onclick = () => {
    if (!mform.file.files.length) { showError(mform, "upload", "choose a file first"); return; }
    const fd = new FormData(); fd.append("file", mform.file.files[0]);
    $("#model-ok").textContent = "uploading …";
    registered(api("/v1/models", { method: "POST", body: fd }));
  };

  const dform = $("#data-form");
  dform.onsubmit = async (ev) => {
    ev.preventDefault();
    clearErrors(dform);
    if (!dform.datafile.files.length) { showError(dform, "datafile", "choose a file first"); return; }
    const fd = new FormData(); fd.append("file", dform.datafile.files[0]);
    $("#data-ok").textContent = "uploading and checking …";
    try {
      const { body } = await api("/v1/data", { method: "POST", body: fd });
      const classes = body.classes ? `, ${body.classes.length} classes (${body.classes.slice(0, 6).join(", ")}${body.classes.length > 6 ? ", …" : ""})` : "";
      $("#data-ok").textContent = `uploaded ${body.name || "data"}: ${body.kind}, ${body.samples} samples${classes} → calibration source ${body.source.slice(0, 15)}…`;
      $("#data-ok").dataset.source = body.source;
      $("#job-form").calib.value = body.source;
    } catch (e) {
      $("#data-ok").textContent = "";
      if (!(e instanceof ApiError)) throw e;
      showError(dform, "datafile", e.body?.message || e.message);
    }
  };

  const jform = $("#job-form");
  jform.onsubmit = async (ev) => {
    ev.preventDefault();
    clearErrors(jform);
    const btn = $("#submit-job");
    try {
      if (!jform.model.value) throw new ApiError(422, { message: "model_id: register a model first" });
      const groups = parseInts(jform.groups.value, "groups", true);
      const body = {
        model_id: jform.model.value, budgets: parseBudgets(jform.budgets.value),
        formats: { bits: parseInts(jform.bits.value, "bits"), group_size: groups.length === 1 ? groups[0] : groups, symmetric: jform.symmetric.checked },
        seed: Number(jform.seed.value || 0),
      };
      if (jform.proxy.value) body.proxy = jform.proxy.value;
      if (jform.solver.value) body.solver = jform.solver.value;
      if (jform.quantizer.value !== "rtn") body.quantizer = jform.quantizer.value;
      const calib = jform.calib.value.trim(), evalSrc = jform.eval.value.trim();
      if (calib || jform.ncalib.value) {
        body.calibration = {};
        if (calib) body.calibration.source = calib;
        if (jform.ncalib.value) body.calibration.n_samples = Number(jform.ncalib.value);
      }
      if (evalSrc) body.evaluation = { source: evalSrc };
      if (jform.imgsize.value) body.image_size = Number(jform.imgsize.value);
      const mean = parseChannels(jform.imgmean.value, "image_mean"), std = parseChannels(jform.imgstd.value, "image_std");
      if (mean) body.image_mean = mean;
      if (std) body.image_std = std;
      if (jform.foldbn.checked) body.fold_batchnorm = true;
      btn.disabled = true;
      const key = (crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2));
      const { body: job } = await api("/v1/jobs", { method: "POST", headers: { "Content-Type": "application/json", "Idempotency-Key": key }, body: JSON.stringify(body) });
      location.hash = `#/jobs/${job.id}`;
    } catch (e) {
      if (!(e instanceof ApiError)) throw e;
      showError(jform, fieldFor(e), e.body?.message || e.message);
    } finally { btn.disabled = false; }
  };
}

// ---------------------------------------------------------------- start
$("#token").value = token();
$("#token-form").onsubmit = (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("bitplan.token", $("#token").value.trim());
  banner("");
  route();
};
window.addEventListener("hashchange", route);
route();
