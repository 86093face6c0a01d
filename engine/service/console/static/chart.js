// The rate–quality chart: bitrate (measured when known) against VMAF, PSNR or SSIM, as SVG
// elements built in the page (no library, no inline style).

import { el, svg } from "./dom.js";

const METRICS = [
  { key: "Vmaf", label: "VMAF" },
  { key: "Psnr", label: "PSNR (dB)" },
  { key: "Ssim", label: "SSIM" },
];

export function rateQualityChart(streams) {
  const video = (streams || []).filter((s) => s.Type === "Video");
  const metric = METRICS.find((m) => video.some((s) => typeof s[m.key] === "number"));
  if (!metric) {
    return el("p", { class: "muted", id: "chart-empty" },
      "No quality measured (submit with ContentProcessing.QualityMetrics: true).");
  }
  const points = video
    .filter((s) => typeof s[metric.key] === "number")
    .map((s) => ({ x: Number(s.EncodedBitrateInKbps ?? s.BitrateInKbps), y: s[metric.key], name: s.Name }))
    .sort((a, b) => a.x - b.x);
  const W = 480, H = 260, L = 56, R = 16, T = 16, B = 40;
  const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
  const x0 = 0, x1 = Math.max(...xs) * 1.1 || 1;
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  const pad = (y1 - y0) * 0.15 || Math.abs(y1) * 0.05 || 1;
  y0 -= pad; y1 += pad;
  const px = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const py = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  const digits = metric.key === "Ssim" ? 3 : 1;
  const grid = [];
  for (let i = 0; i <= 4; i += 1) {
    const y = y0 + ((y1 - y0) * i) / 4;
    grid.push(svg("line", { class: "grid", x1: L, x2: W - R, y1: py(y), y2: py(y) }));
    grid.push(svg("text", { class: "tick", x: L - 6, y: py(y) + 4, "text-anchor": "end" }, y.toFixed(digits)));
    const x = x0 + ((x1 - x0) * i) / 4;
    grid.push(svg("text", { class: "tick", x: px(x), y: H - B + 16, "text-anchor": "middle" }, Math.round(x)));
  }
  const line = points.map((p) => `${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`).join(" ");
  return svg("svg", { id: "rate-quality", viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `bitrate against ${metric.label}` },
  svg("title", {}, `Rate–quality: kbps against ${metric.label}`),
  grid,
  svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }),
  svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }),
  svg("text", { class: "label", x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" }, "kbps"),
  svg("text", { class: "label", x: 12, y: T + 4 }, metric.label),
  svg("polyline", { class: "curve", points: line }),
  points.map((p) => svg("circle", { class: "point", cx: px(p.x), cy: py(p.y), r: 4 },
    svg("title", {}, `${p.name}: ${p.x} kbps, ${metric.label} ${p.y}`))));
}
