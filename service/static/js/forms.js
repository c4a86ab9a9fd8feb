/* Form plumbing for the submit page: a labelled field with its error slot, parsers that refuse
   bad text before it is sent (as ApiError 422, like the server's), and placing an API error next
   to the field it names. */
import { ApiError } from "./api.js";

export const field = (name, label, input) => `<div class="field" data-field="${name}"><label>${label}</label>${input}<div class="error" id="err-${name}"></div></div>`;

// the request field an error names → the form field it is shown next to
const FIELDS = { budgets: "budgets", budget: "budgets", formats: "bits", bits: "bits", group_size: "groups", proxy: "proxy",
  solver: "solver", calibration: "calib", evaluation: "eval", model_id: "model", seed: "seed", unknown: "proxy",
  quantizer: "quantizer", quantizer_params: "quantizer", image_size: "imgsize", resize: "imgsize",
  image_mean: "imgmean", image_std: "imgstd" };
const WORDS = [[/budget|feasible|cheapest/, "budgets"], [/bit-width|bits/, "bits"], [/group/, "groups"], [/proxy/, "proxy"],
  [/solver/, "solver"], [/quantizer|gptq/i, "quantizer"]];

export function fieldFor(err) {
  const msg = (err.body && err.body.message) || err.message || "";
  const loc = (err.body && Array.isArray(err.body.detail) && err.body.detail[0] && err.body.detail[0].loc) || [];
  const key = loc.filter((x) => x !== "body")[0] || msg.split(/[:.\s]/)[0];
  if (FIELDS[key]) return FIELDS[key];
  return (WORDS.find(([re]) => re.test(msg)) || [null, "form"])[1];
}

export function showError(form, name, message) {
  const box = form.querySelector(`[data-field="${name}"]`) || form.querySelector('[data-field="form"]');
  box.classList.add("invalid");
  box.querySelector(".error").textContent = message;
}

export function clearErrors(form) {
  form.querySelectorAll(".field").forEach((f) => { f.classList.remove("invalid"); const e = f.querySelector(".error"); if (e) e.textContent = ""; });
}

const refuse = (message) => new ApiError(422, { message });

export function parseBudgets(text) {
  const points = text.split("\n").map((l) => l.trim()).filter(Boolean).map((line) => {
    const out = {};
    for (const part of line.split(",").map((p) => p.trim()).filter(Boolean)) {
      const [k, v] = part.split("=");
      if (!k || v === undefined || v.trim() === "" || Number.isNaN(Number(v))) throw refuse(`budgets: '${part}' is not METRIC=NUMBER (e.g. avg_bits=3.3)`);
      out[k.trim()] = Number(v);
    }
    return out;
  });
  if (!points.length) throw refuse("budgets: give at least one budget, e.g. avg_bits=3.3");
  return points.length === 1 ? points[0] : points;
}

export function parseChannels(text, name) {
  const parts = text.split(",").map((t) => t.trim()).filter(Boolean);
  if (!parts.length) return null;
  if (![1, 3].includes(parts.length) || parts.some((t) => Number.isNaN(Number(t))))
    throw refuse(`${name}: give 1 or 3 comma-separated numbers (one per channel, [0, 1] pixel units), e.g. 0.485,0.456,0.406`);
  return parts.map(Number);
}

export function parseInts(text, name, allowPc = false) {
  return text.split(",").map((t) => t.trim()).filter(Boolean).map((t) => {
    if (allowPc && /^(pc|per-channel|none)$/i.test(t)) return null;
    if (!/^\d+$/.test(t)) throw refuse(`${name}: '${t}' is not an integer`);
    return Number(t);
  });
}
