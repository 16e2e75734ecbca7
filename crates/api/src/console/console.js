// The pipeline console. Data arrives by Server-Sent Events (/console/events); the page never polls.
// Every value from the server is inserted with textContent (or as an attribute value), never as markup, so a DLQ body
// holding "<script>" shows as text.
"use strict";

const HISTORY = 180; // samples kept by the server: 15 minutes at one per 5 s
const samples = [];
const queueCards = new Map(); // role -> card elements
const dlqPanels = new Map(); // role -> panel elements
let csrfToken = "";

function $(selector, root = document) {
  return root.querySelector(selector);
}

function text(element, value) {
  element.textContent = value === null || value === undefined ? "–" : String(value);
}

function fixed(value) {
  return typeof value === "number" ? value.toFixed(1) : value;
}

async function session() {
  const response = await fetch("/console/api/session", { credentials: "same-origin" });
  if (response.status === 401 || response.status === 403) {
    window.location.assign("/console/login");
    return;
  }
  const body = await response.json();
  csrfToken = body.csrfToken || "";
}

async function post(url, payload) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken },
    body: JSON.stringify(payload || {}),
  });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    throw new Error(`${response.status} ${detail}`);
  }
  return body;
}

// ---------------------------------------------------------------------------------------------------------------
// Charts: plain SVG polylines over the last 15 minutes.

function drawChart(svg, series) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const width = 600;
  const height = Number(svg.getAttribute("viewBox").split(" ")[3]);
  let max = 1;
  for (const s of series) for (const v of s.values) if (typeof v === "number" && v > max) max = v;
  series.forEach((s, index) => {
    const points = [];
    s.values.forEach((v, i) => {
      if (typeof v !== "number") return;
      const x = (i + HISTORY - s.values.length) * (width / (HISTORY - 1));
      const y = height - (v / max) * (height - 4) - 2;
      points.push(`${x.toFixed(1)},${y.toFixed(1)}`);
    });
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("class", `s${index}`);
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = s.name;
    line.appendChild(title);
    svg.appendChild(line);
  });
  // The legend is HTML next to the chart: text inside a stretched SVG would be distorted.
  let legend = svg.nextElementSibling;
  if (!legend || !legend.classList.contains("legend")) {
    legend = document.createElement("div");
    legend.className = "legend";
    svg.after(legend);
  }
  legend.replaceChildren(
    ...series.map((s, index) => {
      const item = document.createElement("span");
      item.className = `key s${index}`;
      item.textContent = s.name;
      return item;
    }),
  );
  const scale = document.createElement("span");
  scale.textContent = `max ${fixed(max)} · last 15 min`;
  legend.appendChild(scale);
}

// ---------------------------------------------------------------------------------------------------------------
// Queues

function queueCard(queue) {
  let card = queueCards.get(queue.role);
  if (card) return card;
  const node = $("#queue-template").content.firstElementChild.cloneNode(true);
  node.dataset.role = queue.role;
  $("#queues").appendChild(node);
  card = { node };
  queueCards.set(queue.role, card);
  return card;
}

function renderQueues(latest) {
  for (const queue of latest.queues || []) {
    const { node } = queueCard(queue);
    text($(".queue-name", node), `${queue.role}: ${queue.name}`);
    text($(".q-visible", node), queue.visible);
    text($(".q-inflight", node), queue.inFlight);
    text($(".q-delayed", node), queue.delayed);
    text($(".q-oldest", node), queue.oldestAgeSeconds);
    const history = samples.map((s) => (s.queues || []).find((q) => q.role === queue.role) || {});
    drawChart($(".q-chart", node), [
      { name: "visible", values: history.map((q) => q.visible) },
      { name: "in flight", values: history.map((q) => q.inFlight) },
      { name: "delayed", values: history.map((q) => q.delayed) },
    ]);
    if (queue.dlq) {
      text($(".dlq-name", node), `DLQ: ${queue.dlq.name}`);
      text($(".d-visible", node), queue.dlq.visible);
      text($(".d-inflight", node), queue.dlq.inFlight);
      text($(".d-delayed", node), queue.dlq.delayed);
      drawChart($(".d-chart", node), [
        { name: "DLQ visible", values: history.map((q) => (q.dlq || {}).visible) },
      ]);
      dlqPanel(queue).maybeRefresh(queue.dlq);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Throughput and the latest orders

function renderThroughput(latest) {
  const rates = latest.rates || {};
  const applied = rates.applied || {};
  text($("#rate-accepted"), fixed(rates.accepted));
  text($("#rate-process"), fixed(applied.process));
  text($("#rate-logistics"), fixed(applied.logistics));
  text($("#total-accepted"), (latest.totals || {}).accepted);
  drawChart($("#chart-throughput"), [
    { name: "accepted/s", values: samples.map((s) => (s.rates || {}).accepted) },
    { name: "applied/s process", values: samples.map((s) => ((s.rates || {}).applied || {}).process) },
    { name: "applied/s logistics", values: samples.map((s) => ((s.rates || {}).applied || {}).logistics) },
  ]);
}

function renderLatest(latest) {
  if (!Array.isArray(latest.latest)) return;
  const body = $("#latest tbody");
  const rows = latest.latest.map((order) => {
    const row = document.createElement("tr");
    row.dataset.pedidoId = order.pedidoId;
    const idCell = document.createElement("td");
    const link = document.createElement("a");
    link.className = "order";
    link.textContent = order.pedidoId;
    link.addEventListener("click", () => track(order.pedidoId));
    idCell.appendChild(link);
    row.appendChild(idCell);
    const envio = order.envio ? `${order.envio.trackingCode} (${order.envio.estado})` : "pending";
    for (const value of [order.version, order.estado, order.total, envio, order.actualizadoEn]) {
      const cell = document.createElement("td");
      text(cell, value);
      row.appendChild(cell);
    }
    return row;
  });
  body.replaceChildren(...rows);
}

async function track(pedidoId) {
  const section = $("#tracking");
  section.hidden = false;
  text($("#tracking-id"), pedidoId);
  const response = await fetch(`/api/pedidos/${encodeURIComponent(pedidoId)}`, { credentials: "same-origin" });
  const body = await response.json();
  text($("#tracking-body"), JSON.stringify(body, null, 2));
}

// ---------------------------------------------------------------------------------------------------------------
// DLQ panels

function dlqPanel(queue) {
  let panel = dlqPanels.get(queue.role);
  if (panel) return panel;
  const node = $("#dlq-template").content.firstElementChild.cloneNode(true);
  node.dataset.role = queue.role;
  text($(".dlq-title", node), `DLQ of ${queue.role} (${queue.dlq.name})`);
  $("#dlqs").appendChild(node);
  const status = $(".dlq-status", node);
  const notice = $(".dlq-notice", node);
  const base = `/console/api/dlq/${encodeURIComponent(queue.role)}`;
  let lastTotal = -1;
  // Listing receives every message listed (one more receive each): only once the operator asked for it.
  let opened = false;
  const selected = () =>
    Array.from(node.querySelectorAll("tbody input[type=checkbox]:checked")).map((box) => box.dataset.messageId);

  async function refresh() {
    opened = true;
    node.dataset.opened = "true";
    const response = await fetch(base, { credentials: "same-origin" });
    if (!response.ok) {
      text(status, `could not list: ${response.status}`);
      return;
    }
    const body = await response.json();
    // A refresh (pushed when the DLQ's depth changes) keeps what the operator ticked.
    const ticked = new Set(selected());
    const rows = body.messages.map((message) => {
      const row = document.createElement("tr");
      row.dataset.messageId = message.messageId;
      const pick = document.createElement("td");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.dataset.messageId = message.messageId;
      box.checked = ticked.has(message.messageId);
      box.setAttribute("aria-label", `select ${message.messageId}`);
      pick.appendChild(box);
      row.appendChild(pick);
      for (const [value, className] of [
        [message.rejectReason, "reason"],
        [message.rejectDetail, "detail"],
        [message.receiveCount, "receives"],
        [message.ageSeconds, "age"],
        [message.bodyPreview, "body"],
      ]) {
        const cell = document.createElement("td");
        cell.className = className;
        text(cell, value);
        row.appendChild(cell);
      }
      return row;
    });
    $("tbody", node).replaceChildren(...rows);
    text(status, `${body.messages.length} message(s)${body.truncated ? " (first 200)" : ""}`);
    // The walk stopped while SQS still counted messages it had not reached: the table is not the whole DLQ.
    notice.hidden = body.complete !== false || body.truncated;
    text(
      notice,
      notice.hidden
        ? ""
        : `Incomplete: SQS still counts about ${body.visibleLeft} visible message(s) this list did not reach. ` +
            "Refresh to look again.",
    );
  }

  async function act(action, payload, confirmText) {
    if (confirmText && !window.confirm(confirmText)) return;
    text(status, `${action}…`);
    let outcome;
    try {
      const result = await post(`${base}/${action}`, payload);
      outcome = `${action}: ${result.done} done, ${result.failed.length} failed, ${result.notFound.length} not found`;
      // A copy the worker rejected again came back under a new id; it is left in the DLQ, never redriven again.
      for (const back of result.rejectedAgain || []) {
        outcome += `; rejected again: ${back.reason ?? "-"} (${back.messageId})`;
      }
      // The destination is always this DLQ's queue; a message naming another queue is left in the DLQ.
      for (const refused of result.refused || []) {
        outcome += `; refused ${refused.messageId}: its sourceQueue ${refused.sourceQueue} is not ${refused.destination}`;
      }
      if (result.deadlineReached) {
        outcome += "; stopped at the time limit, run it again for the rest";
      }
      if (result.complete === false) {
        outcome += `; stopped early: SQS still counts about ${result.visibleLeft} message(s) not reached, run it again`;
      }
    } catch (error) {
      outcome = `${action} failed: ${error.message}`;
    }
    await refresh();
    // After the refresh, so the operator sees what the action did (failures and messages not found included).
    text(status, outcome);
  }

  $(".dlq-refresh", node).addEventListener("click", refresh);
  $(".dlq-select-all", node).addEventListener("change", (event) => {
    for (const box of node.querySelectorAll("tbody input[type=checkbox]")) box.checked = event.target.checked;
  });
  $(".dlq-redrive-selected", node).addEventListener("click", () => {
    const ids = selected();
    if (ids.length) act("redrive", { messageIds: ids });
  });
  $(".dlq-redrive-all", node).addEventListener("click", () =>
    act("redrive", { all: true }, "Redrive every message of this DLQ to its source queue?"));
  $(".dlq-delete-selected", node).addEventListener("click", () => {
    const ids = selected();
    if (ids.length) act("delete", { messageIds: ids }, `Delete ${ids.length} message(s) for good?`);
  });

  panel = {
    node,
    refresh,
    // Pushed samples say when the DLQ's content changed: list again then (once opened), not on a timer. The trigger
    // is the total (visible + in flight + delayed): a listing hides the messages it reads, which moves them from
    // visible to in flight without changing the total, so a listing never triggers the next one (each adds a receive).
    maybeRefresh(dlq) {
      const total = ["visible", "inFlight", "delayed"].reduce((sum, key) => sum + (Number(dlq[key]) || 0), 0);
      const changed = total !== lastTotal;
      lastTotal = total;
      if (!opened) {
        text(status, `${dlq.visible ?? "?"} visible message(s); List messages to see them`);
      } else if (changed) {
        refresh();
      }
    },
  };
  dlqPanels.set(queue.role, panel);
  return panel;
}

// ---------------------------------------------------------------------------------------------------------------
// Live updates

function render() {
  const latest = samples[samples.length - 1];
  if (!latest) return;
  text($("#updated"), `updated ${latest.t}`);
  renderThroughput(latest);
  renderQueues(latest);
  renderLatest(latest);
}

function connect() {
  const source = new EventSource("/console/events");
  const badge = $("#connection");
  source.addEventListener("open", () => {
    text(badge, "live");
    badge.className = "badge live";
  });
  source.addEventListener("error", () => {
    text(badge, "reconnecting…");
    badge.className = "badge down";
  });
  source.addEventListener("init", (event) => {
    samples.length = 0;
    samples.push(...JSON.parse(event.data).samples);
    render();
  });
  source.addEventListener("sample", (event) => {
    samples.push(JSON.parse(event.data));
    while (samples.length > HISTORY) samples.shift();
    render();
  });
}

document.addEventListener("DOMContentLoaded", async () => {
  $("#tracking-close").addEventListener("click", () => {
    $("#tracking").hidden = true;
  });
  $("#logout-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await post("/console/logout", {});
    } finally {
      window.location.assign("/console/login");
    }
  });
  await session();
  connect();
});
