// tickertape's status page: polls GET /status/live each second (GET /sessions every
// five) and draws what it says. No library: the chart is drawn on a <canvas>.
// Every value is put in the page as text (textContent), never as HTML: user names and
// session ids come from clients.
"use strict";

const LIVE_EVERY_MS = 1000;
const SESSIONS_EVERY_MS = 5000;
const CHART_SECONDS = 600;

const $ = (id) => document.getElementById(id);
let lastPublished = new Map(); // publisher address -> [published, time]
let lastRates = [];

function number(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function ago(unixTime, now) {
  let s = Math.max(0, Math.round(now - unixTime));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  s %= 60;
  if (h) return h + "h " + m + "m ago";
  if (m) return m + "m " + s + "s ago";
  return s + "s ago";
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function stateCell(state) {
  const td = document.createElement("td");
  const span = document.createElement("span");
  span.textContent = state;
  span.className = "state state-" + String(state).replace(/\s+/g, "-");
  td.appendChild(span);
  return td;
}

function fill(table, rows, columns, emptyText) {
  const body = $(table).tBodies[0];
  const fresh = document.createElement("tbody");
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell(emptyText, "empty");
    td.colSpan = columns;
    tr.appendChild(td);
    fresh.appendChild(tr);
  }
  for (const cells of rows) {
    const tr = document.createElement("tr");
    for (const td of cells) tr.appendChild(td);
    fresh.appendChild(tr);
  }
  body.replaceWith(fresh);
}

function showError(text) {
  const box = $("error");
  box.textContent = text || "";
  box.hidden = !text;
}

function render(status) {
  const now = status.time;
  $("version").textContent = status.version;
  $("session").textContent = status.session;
  $("mode").textContent = status.read_only ? "following (read-only)" : "";
  $("messages").textContent = number(status.messages);
  $("next-seq").textContent = number(status.next_seq);
  const rates = status.rate.map((point) => point[1]);
  $("rate").textContent = rates.length ? number(Math.round(rates[rates.length - 1])) : "–";
  $("rate-peak").textContent = rates.length ? number(Math.round(Math.max(...rates))) : "–";
  $("client-count").textContent = number(status.clients.length);
  $("connections").textContent = number(status.connections);
  $("refused").textContent = number(status.refused_connections);
  const disk = status.disk;
  if (disk.error) {
    $("disk-free").textContent = "?";
    $("disk-detail").textContent = disk.error;
  } else {
    $("disk-free").textContent = bytes(disk.free);
    const pct = disk.total ? Math.round((100 * disk.free) / disk.total) : 0;
    $("disk-detail").textContent = pct + "% of " + bytes(disk.total) + " on " + disk.path;
    $("disk-free").className = "value" + (pct < 10 ? " bad" : "");
  }
  showError(status.publishing_error ? "Publishing is paused: " + status.publishing_error : "");
  $("updated").textContent = "updated " + new Date(now * 1000).toLocaleTimeString();

  fill(
    "clients",
    status.clients.map((c) => [
      cell(c.address),
      cell(c.user),
      cell(c.session),
      cell(number(c.next_seq), "num"),
      cell(number(c.lag), "num" + (c.lag > 0 ? " lagging" : "")),
      stateCell(c.state || (c.live ? "live" : "catching up")),
      cell(c.tls ? "TLS" : "plain"),
      cell(c.since ? ago(c.since, now) : "–"),
    ]),
    8,
    "no client connected",
  );

  const seen = new Map();
  fill(
    "publishers",
    status.publishers.map((p) => {
      const before = lastPublished.get(p.address);
      seen.set(p.address, [p.published, now]);
      let rate = "–";
      if (before && now > before[1]) rate = number(Math.round((p.published - before[0]) / (now - before[1])));
      return [
        cell(p.address),
        cell(p.user),
        cell(number(p.published), "num"),
        cell(rate, "num"),
        cell(p.since ? ago(p.since, now) : "–"),
      ];
    }),
    5,
    "no publishing connection (the demo, an upstream or a source publish inside the server)",
  );
  lastPublished = seen;

  const section = $("mold-section");
  section.hidden = !status.mold;
  if (status.mold) {
    const box = document.createElement("div");
    box.id = "mold";
    const titles = { publisher: "Multicast publisher", requests: "Re-request server" };
    for (const part of ["publisher", "requests"]) {
      const counters = status.mold[part];
      if (!counters) continue;
      const title = document.createElement("h3");
      title.textContent = titles[part];
      const grid = document.createElement("div");
      grid.className = "counters";
      for (const [name, value] of Object.entries(counters)) {
        const item = document.createElement("div");
        item.dataset.counter = part + "." + name;
        const label = document.createElement("div");
        label.className = "name";
        label.textContent = name.replace(/_/g, " ");
        const count = document.createElement("div");
        count.className = "count";
        count.textContent = number(value);
        item.append(label, count);
        grid.appendChild(item);
      }
      box.append(title, grid);
    }
    $("mold").replaceWith(box);
  }

  lastRates = status.rate;
  drawChart();
}

function renderSessions(listing) {
  fill(
    "sessions",
    listing.sessions.map((s) => [
      cell(s.id),
      stateCell(s.id === listing.active ? "active" : s.state),
      cell(number(s.messages), "num"),
      cell(bytes(s.bytes), "num"),
      cell(number(s.problems), "num" + (s.problems ? " bad" : "")),
    ]),
    5,
    "no session",
  );
}

function niceStep(max) {
  const rough = max / 4;
  const power = Math.pow(10, Math.floor(Math.log10(rough)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * power >= rough) return m * power;
  return 10 * power;
}

function drawChart() {
  const canvas = $("rate-chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const points = lastRates;
  const left = 64, right = 12, top = 10, bottom = 24;
  const plotW = width - left - right, plotH = height - top - bottom;
  const end = points.length ? points[points.length - 1][0] : Date.now() / 1000;
  // The last ten minutes, or less on a server that started since (a minute at least).
  const first = points.length ? points[0][0] : end;
  const span = Math.min(CHART_SECONDS, Math.max(60, end - first));
  const start = end - span;
  const peak = Math.max(10, ...points.map((p) => p[1]));
  const step = niceStep(peak);
  const ceiling = Math.ceil(peak / step) * step;
  const x = (t) => left + ((t - start) / span) * plotW;
  const y = (v) => top + plotH - (v / ceiling) * plotH;

  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#8893a0";
  g.strokeStyle = "#2a3440";
  g.lineWidth = 1;
  g.textAlign = "right";
  g.textBaseline = "middle";
  for (let v = 0; v <= ceiling + 1e-9; v += step) {
    g.beginPath();
    g.moveTo(left, Math.round(y(v)) + 0.5);
    g.lineTo(width - right, Math.round(y(v)) + 0.5);
    g.stroke();
    g.fillText(number(v), left - 8, y(v));
  }
  g.textAlign = "center";
  g.textBaseline = "top";
  const tick = [10, 15, 30, 60, 120, 300].find((step) => span / step <= 6) || 600;
  for (let back = 0; back <= span; back += tick) {
    const label = back % 60 === 0 ? back / 60 + " min" : back + " s";
    g.fillText(back ? "-" + label : "now", x(end - back), top + plotH + 6);
  }
  canvas.dataset.points = String(points.length);
  const minutes = Math.round(span / 60);
  $("chart-span").textContent =
    "(last " + (minutes === 1 ? "minute" : minutes + " minutes") + ", sampled each second)";
  if (points.length < 2) return;

  g.beginPath();
  points.forEach(([t, v], i) => (i ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v))));
  g.lineTo(x(points[points.length - 1][0]), y(0));
  g.lineTo(x(points[0][0]), y(0));
  g.closePath();
  g.fillStyle = "rgba(79, 179, 255, 0.18)";
  g.fill();
  g.beginPath();
  points.forEach(([t, v], i) => (i ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v))));
  g.strokeStyle = "#4fb3ff";
  g.lineWidth = 2;
  g.stroke();
}

async function getJson(path) {
  const answer = await fetch(path, { cache: "no-store", credentials: "same-origin" });
  const body = await answer.json();
  if (!answer.ok) throw new Error(path + ": " + (body.error || answer.status));
  return body;
}

async function pollLive() {
  try {
    render(await getJson("/status/live"));
  } catch (error) {
    showError("Cannot read the server's status: " + error.message);
    $("updated").textContent = "not updated since " + new Date().toLocaleTimeString();
  }
  setTimeout(pollLive, LIVE_EVERY_MS);
}

async function pollSessions() {
  try {
    renderSessions(await getJson("/sessions"));
  } catch (error) {
    showError("Cannot list the sessions: " + error.message);
  }
  setTimeout(pollSessions, SESSIONS_EVERY_MS);
}

window.addEventListener("resize", drawChart);
pollLive();
pollSessions();
