/* bitplan dashboard: a small single-page app over the public /v1 API only (no private
   endpoints), so it also proves the API is enough. ES modules, no build step. Hash routes:
     #/jobs  #/jobs/<id>  #/policies/<id>  #/submit
   Polling keeps tables and progress bars live; a banner shows when the server is unreachable
   and requests are retried with back-off. The API token (if the server needs one) lives in
   sessionStorage only. This module is the router. */
import { banner, saveToken, token } from "./api.js";
import { loadMeta } from "./meta.js";
import { jobView } from "./job.js";
import { jobsView } from "./jobs.js";
import { policyView } from "./policy.js";
import { submitView } from "./submit.js";
import { $, esc } from "./util.js";
import { clearView, state } from "./view.js";

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

$("#token").value = token();
$("#token-form").onsubmit = (ev) => {
  ev.preventDefault();
  saveToken($("#token").value.trim());
  banner("");
  route();
};
window.addEventListener("hashchange", route);
route();
