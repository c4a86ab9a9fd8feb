/* The server's own definitions (GET /v1/meta), read once: job statuses and phases, the format
   menu, the registered exporters, proxies, solvers and quantizers, builtin models and data, the
   default recipe. Nothing here restates them. */
import { get } from "./api.js";

export const S = {};                // status by name: S.SUCCEEDED === "succeeded"
export const TERMINAL = [], PHASES = [];
export const META = {};             // the whole answer (formats, exporters, proxies, …)

let loaded = null;                  // one shared promise: two routes starting at once must not both fill the lists
export function loadMeta() {
  loaded ??= get("/v1/meta").then((m) => {
    Object.assign(S, m.job_statuses);
    TERMINAL.push(...m.terminal);
    PHASES.push(...m.phases);
    Object.assign(META, m);
  }).catch((e) => { loaded = null; throw e; });
  return loaded;
}
