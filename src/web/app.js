// Service Nanny's web dashboard: plain JavaScript, no build step, nothing from elsewhere.
// Every piece of data comes from the daemon's API, called with the token (when the daemon has
// one) in an `Authorization` header; one event stream per tab keeps the page live.
'use strict';

const TOKEN_KEY = 'nanny.token';
const STATES = ['failed', 'unhealthy', 'backoff', 'starting', 'stopping', 'running', 'stopped'];
const HAS_PROCESS = new Set(['starting', 'running', 'unhealthy', 'stopping', 'backoff']);
const LIST_KINDS = new Set(['discovered', 'removed', 'manifest_changed', 'invalid', 'daemon_started']);
const LOG_LIMIT = 2000;
const POLL_MS = 5000;
const STREAM_SILENCE_MS = 40000;

const $ = (id) => document.getElementById(id);

/** Everything the page knows. */
const state = {
  token: localStorage.getItem(TOKEN_KEY) || '',
  epoch: 0, // bumped when the page (re)starts; older loops stop
  services: new Map(), // name -> {summary, status, fetchedAt, tbody, op, message}
  invalid: [],
  lastEventId: null,
  sort: { key: 'name', dir: 1 },
  detail: null, // {name, tab, ctrl, paused, buffer}
  gpuHolders: new Set(), // the services that hold a GPU now (their rows are marked)
  gpuQueued: false, // someone waits for a GPU: the panel is re-read every second
};

// ---------------------------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------------------------

class NeedToken extends Error {}

function headers(extra) {
  const h = Object.assign({}, extra);
  if (state.token) h.Authorization = 'Bearer ' + state.token;
  return h;
}

/** `fetch` with the token; a 401 brings the token form back. Answers `{status, body}`. */
async function api(path, { method = 'GET', body, signal } = {}) {
  const init = { method, headers: headers(), cache: 'no-store', signal };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (res.status === 401) {
    askForToken(state.token ? 'The token was refused. Paste the current one.' : '');
    throw new NeedToken('token wanted');
  }
  const text = await res.text();
  let parsed = text;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch (_) {
    /* not JSON: keep the text */
  }
  return { status: res.status, body: parsed };
}

async function getJson(path) {
  const { status, body } = await api(path);
  if (status !== 200) throw new Error(`GET ${path}: ${status} ${body && body.detail ? body.detail : ''}`);
  return body;
}

const enc = encodeURIComponent;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// Token form
// ---------------------------------------------------------------------------------------------

function askForToken(message) {
  state.epoch++;
  if (state.streamCtrl) state.streamCtrl.abort();
  stopDetailStream();
  $('app').hidden = true;
  $('rediscover').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message || '';
  $('forget').hidden = !state.token;
  setConn('token', 'token needed');
  $('token').focus();
}

$('login').addEventListener('submit', async (e) => {
  e.preventDefault();
  const token = $('token').value.trim();
  if (!token) return;
  state.token = token;
  let res;
  try {
    res = await fetch('/services', { headers: headers(), cache: 'no-store' });
  } catch (err) {
    $('login-error').textContent = 'The daemon does not answer: ' + err.message;
    return;
  }
  if (res.status === 401) {
    $('login-error').textContent = 'That token was refused.';
    return;
  }
  localStorage.setItem(TOKEN_KEY, token);
  $('token').value = '';
  begin();
});

$('forget').addEventListener('click', () => {
  localStorage.removeItem(TOKEN_KEY);
  state.token = '';
  askForToken('The token is forgotten by this browser.');
});

// ---------------------------------------------------------------------------------------------
// Start-up and the event stream
// ---------------------------------------------------------------------------------------------

async function begin() {
  const epoch = ++state.epoch;
  $('login').hidden = true;
  setConn('connecting', 'connecting…');
  try {
    const last = await getJson('/events?limit=1');
    state.lastEventId = last.last_id == null ? 0 : last.last_id;
    await loadList();
  } catch (err) {
    if (err instanceof NeedToken) return;
    setConn('down', 'daemon unreachable');
    notice('Cannot reach the daemon: ' + err.message);
    await sleep(3000);
    if (epoch === state.epoch) begin();
    return;
  }
  $('app').hidden = false;
  $('rediscover').hidden = false;
  $('forget').hidden = !state.token;
  health();
  refreshGpu();
  streamEvents(epoch);
  poll(epoch);
  pollGpu(epoch);
}

function setConn(kind, text) {
  const el = $('conn');
  el.dataset.state = kind;
  el.textContent = text;
}

/** One event stream for the tab: `fetch` (so the token goes in a header), parsed here, and
 * resumed with `Last-Event-ID` after a drop, so no event is missed. */
async function streamEvents(epoch) {
  let delay = 250;
  let dropped = false;
  while (epoch === state.epoch) {
    const ctrl = new AbortController();
    state.streamCtrl = ctrl;
    try {
      const h = headers({ Accept: 'text/event-stream' });
      if (state.lastEventId != null) h['Last-Event-ID'] = String(state.lastEventId);
      const res = await fetch('/events/stream', { headers: h, cache: 'no-store', signal: ctrl.signal });
      if (res.status === 401) {
        askForToken('The token was refused. Paste the current one.');
        return;
      }
      if (!res.ok) throw new Error('HTTP ' + res.status);
      setConn('live', 'live');
      delay = 250;
      if (dropped) {
        // The daemon may have restarted: what is not an event (usage, invalid files) is re-read.
        loadList().catch(() => {});
        health();
      }
      await readEvents(res.body, epoch, ctrl);
      throw new Error('the stream ended');
    } catch (err) {
      if (epoch !== state.epoch) return;
      dropped = true;
      setConn('reconnecting', 'reconnecting…');
      await sleep(delay);
      delay = Math.min(delay * 2, 4000);
    }
  }
}

/** Server-Sent Events from a response body: `id:`, `event:`, `data:` lines, blank-line ended. */
async function readEvents(body, epoch, ctrl) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let silent = null;
  for (;;) {
    // The daemon sends a comment every 15 s: a stream silent for 40 s is dead, though not closed.
    clearTimeout(silent);
    silent = setTimeout(() => ctrl.abort(), STREAM_SILENCE_MS);
    let chunk;
    try {
      chunk = await reader.read();
    } finally {
      clearTimeout(silent);
    }
    const { value, done } = chunk;
    if (done || epoch !== state.epoch) return;
    buf += value.replace(/\r/g, '');
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let id = null;
      const data = [];
      for (const line of block.split('\n')) {
        if (!line || line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let v = colon < 0 ? '' : line.slice(colon + 1);
        if (v.startsWith(' ')) v = v.slice(1);
        if (field === 'id') id = v;
        else if (field === 'data') data.push(v);
      }
      if (data.length) {
        try {
          onEvent(JSON.parse(data.join('\n')));
        } catch (err) {
          console.error('bad event', err);
        }
      }
      if (id !== null) state.lastEventId = id;
    }
  }
}

const pendingRows = new Set();
let rowTimer = null;
let listTimer = null;
let gpuTimer = null;

function onEvent(ev) {
  if (ev.service) {
    pendingRows.add(ev.service);
    if (!rowTimer) rowTimer = setTimeout(flushRows, 60);
  }
  if (!ev.service || LIST_KINDS.has(ev.kind)) {
    clearTimeout(listTimer);
    listTimer = setTimeout(() => loadList().catch(() => {}), 100);
  }
  clearTimeout(gpuTimer);
  gpuTimer = setTimeout(refreshGpu, 150);
  if (state.detail && ev.service === state.detail.name) addTimeline(ev, true);
}

/** A start queued for the GPU makes no event until it is placed or gives up: the GPU panel is
 * re-read every 2 s, every second while someone waits. */
async function pollGpu(epoch) {
  while (epoch === state.epoch) {
    await sleep(state.gpuQueued ? 1000 : 2000);
    if (!document.hidden && epoch === state.epoch) await refreshGpu();
  }
}

function flushRows() {
  rowTimer = null;
  const names = [...pendingRows];
  pendingRows.clear();
  for (const name of names) refreshRow(name);
}

/** Usage and health change without events: re-read them while the tab is visible. */
async function poll(epoch) {
  while (epoch === state.epoch) {
    await sleep(POLL_MS);
    if (document.hidden || epoch !== state.epoch) continue;
    try {
      await loadList();
      await Promise.all(
        [...state.services.values()]
          .filter((s) => s.status && HAS_PROCESS.has(s.status.status) && !s.op)
          .map((s) => refreshRow(s.summary.name)),
      );
    } catch (_) {
      /* the stream shows the connection state */
    }
  }
}

async function health() {
  try {
    const h = await getJson('/health');
    $('daemon').textContent = `v${h.version} · ${h.services_dir}`;
    state.health = h;
  } catch (_) {
    /* shown elsewhere */
  }
}

// ---------------------------------------------------------------------------------------------
// The services
// ---------------------------------------------------------------------------------------------

async function loadList() {
  const list = await getJson('/services');
  const seen = new Set();
  const fresh = [];
  for (const summary of list.services) {
    seen.add(summary.name);
    let s = state.services.get(summary.name);
    if (!s) {
      s = { summary, status: null, fetchedAt: 0, tbody: makeRow(summary.name), op: null, message: null };
      state.services.set(summary.name, s);
      fresh.push(summary.name);
    }
    s.summary = summary;
    renderRow(summary.name);
  }
  for (const [name, s] of state.services) {
    if (!seen.has(name)) {
      s.tbody.remove();
      state.services.delete(name);
      if (state.detail && state.detail.name === name) closeDetail();
    }
  }
  state.invalid = list.invalid || [];
  renderInvalid();
  renderTags();
  await Promise.all(fresh.map(refreshRow));
  arrange();
}

async function refreshRow(name) {
  const s = state.services.get(name);
  if (!s) {
    clearTimeout(listTimer);
    listTimer = setTimeout(() => loadList().catch(() => {}), 100);
    return;
  }
  try {
    const { status, body } = await api(`/services/${enc(name)}/status`);
    if (status === 404) {
      loadList().catch(() => {});
      return;
    }
    if (status !== 200) return;
    const before = s.status && s.status.status;
    s.status = body;
    s.fetchedAt = performance.now();
    if (!s.op && body.status === 'failed' && before !== 'failed') showFailure(name, body);
    if (!s.op && before === 'failed' && body.status !== 'failed' && s.message && s.message.kind === 'failure') {
      s.message = null;
    }
    renderRow(name);
    if (before && before !== body.status) {
      s.tbody.classList.remove('changed');
      void s.tbody.offsetWidth; // restart the animation
      s.tbody.classList.add('changed');
      if (state.sort.key === 'status') arrange();
    }
  } catch (err) {
    if (!(err instanceof NeedToken)) console.warn(name, err);
  }
}

/** A failure seen without a click (a crash, a restart policy giving up): why, and the last lines. */
async function showFailure(name, status) {
  const s = state.services.get(name);
  let lines = [];
  try {
    const logs = await getJson(`/services/${enc(name)}/logs?tail=8`);
    lines = logs.lines.map((l) => l.line);
  } catch (_) {
    /* the reason alone */
  }
  if (s.status && s.status.status === 'failed' && !s.op) {
    s.message = { kind: 'failure', text: 'Failed: ' + (status.last_error || 'it exited'), lines };
    renderRow(name);
  }
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** A service's rows: built once, then only their texts change (no layout jump, focus kept). */
function makeRow(name) {
  const tbody = el('tbody', 'svc');
  tbody.dataset.name = name;
  const tr = el('tr', 'main');
  const cell = (cls, label) => {
    const td = el('td', cls);
    td.dataset.label = label;
    tr.append(td);
    return td;
  };
  const nameCell = cell('name', 'Service');
  const open = el('button', 'link open', name);
  open.type = 'button';
  open.dataset.action = 'details';
  open.title = `Logs, timeline and manifest of ${name}`;
  nameCell.append(open, el('div', 'desc muted'), el('div', 'meta'));
  const statusCell = cell('status', 'Status');
  statusCell.append(el('span', 'dot'), el('span', 'word'), el('div', 'sub muted'));
  cell('health', 'Health').append(el('span', 'code'), el('div', 'sub muted'));
  cell('uptime num', 'Uptime');
  cell('restarts num', 'Restarts');
  cell('gpu', 'GPU');
  cell('cpu num', 'CPU');
  cell('mem num', 'Memory');
  const actions = cell('actions', '');
  for (const [action, label] of [['start', 'Start'], ['stop', 'Stop'], ['restart', 'Restart']]) {
    const b = el('button', 'act ' + action, label);
    b.type = 'button';
    b.dataset.action = action;
    b.setAttribute('aria-label', `${label} ${name}`);
    actions.append(b);
  }
  const msgRow = el('tr', 'msg');
  msgRow.hidden = true;
  const msgCell = el('td');
  msgCell.colSpan = 9;
  msgRow.append(msgCell);
  tbody.append(tr, msgRow);
  tbody.addEventListener('click', (e) => {
    const b = e.target.closest('button[data-action]');
    if (b && !b.disabled) act(name, b.dataset.action);
  });
  $('services').append(tbody);
  return tbody;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function renderRow(name) {
  const s = state.services.get(name);
  if (!s) return;
  const { summary: m, status: st, tbody } = s;
  const q = (sel) => tbody.querySelector(sel);
  const word = st ? st.status : m.status;
  tbody.dataset.status = word;
  setText(q('.desc'), m.description || '');
  const meta = q('.meta');
  meta.replaceChildren();
  const runtime = m.runtime === 'compose' && st && st.containers.length
    ? `compose: ${st.containers.join(', ')}` : m.runtime;
  meta.append(el('span', 'runtime', runtime));
  for (const tag of m.tags) meta.append(el('span', 'tag', tag));
  if (m.pending_change) meta.append(el('span', 'pending', 'manifest changed: restart to apply'));

  setText(q('.status .word'), word);
  let sub = '';
  if (st) {
    if (word === 'starting') sub = st.stage || '';
    else if (st.next) sub = st.next;
    else if (word === 'failed' || word === 'unhealthy') sub = st.last_error || '';
    else if (st.pid) sub = 'pid ' + st.pid;
  }
  setText(q('.status .sub'), sub);
  q('.status .sub').title = sub;

  const h = st && st.last_health && HAS_PROCESS.has(word) ? st.last_health : null;
  const code = q('.health .code');
  if (h) {
    setText(code, `${h.http_code != null ? h.http_code : h.ok ? 'ok' : 'fail'} · ${fmtMs(h.latency_ms)}`);
    code.className = 'code ' + (h.ok ? 'ok' : 'bad');
    code.title = h.message || '';
  } else {
    setText(code, m.health_endpoint ? '—' : 'no check');
    code.className = 'code muted';
    code.title = m.health_endpoint || 'running once it stays up';
  }
  q('.health .sub').dataset.at = h ? h.at : '';

  setText(q('.restarts'), st ? String(st.restarts) : '');
  setText(q('.gpu'), m.gpu_required ? `GPU · ${fmtGb(m.vram_gb)}` : '—');
  q('.gpu').classList.toggle('holds', state.gpuHolders.has(name));
  const cpu = st && st.cpu_percent != null ? st.cpu_percent : m.cpu_percent;
  const mem = st && st.memory_bytes != null ? st.memory_bytes : m.memory_bytes;
  setText(q('.cpu'), cpu != null && HAS_PROCESS.has(word) ? `${cpu.toFixed(cpu < 10 ? 1 : 0)} %` : '—');
  setText(q('.mem'), mem != null && HAS_PROCESS.has(word) ? fmtBytes(mem) : '—');

  const busy = !!s.op;
  q('button.start').disabled = busy || ['running', 'starting', 'unhealthy', 'stopping'].includes(word);
  q('button.stop').disabled = busy || word === 'stopped';
  q('button.restart').disabled = busy || word === 'stopping';
  tick(s);
  renderMessage(s);
  filterRow(s);
}

/** What changes with the clock alone: uptime and how long ago the last check ran. */
function tick(s) {
  const st = s.status;
  const up = s.tbody.querySelector('.uptime');
  if (st && st.uptime_seconds != null && HAS_PROCESS.has(st.status)) {
    setText(up, fmtDuration(st.uptime_seconds + (performance.now() - s.fetchedAt) / 1000));
  } else {
    setText(up, '—');
  }
  const ago = s.tbody.querySelector('.health .sub');
  setText(ago, ago.dataset.at ? 'checked ' + fmtAgo(ago.dataset.at) : '');
}

setInterval(() => {
  for (const s of state.services.values()) tick(s);
}, 1000);

function renderMessage(s) {
  const row = s.tbody.querySelector('tr.msg');
  const td = row.firstChild;
  const msg = s.op ? progressMessage(s) : s.message;
  row.hidden = !msg;
  if (!msg) {
    td.replaceChildren();
    return;
  }
  const key = JSON.stringify(msg);
  if (td.dataset.key === key) return;
  td.dataset.key = key;
  const box = el('div', 'message ' + msg.kind);
  box.setAttribute('role', msg.kind === 'progress' ? 'status' : 'alert');
  if (msg.steps) {
    const ol = el('ol', 'steps');
    msg.steps.forEach((step, i) => {
      const li = el('li', i < msg.at ? 'done' : i === msg.at ? 'current' : '', step);
      if (i === msg.at) li.setAttribute('aria-current', 'step');
      ol.append(li);
    });
    box.append(ol);
  }
  if (msg.text) box.append(el('p', 'text', msg.text));
  if (msg.lines && msg.lines.length) box.append(el('pre', 'lines', msg.lines.join('\n')));
  for (const b of msg.buttons || []) {
    const button = el('button', b.cls || '', b.label);
    button.type = 'button';
    button.dataset.action = b.action;
    box.append(button);
  }
  td.replaceChildren(box);
}

function progressMessage(s) {
  const st = s.status;
  if (s.op === 'stop') return { kind: 'progress', text: 'Stopping…' };
  const steps = ['starting', 'waiting for health', 'running'];
  let at = 0;
  if (st && st.status === 'running') at = 2;
  else if (st && st.status === 'starting' && /health|confirm/.test(st.stage || '')) at = 1;
  const stage = st && st.status === 'starting' && st.stage && at === 0 ? st.stage : '';
  const verb = s.op === 'restart' ? 'Restarting' : 'Starting';
  if (s.waiting && at === 0 && !stage) return { kind: 'progress', steps, at, text: 'Waiting for room on the GPU…' };
  return { kind: 'progress', steps, at, text: stage ? `${verb}: ${stage}` : '' };
}

function notice(text) {
  const n = $('notice');
  n.textContent = text;
  n.hidden = !text;
}

// ---------------------------------------------------------------------------------------------
// Actions
// ---------------------------------------------------------------------------------------------

async function act(name, action) {
  if (action === 'details') return openDetail(name);
  if (action === 'dismiss') {
    state.services.get(name).message = null;
    return renderRow(name);
  }
  if (action === 'force' || action === 'wait') {
    const s = state.services.get(name);
    return run(name, (s.message && s.message.op) || 'start', action);
  }
  return run(name, action, null);
}

/** `how`: null, 'force' (stop whoever the answer named) or 'wait' (queue for the GPU). */
async function run(name, op, how) {
  const s = state.services.get(name);
  s.op = op;
  s.waiting = how === 'wait';
  s.message = null;
  renderRow(name);
  if (s.waiting) {
    state.gpuQueued = true;
    setTimeout(refreshGpu, 300);
  }
  // The stage of a start in progress: followed until the answer comes.
  let watching = true;
  const watch = (async () => {
    while (watching) {
      await refreshRow(name);
      await sleep(300);
    }
  })();
  let answer;
  try {
    answer = await api(`/services/${enc(name)}/${op}`, { method: 'POST', body: how ? { [how]: true } : undefined });
  } catch (err) {
    watching = false;
    s.op = null;
    s.waiting = false;
    if (!(err instanceof NeedToken)) s.message = { kind: 'failure', text: `${op} failed: ${err.message}` };
    renderRow(name);
    return;
  }
  watching = false;
  await watch;
  s.op = null;
  s.waiting = false;
  const { status, body } = answer;
  const detail = body && body.detail ? body.detail : String(body);
  if (status === 200) {
    const extra = [];
    if (body.preempted && body.preempted.length) extra.push(`stopped ${body.preempted.join(', ')} to free the GPU`);
    if (body.also_started && body.also_started.length) extra.push(`also started ${body.also_started.join(', ')}`);
    if (body.also_stopped && body.also_stopped.length) extra.push(`also stopped ${body.also_stopped.join(', ')}`);
    s.message = extra.length ? { kind: 'info', text: cap(extra.join('; ')) + '.', buttons: [dismiss] } : null;
  } else if (status === 409 && body && body.gpu_service_running && op !== 'stop') {
    const holder = body.gpu_service_running;
    s.message = {
      kind: 'conflict',
      op,
      text: `${holder} holds the GPU. Stop it and ${op} ${name}?`,
      buttons: [{ action: 'force', label: `Stop ${holder} and ${op} ${name}`, cls: 'primary force' }, waitButton(op), dismiss].filter(Boolean),
    };
  } else if (status === 409 && body && Array.isArray(body.would_stop) && op !== 'stop') {
    s.message = noRoom(name, op, body);
  } else {
    const lines = (body && body.logs) || [];
    const next = body && body.next ? ` Next: ${body.next}.` : '';
    s.message = { kind: 'failure', text: `${cap(op)} failed (${status}): ${detail}${next}`, lines, buttons: [dismiss] };
  }
  await refreshRow(name);
  refreshGpu();
}

const dismiss = { action: 'dismiss', label: 'Dismiss' };

/** Only a start can wait in the GPU queue (`{"wait": true}`). */
const waitButton = (op) => (op === 'start' ? { action: 'wait', label: 'Wait for the GPU', cls: 'wait' } : null);

/** The `vram` policy's 409: who would have to stop and what each frees, or why nobody may. */
function noRoom(name, op, body) {
  const need = body.need_bytes ? `${fmtBytes(body.need_bytes)}` + (body.gpus > 1 ? ` on each of ${body.gpus} GPUs` : '') : 'its memory';
  const stop = body.would_stop;
  if (stop.length) {
    const who = stop.map((w) => `${w.service} (frees ${fmtBytes(w.frees_bytes)})`);
    const names = stop.map((w) => w.service).join(', ');
    return {
      kind: 'conflict',
      op,
      text: `No room on the GPUs for ${name}: it needs ${need}. It fits once ${listWords(who)} ${stop.length > 1 ? 'stop' : 'stops'}. Stop ${stop.length > 1 ? 'them' : 'it'} and ${op} ${name}?`,
      buttons: [{ action: 'force', label: `Stop ${names} and ${op} ${name}`, cls: 'primary force' }, waitButton(op), dismiss].filter(Boolean),
    };
  }
  const why = (body.blocked || []).join('; ');
  return {
    kind: 'conflict',
    op,
    text: `No room on the GPUs for ${name}: it needs ${need}, and stopping others would not make room${why ? ` (${why})` : ''}.`,
    buttons: [waitButton(op), dismiss].filter(Boolean),
  };
}

function listWords(items) {
  return items.length < 2 ? items.join('') : `${items.slice(0, -1).join(', ')} and ${items[items.length - 1]}`;
}
const cap = (t) => t.charAt(0).toUpperCase() + t.slice(1);

$('rediscover').addEventListener('click', async () => {
  const b = $('rediscover');
  b.disabled = true;
  try {
    const { status, body } = await api('/rediscover', { method: 'POST' });
    if (status === 200) {
      const parts = [];
      if (body.added.length) parts.push('added ' + body.added.join(', '));
      if (body.removed.length) parts.push('removed ' + body.removed.join(', '));
      if (body.changed.length) parts.push('changed ' + body.changed.map((c) => c.name).join(', '));
      if (body.invalid.length) parts.push(`${body.invalid.length} invalid`);
      notice(`Rediscovered ${body.total} services` + (parts.length ? ': ' + parts.join('; ') + '.' : ', nothing changed.'));
    } else {
      notice('Rediscover failed: ' + (body && body.detail));
    }
    await loadList();
  } catch (_) {
    /* a 401 shows the form */
  } finally {
    b.disabled = false;
  }
});

// ---------------------------------------------------------------------------------------------
// Invalid manifests, sort and filter
// ---------------------------------------------------------------------------------------------

function renderInvalid() {
  const ul = $('invalid-list');
  ul.replaceChildren();
  for (const inv of state.invalid) {
    const li = el('li', 'invalid-file');
    li.append(el('code', 'path', inv.path));
    const problems = el('ul');
    for (const p of inv.errors) {
      const item = el('li');
      const where = p.line ? `${p.line}:${p.column}` : '';
      item.append(el('code', 'where', `${inv.path === p.path ? '' : p.path + ':'}${where ? 'line ' + where : ''}`));
      if (p.field) item.append(el('span', 'field', p.field));
      item.append(el('span', 'problem', p.message));
      item.title = p.text;
      problems.append(item);
    }
    li.append(problems);
    ul.append(li);
  }
  $('invalid').hidden = state.invalid.length === 0;
}

function renderTags() {
  const select = $('f-tag');
  const tags = new Set();
  for (const s of state.services.values()) s.summary.tags.forEach((t) => tags.add(t));
  const want = ['', ...[...tags].sort()];
  const have = [...select.options].map((o) => o.value);
  if (want.join('\n') === have.join('\n')) return;
  const chosen = select.value;
  select.replaceChildren(...want.map((t) => new Option(t || 'all', t)));
  select.value = want.includes(chosen) ? chosen : '';
}

function filterRow(s) {
  const word = s.status ? s.status.status : s.summary.status;
  const f = { status: $('f-status').value, tag: $('f-tag').value, gpu: $('f-gpu').value, text: $('f-text').value.trim().toLowerCase() };
  const m = s.summary;
  const show =
    (!f.status || f.status === word) &&
    (!f.tag || m.tags.includes(f.tag)) &&
    (!f.gpu || (f.gpu === 'gpu') === m.gpu_required) &&
    (!f.text || m.name.toLowerCase().includes(f.text) || m.description.toLowerCase().includes(f.text));
  s.tbody.hidden = !show;
}

function sortValue(s, key) {
  const st = s.status || {};
  switch (key) {
    case 'status': return STATES.indexOf(st.status || s.summary.status);
    case 'uptime': return st.uptime_seconds || 0;
    case 'restarts': return st.restarts || 0;
    case 'gpu': return s.summary.gpu_required ? s.summary.vram_gb || 0.001 : 0;
    case 'cpu': return st.cpu_percent || 0;
    case 'mem': return st.memory_bytes || 0;
    default: return 0;
  }
}

/** Rows in the chosen order (moved only when the order changes), filters applied. */
function arrange() {
  const { key, dir } = state.sort;
  const all = [...state.services.values()];
  const byName = (a, b) => a.summary.name.localeCompare(b.summary.name);
  all.sort((a, b) => {
    if (key === 'name') return byName(a, b) * dir;
    return (sortValue(a, key) - sortValue(b, key)) * dir || byName(a, b);
  });
  const table = $('services');
  const current = [...table.tBodies];
  if (all.some((s, i) => current[i] !== s.tbody)) for (const s of all) table.append(s.tbody);
  all.forEach(filterRow);
  $('empty').hidden = all.some((s) => !s.tbody.hidden);
  const shown = all.filter((s) => !s.tbody.hidden).length;
  setText($('count'), shown === all.length ? `(${all.length})` : `(${shown} of ${all.length})`);
  for (const b of document.querySelectorAll('button.sort')) {
    const th = b.closest('th');
    if (b.dataset.sort === key) th.setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
    else th.removeAttribute('aria-sort');
  }
}

for (const b of document.querySelectorAll('button.sort')) {
  b.addEventListener('click', () => {
    const key = b.dataset.sort;
    state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : key === 'name' ? 1 : -1 };
    arrange();
  });
}
for (const id of ['f-status', 'f-tag', 'f-gpu', 'f-text']) {
  $(id).addEventListener('input', arrange);
  $(id).addEventListener('change', arrange);
}

// ---------------------------------------------------------------------------------------------
// GPU panel: `GET /gpus`
// ---------------------------------------------------------------------------------------------

async function refreshGpu() {
  let gpus;
  try {
    gpus = await getJson('/gpus');
    // The holders the rows mark: the exclusive policy's one, and every GPU's.
    const holders = new Set(gpus.holder ? [gpus.holder] : []);
    for (const gpu of gpus.gpus) for (const h of gpu.holders) holders.add(h.service);
    state.gpuQueued = gpus.queue.length > 0 || [...state.services.values()].some((s) => s.waiting);
    if ([...holders].sort().join() !== [...state.gpuHolders].sort().join()) {
      state.gpuHolders = holders;
      for (const name of state.services.keys()) renderRow(name);
    }
  } catch (err) {
    if (err instanceof NeedToken) return;
  }
  if (gpus) $('gpu-body').replaceChildren(...gpuPanel(gpus));
}

function gpuPanel(g) {
  const out = [];
  const policy = g.policy === 'vram' ? 'shared by declared memory' : 'one GPU service at a time';
  const summary = el('p', 'gpu-summary');
  summary.append(el('strong', '', `Policy: ${policy}`), el('span', 'muted', ` · memory from ${g.source}` + (g.detail ? ` (${g.detail})` : '')));
  if (g.headroom_bytes) summary.append(el('span', 'muted', ` · headroom ${fmtBytes(g.headroom_bytes)}`));
  out.push(summary);
  if (!g.gpus.length) out.push(el('p', 'holder', g.holder ? `${g.holder} holds the GPU.` : 'No service holds the GPU.'));
  for (const gpu of g.gpus) {
    const box = el('div', 'gpu-card');
    box.dataset.index = gpu.index;
    box.append(el('h3', '', `GPU ${gpu.index} · ${gpu.name}`));
    if (gpu.total_bytes) {
      // Declared GPUs have no driver figure: what the holders declared (or use, if more).
      const held = gpu.holders.reduce((sum, h) => sum + Math.max(h.vram_bytes, h.measured_bytes || 0), 0);
      const used = gpu.used_bytes != null ? gpu.used_bytes : held + (gpu.foreign_bytes || 0);
      const meter = el('meter');
      meter.min = 0;
      meter.max = gpu.total_bytes;
      meter.value = used;
      meter.high = gpu.total_bytes * 0.9;
      meter.setAttribute('aria-label', `GPU ${gpu.index} memory`);
      const line = el('p', 'mem-line');
      line.append(meter, el('span', 'num', ` ${fmtBytes(used)} of ${fmtBytes(gpu.total_bytes)} used · ${fmtBytes(gpu.free_bytes)} free`));
      if (gpu.foreign_bytes) line.append(el('span', 'muted', ` · ${fmtBytes(gpu.foreign_bytes)} by processes nanny does not run`));
      box.append(line);
    }
    if (gpu.holders.length) {
      const t = table(['Holder', 'Declared', 'Measured', 'Since']);
      for (const h of gpu.holders) {
        const tr = t.tBodies[0].insertRow();
        tr.className = h.over ? 'over' : '';
        tr.dataset.service = h.service;
        cells(tr, [h.service, fmtBytes(h.vram_bytes), h.measured_bytes != null ? fmtBytes(h.measured_bytes) + (h.over ? ' (over its declaration)' : '') : 'not measured', fmtAgo(h.since)]);
      }
      box.append(t);
    } else {
      box.append(el('p', 'muted', 'Free: no service holds it.'));
    }
    out.push(box);
  }
  out.push(gpuQueue(g.queue || []));
  return out;
}

function gpuQueue(queue) {
  if (!queue.length) return el('p', 'muted queue-empty', 'Nobody is waiting for a GPU.');
  const box = el('div', 'queue');
  box.append(el('h3', '', 'Waiting for a GPU'));
  const t = table(['Service', 'Wants', 'GPUs', 'Priority', 'Waiting', 'Gives up']);
  for (const q of queue) {
    const tr = t.tBodies[0].insertRow();
    tr.dataset.service = q.service;
    cells(tr, [q.service, fmtBytes(q.vram_bytes), String(q.gpus), String(q.priority), fmtAgo(q.since), q.deadline ? fmtWhen(q.deadline) : '—']);
  }
  box.append(t);
  return box;
}

/** Before `GET /gpus`: the holder the daemon names, and every service that needs a GPU. */
function table(headings) {
  const t = el('table', 'mini');
  const tr = t.createTHead().insertRow();
  for (const h of headings) {
    const th = el('th', '', h);
    th.scope = 'col';
    tr.append(th);
  }
  t.createTBody();
  return t;
}

function cells(tr, values) {
  for (const v of values) tr.append(el('td', '', v));
}

// ---------------------------------------------------------------------------------------------
// Per service: live logs, timeline, manifest
// ---------------------------------------------------------------------------------------------

function openDetail(name) {
  if (state.detail && state.detail.name === name) {
    $('detail').scrollIntoView({ block: 'start' });
    return;
  }
  closeDetail();
  state.detail = { name, ctrl: null, paused: false, buffer: [] };
  setText($('detail-h'), name);
  $('detail').hidden = false;
  $('log-lines').replaceChildren();
  $('timeline').replaceChildren();
  $('manifest').textContent = '';
  $('log-pause').setAttribute('aria-pressed', 'false');
  setText($('log-pause'), 'Pause');
  followLogs(state.detail);
  loadTimeline(name);
  loadManifest(name);
  $('detail').scrollIntoView({ block: 'start' });
  $('tab-logs').focus();
}

function stopDetailStream() {
  if (state.detail && state.detail.ctrl) state.detail.ctrl.abort();
}

function closeDetail() {
  stopDetailStream();
  state.detail = null;
  $('detail').hidden = true;
}

$('detail-close').addEventListener('click', closeDetail);

for (const tab of ['logs', 'timeline', 'manifest']) {
  $('tab-' + tab).addEventListener('click', () => showTab(tab));
}

function showTab(tab) {
  for (const t of ['logs', 'timeline', 'manifest']) {
    $('tab-' + t).setAttribute('aria-selected', String(t === tab));
    $('panel-' + t).hidden = t !== tab;
  }
  if (tab === 'manifest' && state.detail) loadManifest(state.detail.name);
}

/** `GET /services/NAME/logs?follow=true`: NDJSON, read line by line. After a drop it asks for
 * the last 1000 lines again and shows only those after the last one it had shown. */
async function followLogs(detail) {
  const epoch = state.epoch;
  let last = null; // the last line received: `ts` and text
  while (state.detail === detail && epoch === state.epoch) {
    detail.ctrl = new AbortController();
    try {
      const res = await fetch(`/services/${enc(detail.name)}/logs?follow=true&tail=${last ? 1000 : 200}`, {
        headers: headers(), cache: 'no-store', signal: detail.ctrl.signal,
      });
      if (res.status === 401) return askForToken('The token was refused. Paste the current one.');
      if (!res.ok) throw new Error('HTTP ' + res.status);
      setText($('log-state'), 'following');
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      let skipping = !!last; // a resumed follow repeats lines already shown
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let nl;
        let batch = [];
        while ((nl = buf.indexOf('\n')) >= 0) {
          const text = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (!text) continue;
          try {
            batch.push(JSON.parse(text));
          } catch (_) {
            /* not a log line */
          }
        }
        if (skipping) {
          // The repeated tail: skip up to the last line seen, or to the first one newer than it.
          const lastMs = Date.parse(last.ts);
          const from = batch.findIndex((l) => (l.ts === last.ts && l.line === last.line) || Date.parse(l.ts) > lastMs);
          if (from >= 0) {
            skipping = false;
            const b = batch[from];
            batch = batch.slice(b.ts === last.ts && b.line === last.line ? from + 1 : from);
          } else {
            batch = [];
          }
        }
        if (batch.length) {
          last = batch[batch.length - 1];
          addLogLines(detail, batch);
        }
      }
      throw new Error('the log stream ended');
    } catch (err) {
      if (state.detail !== detail || detail.ctrl.signal.aborted) return;
      setText($('log-state'), 'reconnecting…');
      await sleep(1000);
    }
  }
}

function addLogLines(detail, lines) {
  if (detail.paused) {
    detail.buffer.push(...lines);
    if (detail.buffer.length > LOG_LIMIT) detail.buffer.splice(0, detail.buffer.length - LOG_LIMIT);
    setText($('log-pause'), `Resume (${detail.buffer.length} new)`);
    return;
  }
  const list = $('log-lines');
  const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const search = $('log-search').value.trim().toLowerCase();
  const frag = document.createDocumentFragment();
  for (const l of lines) {
    const li = el('li', 'line ' + l.stream);
    li.append(el('time', 'ts', fmtTime(l.ts)));
    li.append(el('span', 'stream', l.stream === 'stderr' ? 'err' : l.stream === 'nanny' ? 'nanny' : ''));
    li.append(el('span', 'text', l.line));
    if (search && !l.line.toLowerCase().includes(search)) li.hidden = true;
    frag.append(li);
  }
  list.append(frag);
  while (list.childElementCount > LOG_LIMIT) list.firstElementChild.remove();
  if (stick) list.scrollTop = list.scrollHeight;
}

$('log-pause').addEventListener('click', () => {
  const d = state.detail;
  if (!d) return;
  d.paused = !d.paused;
  $('log-pause').setAttribute('aria-pressed', String(d.paused));
  setText($('log-pause'), d.paused ? 'Resume' : 'Pause');
  if (!d.paused && d.buffer.length) {
    const lines = d.buffer;
    d.buffer = [];
    addLogLines(d, lines);
  }
});

$('log-search').addEventListener('input', () => {
  const search = $('log-search').value.trim().toLowerCase();
  for (const li of $('log-lines').children) {
    li.hidden = !!search && !li.lastChild.textContent.toLowerCase().includes(search);
  }
});

async function loadTimeline(name) {
  try {
    const answer = await getJson(`/events?service=${enc(name)}&limit=200`);
    if (!state.detail || state.detail.name !== name) return;
    $('timeline').replaceChildren();
    for (const ev of answer.events) addTimeline(ev, false);
  } catch (_) {
    /* a 401 shows the form */
  }
}

/** Newest first; a live event goes on top once. */
function addTimeline(ev, live) {
  const list = $('timeline');
  if (list.querySelector(`li[data-id="${ev.id}"]`)) return;
  const li = el('li', 'event ' + ev.kind);
  li.dataset.id = ev.id;
  li.append(el('time', 'ts', fmtTime(ev.ts)), el('span', 'kind', ev.kind.replace(/_/g, ' ')), el('span', 'text', ev.message));
  list.prepend(li);
  if (live) li.classList.add('fresh');
}

async function loadManifest(name) {
  try {
    const detail = await getJson(`/services/${enc(name)}`);
    if (!state.detail || state.detail.name !== name) return;
    const { status, state: _state, pending, ...manifest } = detail;
    $('manifest').textContent = JSON.stringify(manifest, null, 2);
    const p = $('pending');
    p.hidden = !pending;
    if (pending) {
      p.textContent = 'Changed on disk, applied at the next start: ' +
        Object.entries(pending).map(([k, v]) => `${k}: ${JSON.stringify(v.old)} → ${JSON.stringify(v.new)}`).join('; ');
    }
  } catch (_) {
    /* a 401 shows the form */
  }
}

// ---------------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------------

function fmtBytes(n) {
  if (n == null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(n < 10 && i > 0 ? 1 : 0)} ${units[i]}`;
}

const fmtGb = (gb) => `${Number.isInteger(gb) ? gb : gb.toFixed(1)} GB`;
const fmtMs = (ms) => (ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`);

function fmtDuration(s) {
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  const pad = (x) => String(x).padStart(2, '0');
  if (d) return `${d}d ${pad(h)}h`;
  if (h) return `${h}h ${pad(m)}m`;
  return `${m}m ${pad(s % 60)}s`;
}

function fmtAgo(ts) {
  if (!ts) return '—';
  const s = Math.max(0, (Date.now() - Date.parse(ts)) / 1000);
  return s < 60 ? `${Math.floor(s)} s ago` : `${fmtDuration(s)} ago`;
}

function fmtWhen(ts) {
  return new Date(ts).toLocaleTimeString();
}

function fmtTime(ts) {
  const d = new Date(ts);
  return d.toLocaleTimeString([], { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
}

begin();
