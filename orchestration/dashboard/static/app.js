// workpool dashboard: reads /api/status, /api/timeline and /api/history every second and
// draws the page. No library: tables by DOM, charts on canvas. Text is set with textContent
// only (nothing from the server is parsed as HTML).
"use strict";

const REFRESH_MS = 1000;
const HISTORY_POINTS = 3600;
const depth = { points: [] }; // /api/history's points, kept here: each refresh asks only for the points after the last one
const COLOURS = {
  wait: "#b9d3ee", score: "#1f77b4", finish: "#0b3d66", pool: "#2ca02c", backlog: "#ff7f0e",
  preempt: "#d62728", autoscale: "#9467bd", launch: "#2ca02c", scale: "#2ca02c", teardown: "#555555",
  grid: "#e5e7eb", text: "#6b7280",
};

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function fmtEta(s) {
  if (s === null || s === undefined) return "—";
  const t = Math.round(s), h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60), sec = t % 60;
  return `${h}:${String(m).padStart(2, "0")}:${String(sec).padStart(2, "0")}`;
}

function fmtPct(v) { return v === null || v === undefined ? "—" : `${Math.round(v)}%`; }

function gpuText(map) {
  const entries = Object.entries(map || {});
  return entries.length ? entries.map(([w, p]) => `${w} ${fmtPct(p)}`).join(", ") : "—";
}

async function getJson(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

// --- tables ------------------------------------------------------------------------------------
function renderStatus(status) {
  const q = status.queue || {};
  $("queue-name").textContent = q.name ? `queue ${q.name}` : "";
  $("q-visible").textContent = q.visible ?? (q.exists === false ? "not created" : q.messages ?? "–");
  $("q-in-flight").textContent = q.in_flight ?? "–";
  $("q-poison").textContent = q.poison ?? "–";

  const body = $("runs").querySelector("tbody");
  body.replaceChildren();
  const runs = status.runs || [];
  $("no-runs").hidden = runs.length > 0;
  for (const r of runs) {
    const row = el("tr");
    row.dataset.run = r.run_id;
    row.append(el("td", r.run_id, "run-id"));
    const cell = el("td"), bar = el("div", null, "bar"), fill = el("div", null, r.complete ? "done" : "");
    const finished = r.batches_done + r.batches_poisoned;
    fill.style.width = `${r.batches ? (100 * finished) / r.batches : 0}%`;
    bar.append(fill); cell.append(bar); row.append(cell);
    const done = el("td", `${r.batches_done}/${r.batches}`, "num batches-done");
    row.append(done);
    row.append(el("td", r.batches_poisoned, "num poisoned"));
    row.append(el("td", r.images_ok, "num images-ok"));
    row.append(el("td", r.images_failed, "num failed"));
    row.append(el("td", Number(r.images_per_s).toFixed(2), "num rate"));
    row.append(el("td", r.complete ? "done" : fmtEta(r.eta_s), "num eta"));
    row.append(el("td", gpuText(r.gpu_busy_pct), "gpu"));
    body.append(row);
  }

  const c = status.cluster;
  const nodes = $("nodes").querySelector("tbody");
  nodes.replaceChildren();
  const gpu = {};
  for (const r of runs) Object.assign(gpu, r.gpu_busy_pct || {});
  if (status.cluster_error) {
    $("cluster-title").textContent = `cluster: ${status.cluster_error}`;
  } else if (c) {
    $("cluster-title").textContent = `${c.backend}: ${c.nodes.length} node(s), target ${c.target_nodes}`;
    $("q-nodes").textContent = `${c.nodes.length}/${c.target_nodes}`;
    for (const n of c.nodes) {
      const row = el("tr");
      row.dataset.node = n.id;
      row.append(el("td", n.id), el("td", n.state, `state state-${n.state}`));
      // A node's workers: named after it (local: the node id, with `-<i>` per GPU) or after the
      // task it runs (Azure Batch: "running consumer-0001" in its detail).
      const names = [n.id, ...[...(n.detail || "").matchAll(/running ([^\s,]+)/g)].map((m) => m[1])];
      const own = Object.entries(gpu).filter(([w]) => names.some((id) => w === id || w.startsWith(`${id}-`)));
      row.append(el("td", own.length ? own.map(([, p]) => fmtPct(p)).join(" ") : "—", "gpu"));
      row.append(el("td", n.detail));
      nodes.append(row);
    }
    $("cluster-detail").textContent = c.detail || "";
  }
  const a = status.autoscaler;
  $("autoscaler").textContent = a
    ? `autoscaler (${a.running ? "running" : "stopped"}, ${a.min}:${a.max}): target ${a.target} at ${a.decided_at}: ${a.reason}`
    : "";
}

function renderPoison(timeline) {
  const body = $("poisoned").querySelector("tbody");
  body.replaceChildren();
  const commands = [];
  for (const run of timeline.runs) {
    for (const p of run.poisoned) {
      const row = el("tr");
      row.append(el("td", run.run_id), el("td", p.batch_id), el("td", p.attempts, "num"), el("td", p.worker ?? "—"),
        el("td", p.reason));
      body.append(row);
    }
    if (run.requeue_command) commands.push(run.requeue_command);
  }
  $("requeue").textContent = commands.join("\n");
  $("poison-section").hidden = commands.length === 0;
}

function renderCost(timeline) {
  const priced = timeline.runs.filter((r) => r.cost && r.cost.cost !== null);
  if (timeline.price_per_node_hour === null || timeline.price_per_node_hour === undefined) {
    $("q-cost").textContent = "no price";
    $("q-cost").title = "set WORKPOOL_PRICE_PER_NODE_HOUR";
  } else {
    $("q-cost").textContent = priced.map((r) => r.cost.cost.toFixed(4)).join(" + ") || "0";
    $("q-cost").title = priced
      .map((r) => `${r.run_id}: ${r.cost.node_seconds} node-s at ${r.cost.price_per_node_hour} per node-hour`)
      .join("\n");
  }
}

// --- charts --------------------------------------------------------------------------------------
function canvas2d(id, cssHeight) {
  const c = $(id);
  const dpr = window.devicePixelRatio || 1;
  const width = c.clientWidth || 600;
  if (cssHeight) c.style.height = `${cssHeight}px`;
  const height = cssHeight || c.clientHeight || 180;
  c.width = Math.round(width * dpr);
  c.height = Math.round(height * dpr);
  const g = c.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, width, height);
  g.font = "11px system-ui, sans-serif";
  return { g, width, height };
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function axes(g, box, xMax, yMax, yLabel, right) {
  g.strokeStyle = COLOURS.grid; g.fillStyle = COLOURS.text; g.lineWidth = 1;
  for (let i = 0; yMax > 0 && i <= 5; i++) {
    const y = box.y + box.h - (box.h * i) / 5;
    g.beginPath(); g.moveTo(box.x, y); g.lineTo(box.x + box.w, y); g.stroke();
    const label = Number((yMax * i) / 5).toFixed(yMax < 5 ? 1 : 0);
    if (right) { g.textAlign = "left"; g.fillText(label, box.x + box.w + 4, y + 3); }
    else { g.textAlign = "right"; g.fillText(label, box.x - 4, y + 3); }
  }
  g.textAlign = "center";
  const step = niceMax(xMax / 6);
  for (let s = 0; s <= xMax; s += step) {
    g.fillText(`${Math.round(s)} s`, box.x + (box.w * s) / xMax, box.y + box.h + 14);
  }
  if (yLabel) { g.textAlign = "left"; g.fillText(yLabel, box.x, box.y - 4); }
}

function drawThroughput(run, history) {
  const { g, width, height } = canvas2d("chart-throughput", 180);
  const box = { x: 40, y: 16, w: width - 90, h: height - 38 };
  if (!run) { g.fillStyle = COLOURS.text; g.fillText("no run yet", box.x, box.y + 20); return; }
  const end = Math.max(run.now_s, 1);
  const bin = Math.max(2, Math.ceil(end / 60));
  const bins = new Array(Math.ceil(end / bin)).fill(0);
  for (const lane of run.lanes) {
    for (const b of lane.batches) {
      const i = Math.min(Math.floor(b[3] / bin), bins.length - 1);
      if (i >= 0) bins[i] += b[5];
    }
  }
  const rates = bins.map((n) => n / bin);
  const t0 = Date.parse(run.enqueued_at) / 1000;
  const backlog = history.points
    .filter((p) => p.messages !== null && p.t >= t0)
    .map((p) => [p.t - t0, p.messages]);
  const yMax = niceMax(Math.max(...rates, 0.1));
  const bMax = niceMax(Math.max(1, ...backlog.map((p) => p[1])));
  axes(g, box, end, yMax, "images/s");
  axes(g, box, end, bMax, "", true);
  const x = (s) => box.x + (box.w * s) / end;
  g.strokeStyle = COLOURS.score; g.lineWidth = 2; g.beginPath();
  rates.forEach((r, i) => {
    const px = x(i * bin), py = box.y + box.h - (box.h * r) / yMax;
    if (i === 0) g.moveTo(px, py); else g.lineTo(px, py);
    g.lineTo(x(Math.min((i + 1) * bin, end)), py);
  });
  g.stroke();
  g.strokeStyle = COLOURS.backlog; g.beginPath();
  backlog.forEach(([s, n], i) => {
    const px = x(s), py = box.y + box.h - (box.h * n) / bMax;
    if (i === 0) g.moveTo(px, py); else g.lineTo(px, py);
  });
  g.stroke();
}

function drawPool(run) {
  const { g, width, height } = canvas2d("chart-pool", 180);
  const box = { x: 40, y: 16, w: width - 60, h: height - 38 };
  const list = $("decisions");
  list.replaceChildren();
  if (!run) return;
  const end = Math.max(run.now_s, 1);
  let size = 0;
  const steps = [];
  for (const [at, n] of run.pool_steps) {
    if (at <= 0) size = n; else if (at <= end) steps.push([at, n]);
  }
  const yMax = Math.max(5, Math.ceil((Math.max(size, 1, ...steps.map((s) => s[1])) * 1.2) / 5) * 5);
  axes(g, box, end, yMax, "nodes (target)");
  const x = (s) => box.x + (box.w * Math.max(0, Math.min(s, end))) / end;
  const y = (n) => box.y + box.h - (box.h * n) / yMax;
  g.strokeStyle = COLOURS.pool; g.lineWidth = 2; g.beginPath(); g.moveTo(x(0), y(size));
  for (const [at, n] of steps) { g.lineTo(x(at), y(size)); g.lineTo(x(at), y(n)); size = n; }
  g.lineTo(x(end), y(size)); g.stroke();
  for (const e of run.events) {
    if (e.at_s < 0 || e.at_s > end) continue;
    g.fillStyle = COLOURS[e.kind] || COLOURS.text;
    g.beginPath(); g.arc(x(e.at_s), y(e.nodes_after ?? size), 4, 0, 2 * Math.PI); g.fill();
  }
  for (const e of run.events.slice(-12).reverse()) {
    const sizes = e.nodes_after === null ? "" : ` ${e.nodes_before ?? "?"}→${e.nodes_after}`;
    const where = e.node ? ` (${e.node})` : "";
    list.append(el("li", `${e.at_s.toFixed(1)} s ${e.kind}${sizes}${where}: ${e.reason || "—"}`));
  }
}

function drawLanes(run) {
  const lanes = run ? run.lanes : [];
  const laneH = lanes.length > 40 ? Math.max(4, Math.floor(480 / lanes.length)) : 18;
  const labelled = laneH >= 12;
  const { g, width, height } = canvas2d("chart-lanes", Math.max(80, lanes.length * laneH + 34));
  $("lanes-run").textContent = run ? `run ${run.run_id}, ${lanes.length} worker(s)` : "";
  if (!run) return;
  const left = labelled ? 170 : 40;
  const box = { x: left, y: 6, w: width - left - 14, h: height - 30 };
  const end = Math.max(run.now_s, 1);
  axes(g, box, end, 0, "");
  const x = (s) => box.x + (box.w * Math.max(0, Math.min(s, end))) / end;
  const preempted = run.events.filter((e) => e.kind === "preempt");
  lanes.forEach((lane, i) => {
    const top = box.y + i * laneH + 2, h = laneH - 4;
    if (labelled) {
      g.fillStyle = COLOURS.text; g.textAlign = "right";
      const gpu = lane.gpu_busy_pct === null || lane.gpu_busy_pct === undefined ? "" : `  GPU ${fmtPct(lane.gpu_busy_pct)}`;
      g.fillText(`${lane.worker}${gpu}`, left - 6, top + h - 2);
    }
    for (const [dequeued, started, scored, acked, attempt] of lane.batches) {
      const begin = started ?? scored;
      g.fillStyle = COLOURS.wait; g.fillRect(x(dequeued), top, Math.max(1, x(begin) - x(dequeued)), h);
      g.fillStyle = COLOURS.score; g.fillRect(x(begin), top, Math.max(1, x(scored) - x(begin)), h);
      g.fillStyle = COLOURS.finish; g.fillRect(x(scored), top, Math.max(1, x(acked) - x(scored)), h);
      if (attempt > 1) {
        g.strokeStyle = COLOURS.preempt; g.lineWidth = 1;
        g.strokeRect(x(dequeued), top, Math.max(1, x(acked) - x(dequeued)), h);
      }
    }
    for (const e of preempted) {
      if (e.node !== lane.worker) continue;
      g.strokeStyle = COLOURS.preempt; g.lineWidth = 2;
      const px = x(e.at_s), cy = top + h / 2;
      g.beginPath(); g.moveTo(px - 5, cy - 5); g.lineTo(px + 5, cy + 5); g.moveTo(px + 5, cy - 5); g.lineTo(px - 5, cy + 5);
      g.stroke();
    }
  });
}

// --- the loop ------------------------------------------------------------------------------------
async function refresh() {
  try {
    const last = depth.points.length ? depth.points[depth.points.length - 1].t : null;
    const [status, timeline, fresh] = await Promise.all([
      getJson("/api/status"), getJson("/api/timeline"), getJson(last === null ? "/api/history" : `/api/history?since=${last}`),
    ]);
    depth.points.push(...fresh.points);
    depth.points.splice(0, Math.max(0, depth.points.length - HISTORY_POINTS));
    renderStatus(status);
    renderPoison(timeline);
    renderCost(timeline);
    const run = timeline.runs[0];
    drawThroughput(run, depth);
    drawPool(run);
    drawLanes(run);
    const when = timeline.updated_at ? new Date(timeline.updated_at * 1000).toLocaleTimeString() : "—";
    $("updated").textContent = `updated ${when}`;
    $("error").hidden = !timeline.error;
    $("error").textContent = timeline.error ? `last refresh failed: ${timeline.error}` : "";
  } catch (err) {
    $("error").hidden = false;
    $("error").textContent = `dashboard unreachable: ${err.message}`;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

document.addEventListener("DOMContentLoaded", refresh);
