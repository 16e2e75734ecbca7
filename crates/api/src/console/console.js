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
// Charts: SVG polylines over the last 15 minutes, with a time axis and a value axis. The viewBox is the element's own
// size in pixels, so labels are never stretched; lines differ in width and dash, so equal values never hide one another.

const SVG = "http://www.w3.org/2000/svg";
const MARGIN = { left: 44, right: 8, top: 6, bottom: 18 };
const SAMPLE_SECONDS = 5;

function svgElement(name, attributes, content) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (content !== undefined) element.textContent = content;
  return element;
}

// A round upper bound for the value axis: 1, 2 or 5 times a power of ten.
function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function label(value) {
  return Number.isInteger(value) ? String(value) : value.toFixed(value < 10 ? 1 : 0);
}

function clock(date) {
  return date.toISOString().slice(11, 16);
}

// Charts take their size from the page: redraw one when its size changes (a scroll bar appearing, a resize).
const resized = new ResizeObserver(() => render());

function drawChart(svg, series, unit) {
  if (!svg.dataset.observed) {
    svg.dataset.observed = "true";
    resized.observe(svg);
  }
  const width = Math.max(svg.clientWidth || 600, 200);
  const height = Math.max(svg.clientHeight || 100, 60);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.dataset.baseline = String(height - MARGIN.bottom);
  const plot = {
    x: MARGIN.left,
    y: MARGIN.top,
    w: width - MARGIN.left - MARGIN.right,
    h: height - MARGIN.top - MARGIN.bottom,
  };
  let max = 0;
  for (const s of series) for (const v of s.values) if (typeof v === "number" && v > max) max = v;
  max = niceMax(max);
  const children = [];
  // Value axis: 0, half and the top, with grid lines.
  for (const fraction of [0, 0.5, 1]) {
    const y = plot.y + plot.h - fraction * plot.h;
    children.push(svgElement("line", { x1: plot.x, x2: plot.x + plot.w, y1: y, y2: y, class: "grid" }));
    children.push(
      svgElement("text", { x: plot.x - 4, y: y + 4, class: "axis", "text-anchor": "end" }, label(max * fraction)),
    );
  }
  children.push(svgElement("text", { x: plot.x + 4, y: plot.y + 10, class: "axis unit" }, unit));
  // Time axis: every 5 minutes back from the newest sample's time (UTC).
  const newest = samples.length ? Date.parse(samples[samples.length - 1].t) : Date.now();
  const step = plot.w / (HISTORY - 1);
  for (let back = 0; back <= HISTORY - 1; back += 60) {
    const x = plot.x + plot.w - back * step;
    const when = Number.isNaN(newest) ? "" : clock(new Date(newest - back * SAMPLE_SECONDS * 1000));
    children.push(svgElement("line", { x1: x, x2: x, y1: plot.y, y2: plot.y + plot.h, class: "grid" }));
    children.push(svgElement("text", { x, y: height - 4, class: "axis", "text-anchor": back ? "middle" : "end" }, when));
  }
  series.forEach((s, index) => {
    const points = [];
    s.values.forEach((v, i) => {
      if (typeof v !== "number") return;
      const x = plot.x + (i + HISTORY - s.values.length) * step;
      const y = plot.y + plot.h - (v / max) * plot.h;
      points.push(`${x.toFixed(1)},${y.toFixed(1)}`);
    });
    const line = svgElement("polyline", { points: points.join(" "), class: `s${index}` });
    line.appendChild(svgElement("title", {}, s.name));
    children.push(line);
  });
  svg.replaceChildren(...children);
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
      const latest = [...s.values].reverse().find((v) => typeof v === "number");
      item.textContent = `${s.name}: ${latest === undefined ? "–" : label(latest)}`;
      return item;
    }),
  );
  const scale = document.createElement("span");
  scale.textContent = "last 15 min, UTC";
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
    ], "messages");
    if (queue.dlq) {
      text($(".dlq-name", node), `DLQ: ${queue.dlq.name}`);
      text($(".d-visible", node), queue.dlq.visible);
      text($(".d-inflight", node), queue.dlq.inFlight);
      text($(".d-delayed", node), queue.dlq.delayed);
      drawChart($(".d-chart", node), [
        { name: "DLQ visible", values: history.map((q) => (q.dlq || {}).visible) },
      ], "messages");
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
  ], "orders/s");
}

function renderLatest(latest) {
  if (!Array.isArray(latest.latest)) return;
  const body = $("#latest tbody");
  const rows = latest.latest.map((order) => {
    const row = document.createElement("tr");
    row.dataset.pedidoId = order.pedidoId;
    const envio = order.envio ? `${order.envio.trackingCode} (${order.envio.estado})` : "pending";
    cells(row, [orderLink(order.pedidoId), order.version, order.estado, order.total, envio, order.actualizadoEn]);
    return row;
  });
  body.replaceChildren(...rows);
}

// ---------------------------------------------------------------------------------------------------------------
// Finding an order: by pedidoId (its path through the pipeline) or by clienteId (the customer's orders)

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
let customerCursor = null;
let customerId = null;

function cells(row, values) {
  for (const value of values) {
    const cell = document.createElement("td");
    if (value instanceof Node) cell.appendChild(value);
    else text(cell, value);
    row.appendChild(cell);
  }
}

function orderLink(pedidoId) {
  const link = document.createElement("a");
  link.className = "order";
  link.textContent = pedidoId;
  link.addEventListener("click", () => openOrder(pedidoId));
  return link;
}

function seconds(ms) {
  return typeof ms === "number" ? `${(ms / 1000).toFixed(3)} s` : "";
}

async function getJson(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  return { status: response.status, body };
}

async function openOrder(pedidoId) {
  const section = $("#order-view");
  const { status, body } = await getJson(`/console/api/pedidos/${encodeURIComponent(pedidoId)}`);
  if (status !== 200) {
    text($("#search-status"), status === 404 ? `no stored order ${pedidoId}` : `could not read ${pedidoId}: ${status}`);
    return false;
  }
  section.hidden = false;
  section.dataset.pedidoId = body.pedidoId;
  text($("#order-id"), body.pedidoId);
  const summary = [
    ["clienteId", body.clienteId],
    ["client", body.clienteApi ?? "(none: created without API keys)"],
    ["estado", body.estado],
    ["version", body.version],
    ["total", body.total],
    ["fecha", body.fecha],
    ["shipment", body.trackingCode ?? "not created yet"],
  ];
  $("#order-summary").replaceChildren(
    ...summary.flatMap(([name, value]) => {
      const term = document.createElement("dt");
      term.textContent = name;
      const detail = document.createElement("dd");
      text(detail, value);
      return [term, detail];
    }),
  );
  const rows = body.steps.map((step) => {
    const row = document.createElement("tr");
    row.className = `step-${step.kind}`;
    let trace = step.traceId ?? "";
    if (step.traceUrl) {
      trace = document.createElement("a");
      trace.href = step.traceUrl; // built by the server from TRACE_URL_TEMPLATE and a checked trace id
      trace.rel = "noopener noreferrer";
      trace.target = "_blank";
      trace.textContent = step.traceId;
    }
    cells(row, [
      step.at,
      step.kind,
      step.version,
      seconds(step.delayMs),
      step.requestId,
      step.client,
      step.messageId,
      trace,
    ]);
    return row;
  });
  $("#timeline tbody").replaceChildren(...rows);
  text(
    $("#order-note"),
    body.versionsNotListed
      ? `${body.versionsNotListed} earlier version(s) were applied but are no longer in the stored history.`
      : "",
  );
  $("#order-dlq-messages").hidden = true;
  text($("#order-dlq-status"), "");
  section.scrollIntoView({ block: "nearest" });
  return true;
}

async function listCustomer(clienteId, cursor) {
  const query = cursor ? `?cursor=${encodeURIComponent(cursor)}` : "";
  const { status, body } = await getJson(`/console/api/clientes/${encodeURIComponent(clienteId)}/pedidos${query}`);
  if (status !== 200) {
    text($("#search-status"), `could not list customer ${clienteId}: ${status}`);
    return 0;
  }
  const table = $("#customer-orders");
  const rows = body.pedidos.map((order) => {
    const row = document.createElement("tr");
    cells(row, [
      orderLink(order.pedidoId),
      order.version,
      order.estado,
      order.total,
      order.fecha,
      order.clienteApi ?? "",
      order.actualizadoEn,
    ]);
    return row;
  });
  if (cursor) $("tbody", table).append(...rows);
  else $("tbody", table).replaceChildren(...rows);
  table.hidden = $("tbody", table).children.length === 0;
  customerId = clienteId;
  customerCursor = body.nextCursor;
  $("#customer-more").hidden = !customerCursor;
  return body.pedidos.length;
}

async function search(event) {
  event.preventDefault();
  const value = $("#search-input").value.trim();
  $("#customer-orders").hidden = true;
  $("#customer-more").hidden = true;
  if (!UUID.test(value)) {
    text($("#search-status"), "enter a pedidoId or a clienteId (a UUID)");
    return;
  }
  text($("#search-status"), "looking…");
  if (await openOrder(value)) {
    text($("#search-status"), "order found");
    return;
  }
  const found = await listCustomer(value, null);
  text($("#search-status"), found ? `orders of customer ${value}` : `no order and no customer ${value}`);
}

// Lists each DLQ once (one more receive per message listed) and keeps the messages about this order.
async function orderInDlqs() {
  const pedidoId = $("#order-view").dataset.pedidoId;
  const status = $("#order-dlq-status");
  text(status, "reading the DLQs…");
  const rows = [];
  for (const role of queueCards.keys()) {
    const { status: code, body } = await getJson(`/console/api/dlq/${encodeURIComponent(role)}`);
    if (code !== 200) {
      rows.push(null);
      continue;
    }
    for (const message of body.messages.filter((m) => m.pedidoId === pedidoId)) {
      const row = document.createElement("tr");
      cells(row, [role, message.rejectReason, message.rejectDetail, message.receiveCount, message.messageId]);
      rows.push(row);
    }
  }
  const found = rows.filter((row) => row !== null);
  $("#order-dlq-messages tbody").replaceChildren(...found);
  $("#order-dlq-messages").hidden = found.length === 0;
  const failed = rows.length - found.length;
  text(status, `${found.length} DLQ message(s) of this order${failed ? `; ${failed} DLQ(s) could not be read` : ""}`);
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
  $("#order-close").addEventListener("click", () => {
    $("#order-view").hidden = true;
  });
  $("#search-form").addEventListener("submit", search);
  $("#customer-more").addEventListener("click", () => listCustomer(customerId, customerCursor));
  $("#order-dlq").addEventListener("click", orderInDlqs);
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
