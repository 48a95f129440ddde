// The Distillery dashboard: a client of the public API (/v1/...), with no build step and no dependency.
// The API key the user typed is kept in localStorage and sent in the Authorization header of every call;
// the event stream is read with fetch for the same reason (EventSource cannot send a header), so the key
// never goes into a URL.
'use strict';

const KEY_STORE = 'distillery.apiKey';
const OUTPUTS = ['student.safetensors', 'report.json', 'curves.png'];
const COLORS = { distill: '#2d6cdf', baseline: '#9aa3b2', train: '#2d6cdf' };
const $ = (sel, root = document) => root.querySelector(sel);

// ---- the API --------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super(`${status} ${problem.title || 'Error'}: ${problem.detail || ''}`);
    this.status = status;
    this.problem = problem;
  }
}

function authHeaders(extra = {}) {
  const key = localStorage.getItem(KEY_STORE);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function problemOf(r) {
  try { return await r.json(); } catch { return { title: r.statusText, detail: '' }; }
}

async function api(path, { method = 'GET', raw = false, signal } = {}) {
  const r = await fetch(path, { method, headers: authHeaders({ Accept: 'application/json' }), signal });
  if (!r.ok) throw new ApiError(r.status, await problemOf(r));
  return raw ? r : r.json();
}

function showProblem(err) {
  const box = $('#problem');
  if (!err) { box.hidden = true; box.textContent = ''; return; }
  if (err.name === 'AbortError') return;
  let text = err instanceof ApiError ? err.message : `The server cannot be reached: ${err.message}`;
  if (err.status === 401) text += ' (enter the API key above)';
  box.textContent = text;
  box.hidden = false;
}

// Reads a server-sent event stream with fetch, calling onEvent(type, data, id) per event; reopens a broken
// stream where it stopped (Last-Event-ID) until the `end` event or until `signal` aborts.
async function followEvents(jobId, onEvent, signal) {
  let lastId = null;
  while (!signal.aborted) {
    try {
      const headers = authHeaders({ Accept: 'text/event-stream' });
      if (lastId) headers['Last-Event-ID'] = lastId;
      const r = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events`, { headers, signal });
      if (!r.ok) throw new ApiError(r.status, await problemOf(r));
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      let ev = { id: null, type: 'message', data: [] };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let nl;
        while ((nl = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, nl).replace(/\r$/, '');
          buffer = buffer.slice(nl + 1);
          if (line === '') {
            if (ev.data.length) {
              if (ev.id) lastId = ev.id;
              onEvent(ev.type, JSON.parse(ev.data.join('\n')), ev.id);
              if (ev.type === 'end') return;
            }
            ev = { id: null, type: 'message', data: [] };
          } else if (!line.startsWith(':')) {
            const i = line.indexOf(':');
            const name = i < 0 ? line : line.slice(0, i);
            const val = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
            if (name === 'id') ev.id = val;
            else if (name === 'event') ev.type = val;
            else if (name === 'data') ev.data.push(val);
          }
        }
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && err.status < 500) { showProblem(err); return; }
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

// ---- formatting -----------------------------------------------------------------------------------------

const pct = (v) => (v == null ? '–' : `${(100 * v).toFixed(1)}%`);
const num = (v) => (v == null ? '–' : Number(v).toLocaleString('en-US'));
function bytes(n) {
  if (n == null) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return i ? `${n.toFixed(1)} ${units[i]}` : `${n} B`;
}
function duration(s) {
  if (s == null) return '–';
  s = Math.round(s);
  const m = Math.floor(s / 60);
  return m >= 60 ? `${Math.floor(m / 60)}h ${m % 60}m` : `${m}:${String(s % 60).padStart(2, '0')}`;
}
const when = (iso) => (iso ? iso.replace('T', ' ').slice(0, 19) : '–');

// Builds an element; children are nodes or text. Text always goes in as text nodes, never as HTML: job
// names, error messages and log lines come from users and must not become markup.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (v != null) node.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c != null) node.append(c instanceof Node ? c : String(c));
  return node;
}
const badge = (status) => el('span', { class: `status ${status}`, 'data-status': status }, status);
function bar(fraction, wide = false) {
  const inner = el('span');
  inner.style.width = `${Math.round(100 * (fraction || 0))}%`;
  return el('span', { class: wide ? 'bar wide' : 'bar', role: 'progressbar', 'aria-valuenow': fraction || 0 }, inner);
}

// ---- a line chart on a canvas ---------------------------------------------------------------------------

function drawChart(canvas, series, { yFormat = (v) => v.toFixed(2), yMin = null, yMax = null, xMax = 1 } = {}) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const g = canvas.getContext('2d');
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const pts = series.flatMap((s) => s.points);
  canvas.dataset.points = String(pts.length);
  const pad = { l: 52, r: 12, t: 34, b: 28 };
  let lo = yMin ?? Math.min(...pts.map((p) => p[1]), Infinity);
  let hi = yMax ?? Math.max(...pts.map((p) => p[1]), -Infinity);
  if (!pts.length) { lo = 0; hi = 1; }
  if (hi - lo < 1e-9) { hi += 0.5; lo -= 0.5; }
  const xHi = Math.max(xMax, ...pts.map((p) => p[0]), 1);
  const X = (x) => pad.l + ((x - 1) / Math.max(xHi - 1, 1)) * (w - pad.l - pad.r);
  const Y = (y) => pad.t + (1 - (y - lo) / (hi - lo)) * (h - pad.t - pad.b);
  g.font = '11px system-ui, sans-serif';
  g.strokeStyle = '#e3e7ee'; g.fillStyle = '#667085'; g.lineWidth = 1;
  for (let i = 0; i <= 4; i += 1) {
    const v = lo + ((hi - lo) * i) / 4;
    g.beginPath(); g.moveTo(pad.l, Y(v)); g.lineTo(w - pad.r, Y(v)); g.stroke();
    g.textAlign = 'right'; g.fillText(yFormat(v), pad.l - 6, Y(v) + 4);
  }
  const step = Math.max(1, Math.ceil(xHi / 10));
  g.textAlign = 'center';
  for (let x = 1; x <= xHi; x += step) g.fillText(String(x), X(x), h - pad.b + 16);
  g.fillText('epoch', w - pad.r - 14, h - 4);
  let lx = pad.l + 4, ly = 12;
  for (const s of series) {
    g.strokeStyle = s.color; g.fillStyle = s.color; g.lineWidth = 2; g.setLineDash(s.dash || []);
    g.beginPath();
    s.points.forEach(([x, y], i) => (i ? g.lineTo(X(x), Y(y)) : g.moveTo(X(x), Y(y))));
    g.stroke();
    for (const [x, y] of s.points) { g.beginPath(); g.arc(X(x), Y(y), 2.5, 0, 2 * Math.PI); g.fill(); }
    g.setLineDash([]);
    const label = `${s.dash ? '- -' : '—'} ${s.label}`;
    const width = g.measureText(label).width;
    if (lx + width > w - pad.r) { lx = pad.l + 4; ly += 13; }
    g.textAlign = 'left'; g.fillText(label, lx, ly);
    lx += width + 16;
  }
}

// ---- views ----------------------------------------------------------------------------------------------

let current = null; // the view on screen: { stop() }

function listView(root) {
  const tbody = el('tbody');
  root.append(el('div', { class: 'card' }, el('h1', {}, 'Jobs'),
    el('p', { class: 'muted' }, 'Newest first; status and progress update live.'),
    el('table', { id: 'jobs' }, el('thead', {}, el('tr', {}, ['id', 'name', 'status', 'progress', 'epoch', 'top-1', 'created']
      .map((c) => el('th', { class: c === 'top-1' ? 'num' : null }, c)))), tbody)));
  let timer = null;
  let stopped = false;
  async function refresh() {
    try {
      const page = await api('/v1/jobs?limit=50');
      showProblem(null);
      tbody.replaceChildren(...page.data.map((job) => {
        const p = job.progress || {};
        const top1 = job.report?.student?.top1;
        return el('tr', { 'data-job-id': job.id, 'data-status': job.status },
          el('td', {}, el('a', { href: `#/jobs/${job.id}` }, job.id)), el('td', {}, job.name || ''),
          el('td', {}, badge(job.status)),
          el('td', {}, bar(p.fraction), ` ${p.fraction == null ? '' : pct(p.fraction)}`),
          el('td', {}, job.waiting_for?.length ? `waiting for ${job.waiting_for.join(', ')}`
            : p.epochs && !job.finished_at ? `${p.phase || ''} ${p.epoch}/${p.epochs}` : ''),
          el('td', { class: 'num' }, top1 == null ? '' : pct(top1)), el('td', {}, when(job.created_at)));
      }));
      if (!page.data.length) tbody.append(el('tr', {}, el('td', { colspan: 7, class: 'muted' }, 'No jobs yet.')));
    } catch (err) { showProblem(err); }
    if (!stopped) timer = setTimeout(refresh, 2000);
  }
  refresh();
  return { stop() { stopped = true; clearTimeout(timer); } };
}

function jobView(root, jobId) {
  const abort = new AbortController();
  const curves = {}; // "<phase>|<metric>" -> [[epoch, value]]
  let epochs = 1;
  const head = el('div', { class: 'card', id: 'job-head' });
  const lossCanvas = el('canvas', { id: 'loss-chart' });
  const accCanvas = el('canvas', { id: 'acc-chart' });
  const reportCard = el('div', { class: 'card', id: 'report', hidden: '' });
  const log = el('pre', { id: 'log' });
  root.append(head, el('div', { class: 'charts' },
    el('div', { class: 'card' }, el('h2', {}, 'Loss'), lossCanvas),
    el('div', { class: 'card' }, el('h2', {}, 'Test accuracy'), accCanvas)),
  reportCard, el('div', { class: 'card' }, el('h2', {}, 'Events'), log));

  function redraw() {
    const series = (metric, dash) => Object.entries(curves).filter(([k]) => k.endsWith(`|${metric}`))
      .map(([k, points]) => {
        const phase = k.split('|')[0];
        const what = metric === 'test_top1' ? 'test' : metric.split('_')[0];
        return { label: `${phase} ${what}`, color: COLORS[phase] || '#7b61ff', dash, points };
      });
    drawChart(lossCanvas, [...series('train_loss'), ...series('test_loss', [5, 4])], { xMax: epochs });
    drawChart(accCanvas, series('test_top1'), { yFormat: (v) => `${(100 * v).toFixed(0)}%`, xMax: epochs });
  }

  function renderHead(job, live = {}) {
    const p = { ...(job.progress || {}), ...live };
    const spec = job.spec || {};
    const ended = Boolean(job.finished_at);
    const cancel = el('button', { class: 'danger', id: 'cancel', onclick: async () => {
      try { renderHead(await api(`/v1/jobs/${jobId}/cancel`, { method: 'POST' })); } catch (err) { showProblem(err); }
    } }, 'Cancel');
    const teacher = spec.teacher ? (spec.teacher.job || spec.teacher.checkpoint) : null;
    head.replaceChildren(
      el('div', { class: 'job-head' },
        el('div', {}, el('h1', {}, job.name || job.id), el('div', { class: 'muted' }, job.id, ' ', badge(job.status))),
        el('div', { class: 'actions' }, ended || job.status === 'cancelling' ? null : cancel,
          el('a', { href: '#/' }, el('button', { type: 'button' }, 'All jobs')))),
      el('div', {}, bar(ended && job.status === 'succeeded' ? 1 : p.fraction, true)),
      el('div', { class: 'facts' },
        ...[['method', spec.distillation?.method], ['dataset', spec.dataset?.name],
          ['student', `${spec.student?.architecture || ''} ${JSON.stringify(spec.student?.kwargs || {})}`],
          ['teacher', teacher ? el('a', { href: spec.teacher.job ? `#/jobs/${spec.teacher.job}` : null }, teacher) : '–'],
          ['phase', p.phase && !ended ? `${p.phase} ${p.epoch ?? ''}/${p.epochs ?? ''}` : '–'],
          ['progress', pct(ended && job.status === 'succeeded' ? 1 : p.fraction)],
          ['ETA', ended ? '–' : duration(p.eta_s)], ['step loss', p.loss == null || ended ? '–' : p.loss.toFixed(4)],
          ['created', when(job.created_at)], ['started', when(job.started_at)], ['finished', when(job.finished_at)],
          ['queue', job.queue]].map(([k, v]) => el('div', {}, el('span', {}, k), v ?? '–'))),
      ...(job.error ? [el('p', { class: 'status failed', id: 'job-error' }, `${job.error.code}: ${job.error.message}`)] : []));
    head.dataset.status = job.status;
  }

  async function renderReport(job) {
    if (job.status !== 'succeeded') return;
    const report = await api(`/v1/jobs/${jobId}/report`, { signal: abort.signal });
    const models = [['teacher', report.teacher], ['student', report.student]].filter(([, m]) => m);
    const row = (label, f) => el('tr', {}, el('td', {}, label), ...models.map(([, m]) => el('td', { class: 'num' }, f(m))));
    // export.latency: {device, statistic, batches: {"1": {student_ms, teacher_ms, speedup}, "64": {...}}}
    const latency = report.export?.latency || {};
    const batches = Object.entries(latency.batches || {});
    const latencyRows = batches.map(([bs, v]) => el('tr', { 'data-latency': bs }, el('td', {}, `latency, batch ${bs}`),
      ...models.map(([who]) => el('td', { class: 'num' }, v[`${who}_ms`] == null ? '–' : `${v[`${who}_ms`].toFixed(3)} ms`))));
    const exported = Object.values(report.export || {}).filter((m) => m && typeof m === 'object' && m.file).map((m) => m.file);
    const gain = report.kd_gain;
    const summary = [
      gain == null ? null : el('div', {}, el('span', {}, 'KD gain (vs labels alone)'),
        el('b', { class: `gain ${gain >= 0 ? 'pos' : 'neg'}`, id: 'kd-gain' }, `${gain >= 0 ? '+' : ''}${(100 * gain).toFixed(1)} pts`)),
      report.compression == null ? null : el('div', {}, el('span', {}, 'compression'),
        el('b', { class: 'gain', id: 'compression' }, `${report.compression.toFixed(1)}×`)),
      report.agreement == null ? null : el('div', {}, el('span', {}, 'agreement with teacher'),
        el('b', { class: 'gain' }, pct(report.agreement))),
      ...batches.filter(([, v]) => typeof v.speedup === 'number')
        .map(([bs, v]) => el('div', {}, el('span', {}, `speed-up, batch ${bs} (${latency.device})`),
          el('b', { class: 'gain', 'data-speedup': bs }, `${v.speedup.toFixed(1)}×`))),
    ];
    const downloads = [...OUTPUTS, ...exported].map((name) => el('button', { 'data-output': name, onclick: () => download(name) }, `⬇ ${name}`));
    const img = el('img', { class: 'curves-img', alt: 'accuracy and loss per epoch (curves.png)' });
    img.addEventListener('load', () => { img.dataset.loaded = '1'; });
    reportCard.replaceChildren(el('h2', {}, 'Report'), el('div', { class: 'summary' }, ...summary),
      el('table', { id: 'report-table' }, el('thead', {}, el('tr', {}, el('th', {}, ''),
        ...models.map(([who]) => el('th', { class: 'num' }, who)))),
      el('tbody', {}, row('top-1', (m) => pct(m.top1)), row('top-5', (m) => pct(m.top5)),
        row('parameters', (m) => num(m.params)), row('size', (m) => bytes(m.size_bytes)), ...latencyRows)),
      el('h2', { class: 'spaced' }, 'Downloads'), el('div', { class: 'downloads' }, ...downloads),
      el('h2', { class: 'spaced' }, 'curves.png'), img);
    reportCard.hidden = false;
    reportCard.dataset.top1 = String(report.student.top1);
    try {
      const blob = await (await api(`/v1/jobs/${jobId}/artifacts/curves.png`, { raw: true, signal: abort.signal })).blob();
      img.src = URL.createObjectURL(blob);
    } catch (err) { /* the curves are a nicety; the numbers above are the report */ }
  }

  async function download(name) {
    try {
      const blob = await (await api(`/v1/jobs/${jobId}/artifacts/${name}`, { raw: true })).blob();
      const a = el('a', { href: URL.createObjectURL(blob), download: `${jobId}-${name}` });
      document.body.append(a); a.click(); a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    } catch (err) { showProblem(err); }
  }

  let job = null;
  function onEvent(type, data) {
    if (type === 'epoch') {
      const phase = data.phase || 'train';
      epochs = Math.max(epochs, data.epochs || 1);
      for (const metric of ['train_loss', 'test_loss', 'test_top1']) {
        if (data[metric] == null) continue;
        const key = `${phase}|${metric}`;
        (curves[key] = curves[key] || []).push([data.epoch, data[metric]]);
      }
      redraw();
    } else if (type === 'progress' && job) {
      renderHead(job, data);
    } else if (type === 'status' && job) {
      job = { ...job, status: data.status };
      renderHead(job);
    }
    if (type !== 'progress') {
      const text = type === 'epoch' ? `${data.phase} epoch ${data.epoch}/${data.epochs}: loss ${data.train_loss?.toFixed(4)}, test acc ${pct(data.test_top1)}`
        : type === 'status' ? `status ${data.status}` : type === 'end' ? `ended: ${data.status}`
          : type === 'phase' ? `phase ${data.phase}${data.epochs ? ` (${data.epochs} epochs, ${data.device})` : ''}`
            : data.message || JSON.stringify(data);
      log.append(`${(data.ts || '').slice(11, 19).padEnd(8)}  ${text}\n`);
      log.scrollTop = log.scrollHeight;
    }
  }

  (async () => {
    try {
      job = await api(`/v1/jobs/${jobId}`, { signal: abort.signal });
      showProblem(null);
      renderHead(job);
      redraw();
      await followEvents(jobId, onEvent, abort.signal);
      if (abort.signal.aborted) return;
      job = await api(`/v1/jobs/${jobId}`, { signal: abort.signal });
      renderHead(job);
      await renderReport(job);
    } catch (err) { showProblem(err); }
  })();
  return { stop() { abort.abort(); } };
}

function route() {
  if (current) current.stop();
  showProblem(null);
  const root = $('#view');
  root.replaceChildren();
  const m = location.hash.match(/^#\/jobs\/([\w-]+)$/);
  current = m ? jobView(root, m[1]) : listView(root);
}

function setupKey() {
  const input = $('#key');
  const state = $('#key-state');
  const show = () => { state.textContent = localStorage.getItem(KEY_STORE) ? 'key saved' : 'no key'; };
  input.value = localStorage.getItem(KEY_STORE) || '';
  show();
  $('#key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    if (input.value.trim()) localStorage.setItem(KEY_STORE, input.value.trim());
    else localStorage.removeItem(KEY_STORE);
    show();
    route();
  });
  $('#key-clear').addEventListener('click', () => { localStorage.removeItem(KEY_STORE); input.value = ''; show(); route(); });
}

window.addEventListener('hashchange', route);
document.addEventListener('DOMContentLoaded', () => { setupKey(); route(); });
