// SPDX-License-Identifier: Apache-2.0 (part of dicom-router; no third-party code)
// dicom-router console: confirmations, and the overview that updates itself.
// Own code, no library (README "Web console"); every value goes in as text, never as HTML.
"use strict";

document.addEventListener("submit", (ev) => {
  const ask = ev.target.dataset ? ev.target.dataset.confirm : undefined;
  if (ask && !window.confirm(ask)) ev.preventDefault();
});

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function size(n) {
  const units = [["GB", 1073741824], ["MB", 1048576], ["KB", 1024]];
  for (const [u, s] of units) if (n >= s) return (n / s).toFixed(1) + " " + u;
  return n + " B";
}

function table(headers, rows) {
  const t = el("table");
  const head = t.createTHead().insertRow();
  headers.forEach((h) => head.appendChild(el("th", h)));
  const body = t.createTBody();
  rows.forEach((cells) => {
    const tr = body.insertRow();
    cells.forEach((c) => { const td = tr.insertCell(); td.append(c instanceof Node ? c : el("span", c)); });
  });
  return t;
}

function progress(a) {
  const box = el("div", null, "transfer");
  const bar = el("progress");  // no value: the size of an instance is not known ahead
  bar.setAttribute("aria-label", "transfer in progress");
  if (a.current_bytes > 0) box.appendChild(bar);
  box.appendChild(el("span", a.current_bytes > 0 ? size(a.current_bytes) : "idle"));
  return box;
}

function chart(svg, series, keys) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const ns = "http://www.w3.org/2000/svg";
  const now = Date.now() / 1000, w = 600, h = 150;
  let max = 1;
  series.forEach((p) => keys.forEach((k) => { max = Math.max(max, p[k]); }));
  keys.forEach((k, i) => {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", series.map((p) =>
      ((1 - (now - p.at) / 3600) * w).toFixed(1) + "," + (h - (p[k] / max) * (h - 10)).toFixed(1)).join(" "));
    line.setAttribute("class", "line line" + i);
    svg.appendChild(line);
  });
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", 4); label.setAttribute("y", 12);
  label.textContent = "max " + max.toFixed(1) + " · " + keys.join(", ");
  svg.appendChild(label);
}

async function refresh() {
  let data;
  try {
    const rsp = await fetch("/console/overview.json", {credentials: "same-origin"});
    if (rsp.status === 401) { window.location = "/console/login"; return; }
    data = await rsp.json();
  } catch (err) {
    document.getElementById("summary").textContent = "router not answering: " + err;
    return;
  }
  const cards = document.getElementById("summary");
  cards.replaceChildren(
    el("div", data.ready ? "ready" : "not ready: " + data.ready_reason, data.ready ? "card ok" : "card bad"),
    el("div", data.jobs_queued + " jobs queued", "card"),
    el("div", size(data.spool.free_bytes || 0) + " free on the spool", "card"),
    el("div", "version " + data.version, "card"));
  const now = Date.now() / 1000;
  document.getElementById("associations").replaceChildren(data.associations.length ? table(
    ["Calling AE", "Called AE", "Peer", "TLS", "Open for", "Instances", "Received", "Transfer now"],
    data.associations.map((a) => [a.calling_ae, a.called_ae, a.peer, a.tls ? "yes" : "no",
      Math.round(now - a.started_at) + "s", a.instances, size(a.bytes_received), progress(a)]))
    : el("p", "none open"));
  document.getElementById("destinations").replaceChildren(table(
    ["Destination", "State", "Associations", "Queued", "In flight", "Oldest", "Delivered/s",
     "Delivered", "Failed", "Dead letters"],
    data.destinations.map((d) => [d.name, el("span", d.state, "state"),
      d.concurrency === null || d.concurrency === undefined ? "-" : (d.associations || 0) + "/" + d.concurrency,
      d.depth, d.in_flight, d.oldest, d.rate, d.delivered, d.failed, d.dead_letters])));
  chart(document.getElementById("chart-rate"), data.history.rates, ["in", "out"]);
  chart(document.getElementById("chart-queue"), data.history.queue, ["jobs"]);
}

if (document.getElementById("summary")) {
  refresh();
  setInterval(refresh, 2000);
}
