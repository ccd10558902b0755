// The live page: polls data.json (same origin, same authentication as the page) and redraws.
"use strict";

const REFRESH_MS = 2000;
const SVG_NS = "http://www.w3.org/2000/svg";

function formatNumber(value, digits) {
  return value.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function element(tag, attributes, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG_NS, tag.slice(4)) : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

// A figure carries its exact value in data-value, so tests compare numbers, not formatting.
function figure(label, value, unit, digits, field) {
  const box = element("div", { class: "figure" });
  box.append(element("span", { class: "label" }, label));
  const shown = value === undefined ? "—" : `${formatNumber(value, digits)} ${unit}`;
  const attributes = { class: "value", "data-field": field };
  if (value !== undefined) attributes["data-value"] = String(value);
  box.append(element("span", attributes, shown));
  return box;
}

function chart(points, historySeconds, now) {
  const width = 560, height = 160, left = 48, right = 8, top = 8, bottom = 20;
  const svg = element("svg:svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none" });
  if (points.length === 0) return svg;
  const maxWatts = Math.max(...points.map((p) => Math.max(p[1], p[2]))) * 1.1;
  const x = (t) => left + ((t - (now - historySeconds)) / historySeconds) * (width - left - right);
  const y = (w) => top + (1 - w / maxWatts) * (height - top - bottom);
  for (const fraction of [0, 0.25, 0.5, 0.75, 1]) {
    const watts = maxWatts * fraction;
    svg.append(element("svg:line", { class: "grid", x1: left, x2: width - right, y1: y(watts), y2: y(watts) }));
    svg.append(element("svg:text", { x: 2, y: y(watts) + 4 }, `${formatNumber(watts / 1000, 1)} kW`));
  }
  for (const minutesAgo of [10, 5, 0]) {
    svg.append(element("svg:text", { x: x(now - minutesAgo * 60) - 12, y: height - 4 }, minutesAgo ? `-${minutesAgo} min` : "now"));
  }
  const path = (index) => points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[index]).toFixed(1)}`).join("");
  svg.append(element("svg:path", { class: "cap", d: path(2) }));
  svg.append(element("svg:path", { class: "power", d: path(1) }));
  return svg;
}

function headroomBar(rack) {
  const bar = element("div", { class: "bar", title: "power against cap" });
  const share = Math.min(rack.power_watts / rack.cap_watts, 1);
  const colour = rack.overdraw_watts > 0 ? "var(--bad)" : share > 0.85 ? "var(--warn)" : "var(--ok)";
  bar.append(element("div", { style: `width:${(share * 100).toFixed(1)}%;background:${colour}` }));
  return bar;
}

function rackCard(rack, points, data) {
  const card = element("div", { class: "rack", "data-rack": rack.rack });
  const head = element("div", { class: "rack-head" });
  head.append(element("span", { class: "rack-name" }, rack.rack));
  head.append(element("span", { class: "legend" }, rack.estimated ? "sum of nodes (no PDU)" : "measured at the PDU"));
  card.append(head);
  const figures = element("div", { class: "figures" });
  figures.append(figure("power", rack.power_watts, "W", 0, "power_watts"));
  figures.append(figure("cap", rack.cap_watts, "W", 0, "cap_watts"));
  figures.append(figure("headroom", rack.headroom_watts, "W", 0, "headroom_watts"));
  const over = figure("overdraw", rack.overdraw_watts, "W", 0, "overdraw_watts");
  if (rack.overdraw_watts > 0) over.classList.add("over");
  figures.append(over);
  card.append(figures);
  if (rack.power_watts !== undefined && rack.cap_watts) card.append(headroomBar(rack));
  card.append(chart(points, data.history_seconds, data.now_seconds));
  const legend = element("div", { class: "legend" });
  legend.append(element("span", { class: "swatch", style: "background:var(--power)" }), "rack power (window average)");
  legend.append(element("span", { class: "swatch", style: "background:var(--cap)" }), "cap");
  card.append(legend);
  return card;
}

function workloadRow(workload) {
  const row = element("tr", { "data-workload": `${workload.namespace}/${workload.kind}/${workload.name}` });
  row.append(element("td", {}, workload.namespace), element("td", {}, workload.kind), element("td", {}, workload.name));
  for (const [field, digits] of [["watts_per_token", 3], ["generation_tokens_per_second", 0], ["power_watts", 0]]) {
    const value = workload[field];
    const attributes = { class: "num", "data-field": field };
    if (value !== undefined) attributes["data-value"] = String(value);
    row.append(element("td", attributes, value === undefined ? "—" : formatNumber(value, digits)));
  }
  return row;
}

function render(data) {
  document.getElementById("history-minutes").textContent = String(Math.round(data.history_seconds / 60));
  const racks = document.getElementById("racks");
  racks.replaceChildren(...data.racks.map((rack) => rackCard(rack, data.history[rack.rack] || [], data)));
  const body = document.querySelector("#workloads tbody");
  body.replaceChildren(...data.workloads.map(workloadRow));
  const status = document.getElementById("status");
  status.className = "status";
  status.dataset.generation = String(data.generation);
  status.textContent = `updated ${new Date(data.now_seconds * 1000).toISOString().slice(11, 19)} UTC`;
}

async function refresh() {
  try {
    const response = await fetch("data.json", { cache: "no-store" });
    if (!response.ok) throw new Error(`data.json answered ${response.status}`);
    render(await response.json());
  } catch (error) {
    const status = document.getElementById("status");
    status.className = "status error";
    status.textContent = `not updated: ${error.message}`;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
