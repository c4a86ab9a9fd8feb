/* The current view's lifecycle: its poll timer and charts, cleared when the route changes, and
   the route token a poll checks so it never re-arms for a page the user has left. */
import { ApiError } from "./api.js";

export const state = { timer: null, charts: [], route: "" };

export function clearView() {
  if (state.timer) { clearTimeout(state.timer); state.timer = null; }
  state.charts.forEach((c) => c.destroy());
  state.charts = [];
}

export function poll(fn, ms) {
  const tick = async () => {
    const route = state.route;
    try { await fn(); } catch (e) { if (!(e instanceof ApiError)) console.error(e); }
    if (state.route === route) state.timer = setTimeout(tick, ms);
  };
  state.timer = setTimeout(tick, ms);
}
