/* Access to the public /v1 API: fetch + JSON with the API token (kept in sessionStorage only).
   Network failures and 502–504 show the banner and retry with back-off (the call resolves once
   the server answers again); other 4xx/5xx become ApiError. */

export const token = () => sessionStorage.getItem("bitplan.token") || "";
export const saveToken = (t) => sessionStorage.setItem("bitplan.token", t);

export class ApiError extends Error {
  constructor(status, body) { super(body.message || `HTTP ${status}`); this.status = status; this.body = body; }
}

export function banner(text, kind = "") {
  const b = document.querySelector("#banner");
  if (!text) { b.hidden = true; b.textContent = ""; return; }
  b.hidden = false; b.className = `banner ${kind}`; b.textContent = text;
}

const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

function withToken(headers = {}) {
  const h = Object.assign({}, headers);
  if (token()) h.Authorization = `Bearer ${token()}`;
  return h;
}

export async function api(path, opts = {}, retry = true) {
  let wait = 1000;
  for (;;) {
    let r;
    try {
      r = await fetch(path, Object.assign({}, opts, { headers: withToken(opts.headers) }));
    } catch (e) {
      if (!retry) throw e;
      banner(`Server unreachable — retrying in ${Math.round(wait / 1000)} s …`);
      await sleep(wait);
      wait = Math.min(wait * 2, 10000);
      continue;
    }
    if (r.status >= 502 && r.status <= 504 && retry) {
      banner(`Server not available (HTTP ${r.status}) — retrying in ${Math.round(wait / 1000)} s …`);
      await sleep(wait);
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

export const get = async (path) => (await api(path)).body;

export const post = (path, body, headers = {}) =>
  api(path, { method: "POST", headers: Object.assign({ "Content-Type": "application/json" }, headers), body: JSON.stringify(body) });

/* a file download (policy exports): the raw response, token included, no retry */
export const fetchFile = (path) => fetch(path, { headers: withToken() });
