// The console's live parts: the overview's figures and a task's timeline, over server-sent
// events. Everything else is plain HTML that works without this script.
"use strict";

function ms(v) {
  if (v === null || v === undefined) return "-";
  return v >= 1000 ? (v / 1000).toFixed(1) + " s" : Math.round(v) + " ms";
}

function cell(tag, text, attrs) {
  const el = document.createElement(tag);
  el.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

function renderOverview(data) {
  const body = document.querySelector("#types tbody");
  body.replaceChildren();
  for (const t of data.types) {
    const row = document.createElement("tr");
    row.dataset.type = t.task_type;
    row.append(cell("th", t.task_type, {scope: "row"}));
    if (data.operator) row.append(cell("td", t.backlog ?? "-", {"data-k": "backlog"}));
    for (const k of ["queued", "running", "completed", "failed"]) row.append(cell("td", t[k] ?? 0, {"data-k": k}));
    row.append(cell("td", ms(t.p50), {"data-k": "p50"}), cell("td", ms(t.p95), {"data-k": "p95"}));
    body.append(row);
  }
  const workers = document.querySelector("#workers tbody");
  if (workers && data.workers) {
    workers.replaceChildren();
    for (const w of data.workers) {
      const row = document.createElement("tr");
      row.append(cell("td", w.client_id), cell("td", w.host), cell("td", w.task_type),
                 cell("td", w.current ? w.current.task_id : "idle"));
      workers.append(row);
    }
  }
  document.getElementById("live").textContent = "updated " + data.at;
}

function followOverview(table) {
  const source = new EventSource(table.dataset.stream);
  source.addEventListener("overview", (e) => renderOverview(JSON.parse(e.data)));
  source.onerror = () => { document.getElementById("live").textContent = "reconnecting…"; };
}

function followTask(list) {
  const source = new EventSource(list.dataset.stream);
  source.addEventListener("status", (e) => {
    const ev = JSON.parse(e.data);
    const item = document.createElement("li");
    item.append(cell("time", ev.occurred_at.replace("T", " ").slice(0, 19)), " ",
                cell("span", ev.status, {class: "status s-" + ev.status}),
                " attempt " + ev.attempt + (ev.progress !== null ? " · " + Math.round(ev.progress * 100) + "%" : "")
                + (ev.message ? " · " + ev.message : ""));
    list.append(item);
    const status = document.getElementById("status");
    status.textContent = ev.status;
    status.className = "status s-" + ev.status;
    document.getElementById("attempt").textContent = ev.attempt;
    if (ev.progress !== null) document.getElementById("progress").value = ev.progress;
  });
  // The task ended: reload once to show its result, error and buttons as they now are.
  source.addEventListener("end", () => { source.close(); window.location.reload(); });
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.querySelector("#types[data-stream]");
  if (table) followOverview(table);
  const timeline = document.querySelector("#timeline[data-live='yes']");
  if (timeline) followTask(timeline);
});
