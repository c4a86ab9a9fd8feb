/* #/jobs/<id>: one job — progress bar, phase timeline, cancel, request summary, its policies and
   the progress log — polled until the job reaches a terminal status. */
import { api, get } from "./api.js";
import { META, PHASES, S, TERMINAL } from "./meta.js";
import { loadModels, models } from "./models.js";
import { $, ago, badge, budgetText, esc, fmtNum, progressBar, short } from "./util.js";
import { clearView, poll } from "./view.js";

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

function request(job) {
  const m = models[job.model_id], r = job.request;
  return `<div class="card"><dl class="kv">
    <dt>model</dt><dd>${esc(m ? m.ref : job.model_id)} <span class="mono muted">${short(job.model_id)}</span></dd>
    <dt>budget</dt><dd class="mono">${esc(budgetText(r.budgets))}</dd>
    <dt>formats</dt><dd class="mono">${r.formats.names ? esc(r.formats.names.join(",")) : r.formats.bits ? `bits ${esc(r.formats.bits.join(","))} × group ${esc(JSON.stringify(r.formats.group_size))}${r.formats.symmetric ? " symmetric" : ""}` : r.target ? `the ${esc(r.target)} menu` : "the default menu"}${r.target ? ` · target ${esc(r.target)}` : ""}</dd>
    <dt>proxy / solver</dt><dd>${esc(r.proxy || "recipe (by model kind)")} / ${esc(r.solver || META.recipe.solver)}${r.refine === false ? "" : " + refine"}</dd>
    <dt>sensitivity</dt><dd>${job.sensitivity_id ? `<span class="mono">${short(job.sensitivity_id)}</span> ${job.sensitivity_cached ? "(reused from cache)" : "(computed)"}` : "—"}</dd>
    <dt>timings</dt><dd class="mono">${Object.entries(job.timings).map(([k, v]) => `${k} ${v.toFixed(2)}s`).join(" · ") || "—"}</dd>
    <dt>created</dt><dd>${esc(job.created_at)} (${ago(job.created_at)} ago), attempts ${job.attempts}</dd>
  </dl></div>`;
}

function policies(job, pols) {
  const rows = pols.map((p, i) => `<tr><td class="mono"><a href="#/policies/${esc(job.policy_ids[i])}">${short(job.policy_ids[i])}</a></td>
    <td class="mono">${esc(budgetText(p.budget))}</td><td>${fmtNum(p.cost.avg_bits, 5)}</td><td>${esc(p.measured?.metric)}</td>
    <td><b>${fmtNum(p.measured?.value)}</b></td><td>${fmtNum(p.measured?.float)}</td>
    <td class="mono">${Object.entries(p.measured?.uniform || {}).map(([b, v]) => `${/^\d+$/.test(b) ? b + "b" : b} ${fmtNum(v, 3)}`).join(" · ")}</td></tr>`).join("");
  return `<h2>Policies</h2>
    <table id="policies"><thead><tr><th>policy</th><th>budget</th><th>avg bits</th><th>metric</th><th>value</th><th>float</th><th>uniform</th></tr></thead><tbody>
    ${rows || `<tr><td colspan="7" class="muted">${job.status === S.SUCCEEDED ? "none" : "available when the job succeeds"}</td></tr>`}
    </tbody></table>`;
}

const log = (events) => `<h2>Progress log</h2>
  <table id="events"><thead><tr><th>#</th><th>time</th><th>status</th><th>phase</th><th>progress</th><th>message</th></tr></thead><tbody>
  ${events.slice(-200).map((e) => `<tr><td>${e.seq}</td><td class="mono">${esc(e.at.slice(11, 19))}</td><td>${esc(e.status)}</td><td>${esc(e.phase || "")}</td><td>${Math.round(e.progress * 100)}%</td><td>${esc(e.message)}</td></tr>`).join("")}
  </tbody></table>`;

export async function jobView(view, id) {
  await loadModels();
  const path = `/v1/jobs/${encodeURIComponent(id)}`;
  const render = async () => {
    const job = await get(path);
    const events = await get(`${path}/events`);
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
      ${request(job)}${policies(job, pols)}${log(events)}`;
    const btn = $("#cancel");
    if (btn) btn.onclick = async () => {
      btn.disabled = true;
      try { await api(`${path}/cancel`, { method: "POST" }); await render(); }
      catch (e) { btn.insertAdjacentHTML("afterend", `<div class="error">${esc(e.message)}</div>`); }
    };
    return job;
  };
  const job = await render();
  if (!TERMINAL.includes(job.status)) poll(async () => { const j = await render(); if (TERMINAL.includes(j.status)) clearView(); }, 1000);
}
