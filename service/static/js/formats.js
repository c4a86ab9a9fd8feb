/* Formats as the server names and prices them: one POST /v1/cost per page turns every format the
   page shows into its label (w4g64a, fp16, …) and the cost of a uniform policy in it. */
import { post } from "./api.js";
import { META } from "./meta.js";

export const floatFormat = () => ({ bits: META.formats.float_bits, group_size: null, symmetric: false });
export const isFloat = (f) => f.bits === META.formats.float_bits;

// identity of a requested format (not a label: labels come from the server)
const key = (f) => (f.runtime ? f.runtime : JSON.stringify([f.bits, f.group_size ?? null, !!f.symmetric]));

/* Price ``formats`` on the model; returns a lookup format → {label, cost, bits, group_size, symmetric}. */
export async function priceFormats(modelId, formats) {
  const wanted = [...new Map(formats.map((f) => [key(f), f.runtime ? { bits: f.bits ?? 0, group_size: null, runtime: f.runtime }
    : { bits: f.bits, group_size: f.group_size ?? null, symmetric: !!f.symmetric }])).values()];
  const { body } = await post("/v1/cost", { model_id: modelId, formats: wanted });
  const byKey = new Map(wanted.map((f, i) => [key(f), body.formats[i]]));
  return (f) => byKey.get(key(f));
}
