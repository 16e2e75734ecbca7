// The worker's live page: outcome lines from /events (Server-Sent Events) in a table of the latest MAX_ROWS, with the
// counters since start. Every value that comes from the server is inserted with textContent (or as a property such as
// `title`), never parsed as markup: a message's body, request id or note is attacker-controlled text.
'use strict';

(function () {
  const MAX_ROWS = 500;
  const OUTCOMES = ['processed', 'duplicate', 'stale', 'ignored', 'rejected', 'failed', 'released'];
  const PROBLEMS = ['rejected', 'failed', 'released'];
  // Column order of the table, and where each value comes from.
  const COLUMNS = [
    ['time', (l) => (typeof l.time === 'string' ? l.time.slice(11, 23) : '')],
    ['outcome', (l) => l.outcome],
    ['action', (l) => l.action],
    ['pedido', (l) => l.pedidoId],
    ['version', (l) => l.version],
    ['type', (l) => l.type],
    ['receives', (l) => l.receiveCount],
    ['request', (l) => l.requestId],
    ['reason', (l) => l.reason],
    ['note', (l) => (l.retryInSeconds != null ? l.note + ' (retry in ' + l.retryInSeconds + ' s)' : l.note)],
    ['message', (l) => l.messageId],
  ];

  const $ = (id) => document.getElementById(id);
  const rows = $('rows');
  const search = $('search');
  const shown = new Set(OUTCOMES);
  const countCells = new Map();
  // Newest first: { line, tr } for outcome lines, { tr } for notices.
  let entries = [];
  let paused = false;
  let held = [];

  function text(value) {
    return value === null || value === undefined ? '' : String(value);
  }

  function known(outcome) {
    return OUTCOMES.includes(outcome) ? outcome : 'unknown';
  }

  // Outcome checkboxes with their counters, built once.
  for (const outcome of OUTCOMES) {
    const label = document.createElement('label');
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.checked = true;
    box.value = outcome;
    box.addEventListener('change', () => {
      if (box.checked) shown.add(outcome); else shown.delete(outcome);
      refilter();
    });
    const name = document.createElement('span');
    name.textContent = outcome;
    const count = document.createElement('span');
    count.className = 'count';
    count.textContent = '0';
    countCells.set(outcome, count);
    label.append(box, name, count);
    $('outcomes').append(label);
  }

  function setShown(outcomes) {
    shown.clear();
    for (const o of outcomes) shown.add(o);
    for (const box of $('outcomes').querySelectorAll('input[type="checkbox"]')) box.checked = shown.has(box.value);
    refilter();
  }

  $('show-all').addEventListener('click', () => setShown(OUTCOMES));
  $('show-problems').addEventListener('click', () => setShown(PROBLEMS));
  $('show-none').addEventListener('click', () => setShown([]));
  search.addEventListener('input', refilter);
  $('clear').addEventListener('click', () => {
    entries = [];
    held = [];
    rows.replaceChildren();
    updateShown();
  });
  $('pause').addEventListener('click', () => {
    paused = !paused;
    $('pause').textContent = paused ? 'resume' : 'pause';
    if (!paused) {
      const lines = held;
      held = [];
      for (const line of lines) add(line);
    }
    updateShown();
  });

  function matches(line) {
    if (!shown.has(known(line.outcome))) return false;
    const needle = search.value.trim().toLowerCase();
    if (!needle) return true;
    return [line.pedidoId, line.requestId, line.messageId, line.reason, line.note]
      .some((v) => text(v).toLowerCase().includes(needle));
  }

  function refilter() {
    for (const entry of entries) {
      if (entry.line) entry.tr.hidden = !matches(entry.line);
    }
    updateShown();
  }

  function updateShown() {
    const total = entries.filter((e) => e.line).length;
    const visible = entries.filter((e) => e.line && !e.tr.hidden).length;
    let summary = visible + ' of ' + total + ' lines shown';
    if (paused) summary += '; paused, ' + held.length + ' waiting';
    $('shown').textContent = summary;
  }

  function prepend(entry) {
    rows.prepend(entry.tr);
    entries.unshift(entry);
    while (entries.length > MAX_ROWS) entries.pop().tr.remove();
  }

  function add(line) {
    const tr = document.createElement('tr');
    tr.className = 'o-' + known(line.outcome);
    for (const [name, value] of COLUMNS) {
      const td = document.createElement('td');
      td.className = name;
      td.textContent = text(value(line));
      // Cells may be cut to fit the window: the full value is in the tooltip (an attribute, never markup).
      td.title = name === 'time' ? text(line.time) : td.textContent;
      tr.append(td);
    }
    tr.hidden = !matches(line);
    prepend({ line, tr });
    updateShown();
  }

  function notice(message) {
    const tr = document.createElement('tr');
    tr.className = 'notice';
    const td = document.createElement('td');
    td.colSpan = COLUMNS.length;
    td.textContent = new Date().toISOString().slice(11, 23) + ' ' + message;
    tr.append(td);
    prepend({ tr });
  }

  function setText(id, value, state) {
    const el = $(id);
    el.textContent = text(value);
    if (state !== undefined) el.className = state;
  }

  function seconds(value) {
    if (value === null || value === undefined) return '-';
    const s = Number(value);
    if (s < 120) return s.toFixed(s < 10 ? 1 : 0) + ' s';
    if (s < 7200) return (s / 60).toFixed(1) + ' min';
    return (s / 3600).toFixed(1) + ' h';
  }

  function counters(c) {
    const outcomes = c.outcomes || {};
    for (const [outcome, cell] of countCells) cell.textContent = text(outcomes[outcome] ?? 0);
    setText('role', c.role);
    const queue = c.queue || {};
    setText('queue-url', queue.url);
    setText('health', c.status, c.status === 'ok' ? 'ok' : 'bad');
    setText('store', c.store, c.store === 'ok' ? 'ok' : 'bad');
    setText('in-flight', c.inFlight);
    setText('q-visible', queue.visible ?? '-');
    setText('q-in-flight', queue.inFlight ?? '-');
    setText('q-delayed', queue.delayed ?? '-');
    setText('q-oldest', seconds(queue.oldestAgeSeconds));
    setText('uptime', seconds(c.uptimeSeconds));
  }

  function parse(event) {
    try {
      return JSON.parse(event.data);
    } catch (e) {
      return null;
    }
  }

  function connection(state, label) {
    const el = $('connection');
    el.textContent = label;
    el.className = 'connection ' + state;
  }

  const source = new EventSource('events');
  source.addEventListener('open', () => connection('live', 'live'));
  source.addEventListener('error', () => connection('down', 'reconnecting'));
  source.addEventListener('outcome', (event) => {
    const line = parse(event);
    if (!line) return;
    if (paused) {
      held.push(line);
      if (held.length > MAX_ROWS) held.shift();
      updateShown();
    } else {
      add(line);
    }
  });
  source.addEventListener('counters', (event) => {
    const c = parse(event);
    if (c) counters(c);
  });
  source.addEventListener('lagged', (event) => {
    const lagged = parse(event);
    const skipped = lagged ? text(lagged.skipped) : 'some';
    notice(skipped + ' lines skipped: this page fell behind the worker (the counters above still include them)');
  });
  updateShown();
})();
