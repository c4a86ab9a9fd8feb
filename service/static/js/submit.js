/* #/submit: register a model (builtin or upload), upload calibration data, and submit a job.
   Every menu and default (builtin models, format menu, proxies, solvers, quantizers, data
   sources, the recipe) is the server's, from GET /v1/meta. */
import { api, ApiError } from "./api.js";
import { META } from "./meta.js";
import { loadModels, models } from "./models.js";
import { clearErrors, field, fieldFor, parseBudgets, parseChannels, parseInts, showError } from "./forms.js";
import { $, esc, short } from "./util.js";

const opts = (values) => values.map((v) => `<option>${esc(v)}</option>`).join("");
const groupsText = (g) => (Array.isArray(g) ? g : [g]).map((x) => (x === null ? "pc" : x)).join(",");
const modelOption = (m) => `<option value="${esc(m.id)}">${esc(m.ref)} (${short(m.id)}, ${m.n_layers} layers)</option>`;

function recipeText(r) {
  const kinds = Object.entries(r.by_kind).map(([k, s]) => `${s.proxy} + ${s.refine_method} for ${k} models`);
  return [...kinds, `${r.default.proxy} + ${r.default.refine_method}${kinds.length ? " otherwise" : ""}`].join(", ");
}

const modelCard = () => `<div class="card"><h2>1 · Register a model</h2>
  <form id="model-form" class="row">
    ${field("builtin", "builtin model", `<select name="builtin">${opts(META.builtin_models)}</select>`)}
    <div class="field"><label>&nbsp;</label><button type="submit" id="register">Register</button></div>
    ${field("upload", "…or upload a torch.export program (.pt2) or a TorchScript file", `<input type="file" name="file" accept=".pt2,.pt,.pth,.zip">`)}
    <div class="field"><label>&nbsp;</label><button type="button" class="secondary" id="upload">Upload</button></div>
    <div class="field" data-field="form"><div class="error"></div><div class="ok" id="model-ok"></div></div>
  </form></div>`;

const dataCard = () => `<div class="card"><h2>2 · Your data (optional)</h2>
  <form id="data-form" class="row">
    ${field("datafile", "upload images (.zip/.tar.gz of a folder; class/ subfolders = labels), tensors (.safetensors/.npz) or text (.txt/.jsonl)", `<input type="file" name="datafile" accept=".zip,.tar,.tgz,.gz,.safetensors,.npz,.txt,.jsonl">`)}
    <div class="field"><label>&nbsp;</label><button type="submit" class="secondary" id="upload-data">Upload data</button></div>
    <div class="field" data-field="form"><div class="error"></div><div class="ok" id="data-ok"></div></div>
  </form></div>`;

function jobCard() {
  const f = META.formats, d = f.default;
  return `<div class="card"><h2>3 · Submit a job</h2>
  <form id="job-form">
    <div class="row">
      ${field("model", "model", `<select name="model" id="job-model">${Object.values(models).map(modelOption).join("") || "<option value=''>register a model first</option>"}</select>`)}
      ${field("bits", `bits (comma-separated, ${f.min_bits}–${f.max_bits}, ${f.float_bits} = float)`, `<input name="bits" value="${esc(d.bits.join(","))}">`)}
      ${field("groups", "group sizes (or pc)", `<input name="groups" value="${esc(groupsText(d.group_size))}">`)}
      ${field("symmetric", "symmetric", `<input type="checkbox" name="symmetric" ${d.symmetric ? "checked" : ""}>`)}
      ${field("target", "target runtime (its own format menu)", `<select name="target"><option value="">none: the bits × groups menu</option>${Object.entries(f.targets || {}).map(([n, t]) => `<option value="${esc(n)}" title="${esc(t.menu.join(", "))}">${esc(n)}: ${esc(t.menu.join(", "))}</option>`).join("")}</select>`)}
    </div>
    ${field("budgets", `budgets — one policy per line; constraints on a line must all hold (${META.budget_metrics.join(", ")})`, `<textarea name="budgets">avg_bits=3.3</textarea>`)}
    <div class="row">
      ${field("proxy", "proxy", `<select name="proxy"><option value="">recipe (${esc(recipeText(META.recipe))})</option>${opts(META.proxies)}</select>`)}
      ${field("solver", "solver", `<select name="solver"><option value="">recipe (${esc(META.recipe.solver)})</option>${opts(META.solvers)}</select>`)}
      ${field("quantizer", "quantizer", `<select name="quantizer">${opts(META.quantizers)}</select>`)}
      ${field("seed", "seed", `<input name="seed" type="number" value="0" min="0">`)}
    </div>
    <div class="row">
      ${field("calib", "calibration data", `<input name="calib" list="data-sources" placeholder="model default">`)}
      ${field("ncalib", "calibration samples", `<input name="ncalib" type="number" min="1" placeholder="default">`)}
      ${field("eval", "evaluation data", `<input name="eval" list="data-sources" placeholder="held-out calibration samples">`)}
      <datalist id="data-sources">${META.data_sources.map((s) => `<option value="${esc(s)}">`).join("")}</datalist>
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
}

function wireModelForm() {
  const mform = $("#model-form");
  const registered = async (promise) => {
    clearErrors(mform);
    try {
      const { body } = await promise;
      models[body.id] = body;
      $("#model-ok").textContent = `registered ${body.ref}: ${body.n_layers} layers, id ${short(body.id)}`;
      const sel = $("#job-model");
      if (![...sel.options].some((o) => o.value === body.id)) sel.insertAdjacentHTML("afterbegin", modelOption(body));
      sel.value = body.id;
      [...sel.options].filter((o) => !o.value).forEach((o) => o.remove());
    } catch (e) { showError(mform, mform.file.files.length ? "upload" : "builtin", e.message); }
  };
  mform.onsubmit = (ev) => {
    ev.preventDefault();
    $("#model-ok").textContent = "loading the model …";
    registered(api("/v1/models", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ ref: mform.builtin.value }) }));
  };
  $("#upload").onclick = () => {
    if (!mform.file.files.length) { showError(mform, "upload", "choose a file first"); return; }
    const fd = new FormData(); fd.append("file", mform.file.files[0]);
    $("#model-ok").textContent = "uploading …";
    registered(api("/v1/models", { method: "POST", body: fd }));
  };
}

function wireDataForm() {
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
}

/* the JSON body of POST /v1/jobs from the form; only what the user set beyond the defaults */
function jobRequest(jform) {
  if (!jform.model.value) throw new ApiError(422, { message: "model_id: register a model first" });
  const groups = parseInts(jform.groups.value, "groups", true);
  const body = {
    model_id: jform.model.value, budgets: parseBudgets(jform.budgets.value),
    formats: { bits: parseInts(jform.bits.value, "bits"), group_size: groups.length === 1 ? groups[0] : groups, symmetric: jform.symmetric.checked },
    seed: Number(jform.seed.value || 0),
  };
  if (jform.target.value) {  // the target's menu replaces the bits × groups one
    body.target = jform.target.value;
    body.formats = {};
  }
  if (jform.proxy.value) body.proxy = jform.proxy.value;
  if (jform.solver.value) body.solver = jform.solver.value;
  if (jform.quantizer.value !== META.quantizers[0]) body.quantizer = jform.quantizer.value;
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
  return body;
}

function wireJobForm() {
  const jform = $("#job-form");
  jform.onsubmit = async (ev) => {
    ev.preventDefault();
    clearErrors(jform);
    const btn = $("#submit-job");
    try {
      const body = jobRequest(jform);
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

export async function submitView(view) {
  await loadModels();
  view.innerHTML = `<h1>Submit</h1>${modelCard()}${dataCard()}${jobCard()}`;
  wireModelForm();
  wireDataForm();
  wireJobForm();
}
