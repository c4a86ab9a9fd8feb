/* The registered models (GET /v1/models), by id, for labels and the submit form's list. */
import { get } from "./api.js";

export const models = {};

export async function loadModels() {
  try {
    for (const m of await get("/v1/models")) models[m.id] = m;
  } catch (e) { /* shown by the banner */ }
  return models;
}
