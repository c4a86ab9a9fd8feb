/* Small pure helpers shared by the views: DOM lookup, escaping, number/time formatting, and the
   status badge and progress bar. */
import { S } from "./meta.js";

export const $ = (sel, root = document) => root.querySelector(sel);
export const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
export const short = (id) => (id || "").slice(0, 8);
export const fmtNum = (x, d = 4) => (x === null || x === undefined || Number.isNaN(x) ? "—" : Number(x).toPrecision(d));

export function ago(iso) {
  if (!iso) return "—";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return s < 60 ? `${s.toFixed(0)}s` : s < 3600 ? `${(s / 60).toFixed(0)}m` : s < 86400 ? `${(s / 3600).toFixed(1)}h` : `${(s / 86400).toFixed(1)}d`;
}

export function duration(job) {
  if (!job.started_at) return "—";
  const end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
  const s = (end - Date.parse(job.started_at)) / 1000;
  return s < 120 ? `${s.toFixed(1)}s` : `${(s / 60).toFixed(1)}m`;
}

export function budgetText(b) {
  const n = (v) => +Number(v).toPrecision(6);
  const one = (x) => Object.entries(x).map(([k, v]) => `${k}≤${n(v)}`).join(", ");
  return Array.isArray(b) ? (b.length === 1 ? one(b[0]) : `${b.length} points: ${b.map((x) => n(Object.values(x)[0])).join(", ")}`) : one(b);
}

export function progressBar(job, big = false) {
  const pct = Math.round((job.status === S.SUCCEEDED ? 1 : job.progress) * 100);
  const label = job.status === S.RUNNING ? `${job.phase || "starting"} ${pct}%` : job.status === S.QUEUED ? S.QUEUED : `${job.status} ${pct}%`;
  return `<div class="bar ${job.status} ${big ? "big" : ""}" role="progressbar" aria-valuenow="${pct}" aria-valuemin="0" aria-valuemax="100" data-phase="${esc(job.phase || "")}"><span style="width:${pct}%"></span><em>${esc(label)}</em></div>`;
}

export const badge = (s) => `<span class="badge ${esc(s)}">${esc(s)}</span>`;
