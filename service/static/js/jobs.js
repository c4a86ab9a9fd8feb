/* #/jobs: the jobs table with status/model filters (kept in the hash), cursor pagination and
   polling. */
import { get } from "./api.js";
import { META, S } from "./meta.js";
import { loadModels, models } from "./models.js";
import { $, ago, badge, budgetText, duration, esc, progressBar, short } from "./util.js";
import { poll } from "./view.js";

const PAGE = 50;

const options = (values, selected) => values.map((v) => `<option ${v === selected ? "selected" : ""}>${esc(v)}</option>`).join("");

function row(j) {
  const m = models[j.model_id];
  const ps = `${esc(j.request.proxy || "recipe")} / ${esc(j.request.solver || META.recipe.solver)}`;
  return `<tr data-job="${esc(j.id)}"><td class="mono"><a href="#/jobs/${esc(j.id)}">${short(j.id)}</a></td><td>${badge(j.status)}</td>
    <td>${esc(m ? m.ref : short(j.model_id))}</td><td class="mono">${esc(budgetText(j.request.budgets))}</td><td>${ps}</td>
    <td>${progressBar(j)}</td><td>${ago(j.created_at)}</td><td>${duration(j)}</td></tr>`;
}

function page(status, model) {
  return `
    <h1>Jobs</h1>
    <div class="card row">
      <div class="field"><label for="f-status">Status</label>
        <select id="f-status"><option value="">any</option>${options(Object.values(S), status)}</select></div>
      <div class="field"><label for="f-model">Model</label>
        <select id="f-model"><option value="">any</option>${Object.values(models).map((m) => `<option value="${esc(m.id)}" ${m.id === model ? "selected" : ""}>${esc(m.ref)} (${short(m.id)})</option>`).join("")}</select></div>
      <div class="muted" id="jobs-count"></div>
    </div>
    <table id="jobs"><thead><tr><th>job</th><th>status</th><th>model</th><th>budget</th><th>proxy / solver</th><th>progress</th><th>age</th><th>duration</th></tr></thead><tbody></tbody></table>
    <div class="pager"><button class="secondary" id="newer">← newer</button><button class="secondary" id="older">older →</button><span class="muted" id="pageno"></span></div>`;
}

function setFilter() {
  const p = new URLSearchParams();
  if ($("#f-status").value) p.set("status", $("#f-status").value);
  if ($("#f-model").value) p.set("model", $("#f-model").value);
  location.hash = `#/jobs${p.toString() ? "?" + p : ""}`;
}

export async function jobsView(view) {
  const q = new URLSearchParams((location.hash.split("?")[1]) || "");
  const status = q.get("status") || "", model = q.get("model") || "";
  const cursors = [null];  // cursor of each page we have seen (for "newer")
  let n = 0, next = null;
  await loadModels();
  view.innerHTML = page(status, model);
  $("#f-status").onchange = setFilter;
  $("#f-model").onchange = setFilter;
  const render = async () => {
    const p = new URLSearchParams({ limit: PAGE });
    if (status) p.set("status", status);
    if (model) p.set("model_id", model);
    if (cursors[n]) p.set("cursor", cursors[n]);
    const data = await get(`/v1/jobs?${p}`);
    next = data.next_cursor;
    const body = $("#jobs tbody");
    if (!body) return;
    body.innerHTML = data.items.map(row).join("") || `<tr><td colspan="8" class="muted">no jobs${status || model ? " match these filters" : " yet — submit one"}</td></tr>`;
    $("#newer").disabled = n === 0;
    $("#older").disabled = !next;
    $("#pageno").textContent = `page ${n + 1}`;
    $("#jobs-count").textContent = `${data.items.length} shown, ${PAGE} per page`;
  };
  $("#newer").onclick = async () => { if (n > 0) { n -= 1; await render(); } };
  $("#older").onclick = async () => { if (next) { cursors[n + 1] = next; n += 1; await render(); } };
  await render();
  poll(render, 2000);
}
