/* The policy page's charts: bits per layer (bar), loss vs average bits (scatter) with Chart.js
   (vendored, the global ``Chart``), and the sensitivity heatmap drawn on a canvas. */
import { META } from "./meta.js";
import { isFloat } from "./formats.js";
import { esc, fmtNum } from "./util.js";

const PALETTE = { 2: "#d64545", 3: "#f08c2e", 4: "#e3c02b", 5: "#8cc04b", 6: "#3fae6a", 7: "#2b9c9c", 8: "#2f6fed" };
const FLOAT_COLOR = "#9aa3b2";

export function formatColor(f) {
  if (!f || isFloat(f)) return FLOAT_COLOR;
  const base = PALETTE[f.bits] || "#555";
  const g = f.group_size;
  if (g === null || g === META.formats.reference_group_size) return base;
  return base + (g < META.formats.reference_group_size ? "cc" : g > META.formats.reference_group_size ? "88" : "aa");
}

/* one bar per layer in model order; ``layerFormat(name)`` is its format, ``chosen[name]`` its label */
export function bitsChart(canvas, order, layerFormat, chosen, sparsity) {
  const bits = order.map((n) => layerFormat(n).bits);
  return new Chart(canvas, {
    type: "bar",
    data: { labels: order, datasets: [{ label: "bits", data: bits, backgroundColor: order.map((n) => formatColor(layerFormat(n))) }] },
    options: {
      animation: false, maintainAspectRatio: false,
      plugins: { legend: { display: false }, tooltip: { callbacks: { label: (c) => {
        const n = order[c.dataIndex], r = sparsity[n];
        return chosen[n] + (r ? `, ${Math.round(r * 100)}% pruned` : "");
      } } } },
      scales: { y: { title: { display: true, text: `bits (${META.formats.float_bits} = float)` }, min: 0, max: Math.max(9, ...bits) },
        x: { ticks: { autoSkip: order.length > 60, maxRotation: 90, minRotation: 60, font: { size: 9 } } } },
    },
  });
}

export function bitsLegend(order, layerFormat, chosen) {
  const used = [...new Set(order.map((n) => chosen[n]))].sort();
  return used.map((label) => {
    const names = order.filter((x) => chosen[x] === label);
    return `<span><i style="background:${formatColor(layerFormat(names[0]))}"></i>${esc(label)} × ${names.length}</span>`;
  }).join("");
}

/* measured loss of this job's policies, the uniform baselines and the float model against avg
   bits; ``uni`` is [{x (avg bits), y, b}] */
export function tradeoffChart(canvas, siblings, uni, m) {
  const pts = siblings.map((p) => ({ x: p.cost.avg_bits, y: p.measured?.value, pred: p.predicted?.loss_increase }));
  const positive = [...pts.map((p) => p.y), ...uni.map((u) => u.y)].every((y) => y > 0);
  const lossLike = m.metric !== "accuracy";
  const xs = [...pts.map((p) => p.x), ...uni.map((u) => u.x)];
  const floatLine = [{ x: Math.min(...xs) - 0.2, y: m.float }, { x: Math.max(...xs) + 0.2, y: m.float }];
  const datasets = [
    { label: "this job's policies (measured)", data: pts.map((p) => ({ x: p.x, y: p.y })), backgroundColor: "#2f6fed", borderColor: "#2f6fed", showLine: true, pointRadius: 6 },
    { label: "uniform (measured)", data: uni.map((u) => ({ x: u.x, y: u.y })), backgroundColor: "#d64545", borderColor: "#d64545", showLine: true, borderDash: [4, 4], pointRadius: 5, pointStyle: "rectRot" },
    { label: "predicted loss increase (right axis)", data: pts.map((p) => ({ x: p.x, y: p.pred })), yAxisID: "y2", backgroundColor: "#f08c2e", borderColor: "#f08c2e", showLine: true, pointStyle: "triangle", pointRadius: 6 },
  ];
  if (!(lossLike && positive && m.float <= 0)) datasets.push({ label: `float (${fmtNum(m.float)})`, data: floatLine, borderColor: "#1f9d55", backgroundColor: "#1f9d55", showLine: true, pointRadius: 0, borderDash: [2, 3] });
  return new Chart(canvas, {
    type: "scatter", data: { datasets },
    options: {
      animation: false, maintainAspectRatio: false,
      plugins: { subtitle: { display: lossLike && positive && m.float <= 0, text: `float model: ${m.metric} = ${fmtNum(m.float)} (not drawable on a log axis)` } },
      scales: {
        x: { title: { display: true, text: "average bits per weight (scales and zero points included)" } },
        y: { type: lossLike && positive ? "logarithmic" : "linear", title: { display: true, text: `measured ${m.metric}` } },
        y2: { position: "right", grid: { drawOnChartArea: false }, title: { display: true, text: "predicted loss increase" },
          ticks: { callback: (v) => Number(v).toPrecision(2) } },
      },
    },
  });
}

function viridis(t) {  // a perceptual ramp for the heatmap (t in 0..1)
  const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const x = Math.min(Math.max(t, 0), 1) * (stops.length - 1), i = Math.min(Math.floor(x), stops.length - 2), f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + (stops[i + 1][k] - v) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function scaleLegend(ctx, x, top, h, lo, hi) {
  for (let y = 0; y < h; y++) { ctx.fillStyle = viridis(1 - y / h); ctx.fillRect(x, top + y, 14, 1); }
  ctx.fillStyle = "#333";
  ctx.fillText(`1e${hi.toFixed(1)}`, x + 18, top + 9);
  ctx.fillText(`1e${lo.toFixed(1)}`, x + 18, top + h);
  ctx.fillStyle = "#f0f0f0"; ctx.fillRect(x, top + h + 10, 14, 10);
  ctx.fillStyle = "#333"; ctx.fillText("≤ 0", x + 18, top + h + 19);
}

/* log10 of every table cell; the chosen format of each layer (``chosen[name]`` is a label,
   ``labels[k]`` the label of the table's format k) outlined in pink */
export function drawHeatmap(canvas, table, chosen, labels) {
  const L = table.layers.length, K = table.formats.length;
  const ctx = canvas.getContext("2d");
  ctx.font = "11px ui-monospace, monospace";
  const names = table.layers.map((l) => (l.name.length > 48 ? "…" + l.name.slice(-47) : l.name));
  const left = Math.ceil(Math.max(...names.map((n) => ctx.measureText(n).width))) + 14;
  const cell = { w: 46, h: L > 60 ? 12 : 18 }, top = 64, legendW = 90;
  canvas.width = left + K * cell.w + legendW + 20;
  canvas.height = Math.max(top + L * cell.h + 10, 220);
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  const vals = table.values.flat().filter((v) => v > 0);
  const lo = Math.log10(Math.min(...vals)), hi = Math.log10(Math.max(...vals));
  ctx.font = "11px ui-monospace, monospace";
  scaleLegend(ctx, left + K * cell.w + 24, top, Math.min(160, L * cell.h), lo, hi);
  ctx.fillStyle = "#333";
  labels.forEach((label, k) => {
    ctx.save(); ctx.translate(left + k * cell.w + cell.w / 2, top - 6); ctx.rotate(-Math.PI / 4);
    ctx.fillText(label, 0, 0); ctx.restore();
  });
  let painted = 0;
  table.layers.forEach((l, i) => {
    ctx.fillStyle = "#333"; ctx.textAlign = "right";
    ctx.fillText(names[i], left - 6, top + i * cell.h + cell.h - 4);
    ctx.textAlign = "left";
    table.values[i].forEach((v, k) => {
      ctx.fillStyle = v > 0 ? viridis((Math.log10(v) - lo) / Math.max(hi - lo, 1e-9)) : "#f0f0f0";
      ctx.fillRect(left + k * cell.w, top + i * cell.h, cell.w - 1, cell.h - 1);
      painted += 1;
      if (chosen[l.name] === labels[k]) {
        ctx.strokeStyle = "#e0218a"; ctx.lineWidth = 2;
        ctx.strokeRect(left + k * cell.w + 1, top + i * cell.h + 1, cell.w - 3, cell.h - 3);
      }
    });
  });
  canvas.dataset.cells = String(painted);
  canvas.dataset.range = `${lo.toFixed(2)}..${hi.toFixed(2)}`;
}
