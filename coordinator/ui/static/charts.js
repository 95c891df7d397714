// Line charts per round on a <canvas>, drawn by hand: axes, a few ticks, one line with dots per series.

const COLOURS = ["#2b6cb0", "#c05621", "#2f855a", "#805ad5", "#b83280", "#2c7a7b", "#975a16", "#4a5568"];

function niceTicks(lo, hi, count = 4) {
  if (!(hi > lo)) { const pad = Math.abs(lo) * 0.1 || 1; lo -= pad; hi += pad; }
  const raw = (hi - lo) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) || raw;
  const start = Math.floor(lo / step) * step;
  const ticks = [];
  for (let v = start; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks[ticks.length - 1] < hi) ticks.push(Number((ticks[ticks.length - 1] + step).toPrecision(12)));
  return ticks;
}

function label(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  return a >= 1e4 || a < 1e-3 ? v.toExponential(1) : String(Number(v.toPrecision(3)));
}

// series: [{name, points: [[round, value], ...]}]. Returns the number of points drawn.
export function drawChart(canvas, series) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 340;
  const height = canvas.clientHeight || 200;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px system-ui, sans-serif";

  const all = series.flatMap((s) => s.points).filter(([, y]) => Number.isFinite(y));
  if (!all.length) {
    ctx.fillStyle = "#66707f";
    ctx.fillText("no data yet", width / 2 - 28, height / 2);
    return 0;
  }
  const xs = all.map(([x]) => x);
  const ys = all.map(([, y]) => y);
  const xLo = Math.min(...xs);
  const xHi = Math.max(...xs, xLo + 1);
  const yTicks = niceTicks(Math.min(...ys), Math.max(...ys));
  const yLo = yTicks[0];
  const yHi = yTicks[yTicks.length - 1];
  const left = 46, right = 10, top = 8, bottom = 22;
  const px = (x) => left + ((x - xLo) / (xHi - xLo)) * (width - left - right);
  const py = (y) => height - bottom - ((y - yLo) / (yHi - yLo || 1)) * (height - top - bottom);

  ctx.strokeStyle = "#e2e8f0";
  ctx.fillStyle = "#66707f";
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  for (const t of yTicks) {
    const y = Math.round(py(t)) + 0.5;
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(width - right, y); ctx.stroke();
    ctx.fillText(label(t), left - 4, y + 3);
  }
  ctx.textAlign = "center";
  const xStep = Math.max(1, Math.ceil((xHi - xLo) / 8));
  for (let x = Math.ceil(xLo); x <= xHi; x += xStep) ctx.fillText(String(x), px(x), height - 6);

  let drawn = 0;
  series.forEach((s, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const points = s.points.filter(([, y]) => Number.isFinite(y)).sort((a, b) => a[0] - b[0]);
    ctx.strokeStyle = colour;
    ctx.fillStyle = colour;
    ctx.lineWidth = 1.6;
    ctx.beginPath();
    points.forEach(([x, y], k) => (k ? ctx.lineTo(px(x), py(y)) : ctx.moveTo(px(x), py(y))));
    ctx.stroke();
    for (const [x, y] of points) { ctx.beginPath(); ctx.arc(px(x), py(y), 2.5, 0, 2 * Math.PI); ctx.fill(); }
    drawn += points.length;
  });
  return drawn;
}

export function colour(i) { return COLOURS[i % COLOURS.length]; }
