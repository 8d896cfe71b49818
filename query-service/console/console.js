// Lodestone web console: plain ES2020, no dependencies, no build step.
//
// One page with three tabs (?page=query|pipeline|alerts). The page drives itself from its URL:
// `?sql=...&run=1` runs a statement on load, so links (and headless tests) need no clicks.
// Layout of this file: helpers, API access and the token, URL and tabs, the query page
// (editor, results grid, chart, CSV, history, schema), the pipeline page, the alerts page, start-up.
'use strict';

// ---------------------------------------------------------------------------------------------
// Settings

/** Where the API lives: the path in front of /console/ (empty when the console is at /console/). */
const API_BASE = location.pathname.replace(/\/console(\/.*)?$/, '');
const TOKEN_KEY = 'lodestone.console.token'; // sessionStorage
const HISTORY_KEY = 'lodestone.console.history'; // localStorage: a JSON array of SQL strings, newest first
const HISTORY_MAX = 50;
const PAGE_ROWS = 1000; // max_rows of each page the console asks for
const REFRESH_MS = 5000; // pipeline and alerts pages
const PAGES = ['query', 'pipeline', 'alerts'];
const REJECTIONS_SQL = 'SELECT * FROM "_lodestone"."rejected_records" ORDER BY time DESC LIMIT 100';

/** Everything the console remembers while it runs. */
const state = {
  token: null, // "ID.SECRET", or null (anonymous server, or not known yet)
  authBlocked: false, // the token prompt is up: nothing but the probe is sent until it is answered
  page: 'query',
  query: null, // the running query: {id, sql, controller, started, cancelling, ticker}
  result: null, // the result shown: {sql, columns, rows, nextToken, elapsedMs, bytesScanned, unreachable}
  polls: {}, // page name -> generation number of its refresh loop (see startPolling)
};

// ---------------------------------------------------------------------------------------------
// Small helpers

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Makes an element. `attrs`: `class`, `text` (textContent), `on<event>` handlers, anything else
 * an attribute (`true` gives an empty attribute; null, undefined and false leave it out).
 * Children may be nodes or strings (added as text, never parsed as HTML).
 */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

/** The same for SVG elements (no text or handlers needed there). */
function svgEl(tag, attrs = {}) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  setAttrs(node, attrs);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'text') node.textContent = value;
    else if (key === 'class') node.setAttribute('class', value);
    else if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
}

/** Storage can be disabled (private modes, policies): the console then just forgets. */
function storageGet(storage, key) {
  try { return storage.getItem(key); } catch { return null; }
}
function storageSet(storage, key, value) {
  try { if (value === null) storage.removeItem(key); else storage.setItem(key, value); } catch { /* forget */ }
}

/** A number as the pipeline cards show it: integers as they are, others with at most 2 decimals. */
function formatNumber(value) {
  if (Number.isInteger(value)) return String(value);
  return String(Number(value.toFixed(2)));
}

function formatBytes(bytes) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** Epoch milliseconds as local "YYYY-MM-DD HH:MM:SS". */
function formatTime(ms) {
  if (typeof ms !== 'number') return '—';
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** "5 s", "3 min", "2 h" since `ms`. */
function formatAge(ms) {
  if (typeof ms !== 'number') return '';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 3600)} h`;
}

/** SQL quoting: "identifier" and 'literal', the quote character doubled inside. */
const quoteIdent = (name) => `"${String(name).replace(/"/g, '""')}"`;
const quoteLiteral = (text) => `'${String(text).replace(/'/g, "''")}'`;

/** A query-page URL that runs `sql` when opened. */
function queryUrl(sql) {
  return '?' + new URLSearchParams({ page: 'query', sql, run: '1' }).toString();
}

// ---------------------------------------------------------------------------------------------
// API access and the token

/** An API refusal: `{"error": {"code", "message"}}` and its HTTP status (0: no answer at all). */
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * Calls the API. `body` is sent as JSON; `accept` picks the answer format. Sends the token when
 * there is one. Throws ApiError on any non-2xx answer; a 401 also puts the token prompt up.
 */
async function api(method, path, { body, accept = 'application/json', signal, probe = false } = {}) {
  if (state.authBlocked && !probe) throw new ApiError(401, 'token_required', 'an API token is needed');
  const headers = { Accept: accept };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(API_BASE + path, {
      method, headers, signal, cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    if (error.name === 'AbortError') throw new ApiError(0, 'aborted', 'the request was abandoned');
    throw new ApiError(0, 'network_error', `the query service did not answer (${error.message})`);
  }
  if (response.ok) return response;
  const error = await errorOf(response);
  if (response.status === 401) tokenRefused(error);
  throw error;
}

/** The ApiError an error answer carries (a non-JSON body becomes its message). */
async function errorOf(response) {
  const text = await response.text().catch(() => '');
  try {
    const { error } = JSON.parse(text);
    if (error && error.code) return new ApiError(response.status, error.code, error.message || '');
  } catch { /* not JSON */ }
  return new ApiError(response.status, `http_${response.status}`, text.trim() || response.statusText);
}

/** GET and parse JSON. */
async function getJson(path, options) {
  return (await api('GET', path, options)).json();
}

/** The token from `#token=...` (then stored and removed from the address bar), else the stored one. */
function loadToken() {
  const parts = location.hash.replace(/^#/, '').split('&').filter(Boolean);
  const index = parts.findIndex((part) => part.startsWith('token='));
  if (index >= 0) {
    let token = parts[index].slice('token='.length);
    try { token = decodeURIComponent(token); } catch { /* keep it as it is */ }
    parts.splice(index, 1);
    const rest = parts.length ? `#${parts.join('&')}` : '';
    history.replaceState(history.state, '', location.pathname + location.search + rest);
    if (token.trim()) {
      storageSet(sessionStorage, TOKEN_KEY, token.trim());
      return token.trim();
    }
  }
  return storageGet(sessionStorage, TOKEN_KEY);
}

/** A 401: forget the refused token, stop all refreshing and ask for a token. */
function tokenRefused(error) {
  const hadToken = Boolean(state.token);
  state.token = null;
  storageSet(sessionStorage, TOKEN_KEY, null);
  state.authBlocked = true;
  stopAllPolling();
  const message = hadToken ? `The token was refused (${error.code}): ${error.message}` : 'This query service needs an API token.';
  showTokenPrompt(message);
}

function showTokenPrompt(message) {
  const existing = $('token-prompt');
  if (existing) {
    existing.querySelector('.token-message').textContent = message;
    return;
  }
  const input = el('input', {
    id: 'token-input', 'data-testid': 'token-input', type: 'password', placeholder: 'ID.SECRET',
    autocomplete: 'off', spellcheck: 'false', required: true, 'aria-label': 'API token',
  });
  const form = el('form', { id: 'token-prompt', class: 'token-prompt', 'data-testid': 'token-prompt', onsubmit: submitToken },
    el('h2', { text: 'API token' }),
    el('p', { class: 'token-message', text: message }),
    el('p', { class: 'muted', text: 'Give a token as ID.SECRET. It is kept in this tab only (sessionStorage).' }),
    input,
    el('button', { type: 'submit', class: 'primary', 'data-testid': 'token-submit', text: 'Use token' }));
  document.body.append(el('div', { id: 'token-overlay', class: 'overlay' }, form));
  input.focus();
}

function submitToken(event) {
  event.preventDefault();
  const token = $('token-input').value.trim();
  if (!token) return;
  state.token = token;
  storageSet(sessionStorage, TOKEN_KEY, token);
  state.authBlocked = false;
  $('token-overlay').remove();
  boot();
}

/** The top bar's "who am I": the token's ID (never its secret), or anonymous. */
function showIdentity(anonymous) {
  const id = state.token ? state.token.split('.')[0] : '';
  $('identity').textContent = anonymous ? 'anonymous' : id ? `token ${id}` : '';
  $('sign-out').hidden = !state.token;
}

// ---------------------------------------------------------------------------------------------
// URL and tabs

/** Shows the page the URL names and does what its parameters ask (sql, run). */
function applyUrl() {
  const params = new URLSearchParams(location.search);
  const page = PAGES.includes(params.get('page')) ? params.get('page') : 'query';
  showPage(page);
  if (page !== 'query') return;
  const sql = params.get('sql');
  if (sql !== null) $('sql').value = sql;
  if (params.get('run') === '1' && sql && sql.trim()) {
    // Forget run=1 once it is done, so that a reload or "back" does not run it again.
    params.delete('run');
    history.replaceState(history.state, '', `?${params.toString()}${location.hash}`);
    runQuery(sql);
  }
}

function showPage(page) {
  state.page = page;
  for (const name of PAGES) {
    $(`page-${name}`).hidden = name !== page;
    const tab = document.querySelector(`.tab[data-page="${name}"]`);
    tab.classList.toggle('active', name === page);
    if (name === page) tab.setAttribute('aria-current', 'page'); else tab.removeAttribute('aria-current');
  }
  document.title = `Lodestone · ${page[0].toUpperCase()}${page.slice(1)}`;
  stopAllPolling();
  if (state.authBlocked) return;
  if (page === 'pipeline') startPolling('pipeline', loadPipeline);
  if (page === 'alerts') startPolling('alerts', loadAlerts);
}

/** Follows an in-console link without reloading the page. */
function navigate(href) {
  history.pushState(null, '', href);
  if (!state.authBlocked) applyUrl();
}

/** Clicks on `a[data-nav]` links stay in the page (unless a modifier asks for a new tab). */
function onNavClick(event) {
  const link = event.target.closest('a[data-nav]');
  if (!link || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  navigate(link.getAttribute('href'));
}

/**
 * Runs `load` now and every REFRESH_MS after it finishes, until the page changes. Each loop has a
 * generation number: a loop whose number is no longer the page's current one stops.
 */
function startPolling(name, load) {
  const generation = (state.polls[name] || 0) + 1;
  state.polls[name] = generation;
  const tick = async () => {
    if (state.polls[name] !== generation) return;
    await load();
    if (state.polls[name] === generation) setTimeout(tick, REFRESH_MS);
  };
  tick();
}

function stopAllPolling() {
  for (const name of Object.keys(state.polls)) state.polls[name] += 1;
}

// ---------------------------------------------------------------------------------------------
// Messages (errors and notes shown in a page)

/**
 * Shows `error` in `box` as `<div data-testid=TESTID>` with its code and message; replaces what
 * the box showed. `kind` "cancelled" shows it as a note rather than an alarm.
 */
function showError(box, testid, error, kind = 'error') {
  box.replaceChildren(el('div', { class: `message ${kind}`, 'data-testid': testid, 'data-code': error.code, role: 'alert' },
    el('strong', { class: 'code', text: error.code }), ' ', el('span', { text: error.message })));
}

function showNote(box, text) {
  box.replaceChildren(el('div', { class: 'message note', text }));
}

// ---------------------------------------------------------------------------------------------
// Query page: running, cancelling, paging

/** A fresh query id: "console-" and 16 random letters and digits. */
function newQueryId() {
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `console-${Array.from(bytes, (b) => alphabet[b % alphabet.length]).join('')}`;
}

function setStatus(kind, text) {
  const status = $('status');
  status.dataset.state = kind;
  status.textContent = text;
}

/** Enables Run or Cancel, and keeps the status line's clock running while a query runs. */
function setRunning(running) {
  $('run').disabled = running;
  $('cancel').disabled = !running;
  const query = state.query;
  if (running && query) {
    const tick = () => setStatus(query.cancelling ? 'cancelling' : 'running',
      `${query.cancelling ? 'Cancelling' : 'Running'}… ${((performance.now() - query.started) / 1000).toFixed(1)} s`);
    tick();
    query.ticker = setInterval(tick, 250);
  }
}

/** Runs `sql`: POST /v1/query, then shows the answer (or the error). One query at a time. */
async function runQuery(sql) {
  sql = sql.trim();
  if (!sql || state.query || state.authBlocked) return;
  addHistory(sql);
  rememberInUrl(sql);
  const query = { id: newQueryId(), sql, controller: new AbortController(), started: performance.now(), cancelling: false };
  state.query = query;
  clearResult();
  $('query-messages').replaceChildren();
  setRunning(true);
  try {
    const response = await api('POST', '/v1/query', {
      body: { sql, max_rows: PAGE_ROWS, query_id: query.id }, signal: query.controller.signal,
    });
    const answer = await response.json();
    clearInterval(query.ticker);
    showResult(sql, answer);
    setStatus('done', `Done in ${answer.elapsed_ms} ms`);
  } catch (error) {
    clearInterval(query.ticker);
    if (error.code === 'query_cancelled' || (error.code === 'aborted' && query.cancelling)) {
      setStatus('cancelled', 'cancelled');
      showError($('query-messages'), 'error', error.code === 'aborted'
        ? new ApiError(0, 'query_cancelled', 'the query was cancelled') : error, 'cancelled');
    } else if (error.status === 401) {
      setStatus('idle', 'An API token is needed');
    } else {
      setStatus('error', 'Failed');
      showError($('query-messages'), 'error', error);
    }
  } finally {
    clearInterval(query.ticker);
    state.query = null;
    setRunning(false);
  }
}

/** Keeps the statement run in the address bar (?page=query&sql=...), so the URL can be shared. */
function rememberInUrl(sql) {
  if (state.page !== 'query' || sql.length > 4000) return;
  history.replaceState(history.state, '', `?${new URLSearchParams({ page: 'query', sql }).toString()}${location.hash}`);
}

/**
 * Cancels the running query: DELETE /v1/queries/{id}; the POST then answers 400 query_cancelled.
 * A 404 right after Run means the server has not registered the query yet: try again shortly.
 * Should the POST still not answer 5 s later, stop waiting for it.
 */
async function cancelQuery() {
  const query = state.query;
  if (!query || query.cancelling) return;
  query.cancelling = true;
  $('cancel').disabled = true;
  for (let attempt = 0; attempt < 4 && state.query === query; attempt += 1) {
    try {
      await api('DELETE', `/v1/queries/${encodeURIComponent(query.id)}`);
      break;
    } catch (error) {
      if (error.status !== 404) break;
      await sleep(250);
    }
  }
  setTimeout(() => { if (state.query === query) query.controller.abort(); }, 5000);
}

/** The next page of the shown result (its next_token), appended to the grid and the chart. */
async function loadMore() {
  const result = state.result;
  if (!result || !result.nextToken || result.loadingMore) return;
  result.loadingMore = true;
  const button = $('more');
  button.disabled = true;
  button.textContent = 'Loading…';
  try {
    const response = await api('POST', '/v1/query', { body: { next_token: result.nextToken, max_rows: PAGE_ROWS } });
    const page = await response.json();
    if (state.result !== result) return; // another query replaced it meanwhile
    result.rows.push(...page.rows);
    result.nextToken = page.next_token || null;
    appendRows($('result').tBodies[0], result.columns, page.rows);
    $('result').dataset.rowCount = String(result.rows.length);
    renderStats(result);
    renderChart(result);
    renderMore(result);
  } catch (error) {
    if (state.result === result) renderMore(result);
    showError($('query-messages'), 'error', error);
  } finally {
    result.loadingMore = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Query page: showing a result

function clearResult() {
  state.result = null;
  for (const id of ['stats-box', 'chart-box', 'grid-box', 'more-box']) $(id).replaceChildren();
}

function showResult(sql, answer) {
  const result = {
    sql,
    columns: answer.columns || [],
    rows: answer.rows || [],
    nextToken: answer.next_token || null,
    elapsedMs: answer.elapsed_ms,
    bytesScanned: answer.bytes_scanned,
    unreachable: answer.memory_workers_unreachable || 0,
  };
  state.result = result;
  renderStats(result);
  renderGrid(result);
  renderChart(result);
  renderMore(result);
}

/** The line above the grid: rows, elapsed time, bytes scanned, and a warning when workers were missed. */
function renderStats(result) {
  const rows = result.rows.length;
  const stats = el('div', {
    class: 'stats', 'data-testid': 'stats', 'data-rows': rows, 'data-elapsed-ms': result.elapsedMs, 'data-bytes-scanned': result.bytesScanned,
  },
  el('span', { text: `${rows} row${rows === 1 ? '' : 's'}${result.nextToken ? ' (more available)' : ''}` }),
  el('span', { class: 'sep', text: ' · ' }),
  el('span', { text: `${result.elapsedMs} ms` }),
  el('span', { class: 'sep', text: ' · ' }),
  el('span', { title: formatBytes(result.bytesScanned), text: `${result.bytesScanned} bytes scanned` }));
  if (result.unreachable > 0) {
    stats.append(el('span', { class: 'sep', text: ' · ' }), el('span', { class: 'warning', 'data-testid': 'stats-warning',
      text: `⚠ ${result.unreachable} ingest worker${result.unreachable === 1 ? '' : 's'} unreachable: rows written in the last persist interval may be missing` }));
  }
  $('stats-box').replaceChildren(stats);
}

/** The result table: a sticky header of "name TYPE" and one row per answer row. */
function renderGrid(result) {
  const header = el('tr', {}, result.columns.map((column) =>
    el('th', { scope: 'col', 'data-type': column.type },
      el('span', { class: 'col-name', text: column.name }), ' ', el('span', { class: 'col-type', text: column.type }))));
  const body = el('tbody');
  appendRows(body, result.columns, result.rows);
  const table = el('table', { id: 'result', class: 'grid', 'data-testid': 'result', 'data-row-count': result.rows.length },
    el('thead', {}, header), body);
  $('grid-box').replaceChildren(table);
}

/** Adds rows to the grid's body. Cells: null empty (class "null"), objects and arrays as compact JSON. */
function appendRows(body, columns, rows) {
  const fragment = document.createDocumentFragment();
  for (const row of rows) {
    const tr = el('tr', { 'data-testid': 'row' });
    columns.forEach((column, index) => tr.append(cell(row[index])));
    fragment.append(tr);
  }
  body.append(fragment);
}

function cell(value) {
  if (value === null || value === undefined) return el('td', { class: 'null' });
  const text = typeof value === 'object' ? JSON.stringify(value) : String(value);
  const kind = typeof value === 'number' ? 'num' : typeof value === 'boolean' ? 'bool' : typeof value === 'object' ? 'json' : null;
  return el('td', { class: kind, title: text.length > 60 ? text : null, text });
}

/** The "More" button, when the answer has a next page. */
function renderMore(result) {
  $('more-box').replaceChildren(result.nextToken
    ? el('button', { id: 'more', type: 'button', 'data-testid': 'more', onclick: loadMore, text: `More (next ${PAGE_ROWS} rows)` })
    : []);
}

// ---------------------------------------------------------------------------------------------
// Query page: the chart
//
// The rule (what gets drawn):
// - x is the first TIMESTAMP column (the one named "time" if there is one), y each BIGINT or
//   DOUBLE column. Without both there is no chart.
// - Rows are grouped by the first VARCHAR column when it holds 2 to CHART_GROUPS_MAX distinct
//   values (null counts as the value "(null)"): one series per numeric column and group, named
//   "COLUMN:GROUP". Otherwise (no VARCHAR column, one value only, or too many values) there is
//   one series per numeric column across all rows, named "COLUMN".
// - A point is a row whose time parses and whose value is a number (or a numeric string, as
//   decimals may be); null values are skipped. A series' data-points is how many points it has,
//   so the data-points of all paths add up to the number of values drawn. A series without
//   points is not drawn. Points are joined in time order.

const CHART_GROUPS_MAX = 20;
const CHART_HEIGHT = 220;
const CHART_MARGIN = { top: 10, right: 16, bottom: 24, left: 60 };
const PALETTE = ['#2f6fdf', '#e0542e', '#2a9d58', '#9c4dcc', '#d19a00', '#1a9fb0', '#d1437a', '#6b7f2a', '#8a5a3c', '#5a6b8c'];

/** A TIMESTAMP value as epoch ms (UTC when it has no offset), or NaN. */
function parseTime(value) {
  if (typeof value === 'number') return value;
  if (typeof value !== 'string') return NaN;
  const match = /^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2})?)(\.\d+)?\s*(Z|[+-]\d{2}:?\d{2})?$/i.exec(value.trim());
  if (!match) return Date.parse(value);
  const [, date, time, fraction = '', zone = 'Z'] = match;
  return Date.parse(`${date}T${time}${fraction.slice(0, 4)}${zone}`);
}

function numericValue(value) {
  if (typeof value === 'number') return Number.isFinite(value) ? value : null;
  if (typeof value === 'string' && value.trim() !== '') {
    const number = Number(value);
    return Number.isFinite(number) ? number : null;
  }
  return null;
}

/** The series to draw (see the rule above), or null when the result is no time series. */
function chartSeries(columns, rows) {
  const times = columns.map((c, i) => i).filter((i) => columns[i].type === 'TIMESTAMP');
  const numbers = columns.map((c, i) => i).filter((i) => columns[i].type === 'BIGINT' || columns[i].type === 'DOUBLE');
  if (!times.length || !numbers.length) return null;
  const timeIndex = times.find((i) => columns[i].name === 'time') ?? times[0];
  const groupIndex = columns.findIndex((c) => c.type === 'VARCHAR');
  const groupOf = (row) => (row[groupIndex] === null || row[groupIndex] === undefined ? '(null)' : String(row[groupIndex]));
  let grouped = false;
  if (groupIndex >= 0) {
    const distinct = new Set(rows.map(groupOf));
    grouped = distinct.size >= 2 && distinct.size <= CHART_GROUPS_MAX;
  }
  const series = new Map(); // name -> {name, column, points: [[ms, value]]}
  for (const index of numbers) {
    for (const row of rows) {
      const t = parseTime(row[timeIndex]);
      const v = numericValue(row[index]);
      if (Number.isNaN(t) || v === null) continue;
      const name = grouped ? `${columns[index].name}:${groupOf(row)}` : columns[index].name;
      if (!series.has(name)) series.set(name, { name, points: [] });
      series.get(name).points.push([t, v]);
    }
  }
  const list = [...series.values()];
  for (const s of list) s.points.sort((a, b) => a[0] - b[0]);
  return list.length ? { timeColumn: columns[timeIndex].name, series: list } : null;
}

/**
 * About `count` round steps (1, 2 or 5 times a power of ten) covering [min, max]: the ticks run
 * from the round value at or below min to the one at or above max, and so does the axis.
 */
function valueTicks(min, max, count) {
  const raw = (max - min) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const fraction = raw / magnitude;
  const step = (fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10) * magnitude;
  const first = Math.floor(min / step);
  const last = Math.ceil(max / step);
  const ticks = [];
  for (let i = first; i <= last; i += 1) ticks.push(i * step);
  return { ticks, step };
}

function formatValueTick(value, step) {
  if (Math.abs(value) >= 1e5) return new Intl.NumberFormat('en', { notation: 'compact', maximumFractionDigits: 2 }).format(value);
  return value.toFixed(Math.max(0, Math.min(6, -Math.floor(Math.log10(step)))));
}

const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const TIME_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, SECOND, 2 * SECOND, 5 * SECOND, 10 * SECOND, 15 * SECOND, 30 * SECOND,
  MINUTE, 2 * MINUTE, 5 * MINUTE, 10 * MINUTE, 15 * MINUTE, 30 * MINUTE, HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR,
  DAY, 2 * DAY, 7 * DAY, 14 * DAY, 30 * DAY, 91 * DAY, 365 * DAY];

/** Time ticks at round UTC instants, at most about `count` of them, labelled to the step's precision. */
function timeTicks(min, max, count) {
  const span = max - min;
  const step = TIME_STEPS.find((s) => span / s <= count) || Math.ceil(span / count);
  const ticks = [];
  for (let t = Math.ceil(min / step) * step; t <= max; t += step) ticks.push(t);
  const label = (t) => {
    const iso = new Date(t).toISOString(); // 2026-12-08T01:02:03.123Z
    if (step < SECOND) return iso.slice(11, 23);
    if (step < MINUTE) return iso.slice(11, 19);
    if (step < DAY) return span >= DAY ? `${iso.slice(5, 10)} ${iso.slice(11, 16)}` : iso.slice(11, 16);
    return iso.slice(0, 10);
  };
  return ticks.map((t) => ({ t, label: label(t) }));
}

/** Draws (or removes) the chart of the shown result. */
function renderChart(result) {
  const box = $('chart-box');
  const chart = chartSeries(result.columns, result.rows);
  if (!chart) {
    box.replaceChildren();
    return;
  }
  const width = Math.max(360, box.clientWidth || 960);
  box.replaceChildren(drawChart(chart, width), chartLegend(chart));
}

function drawChart(chart, width) {
  const height = CHART_HEIGHT;
  const m = CHART_MARGIN;
  const plotW = width - m.left - m.right;
  const plotH = height - m.top - m.bottom;
  // Extent of all points (a loop: spreading thousands of values into Math.min can overflow the stack).
  let [tMin, tMax, vMin, vMax] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const s of chart.series) {
    for (const [t, v] of s.points) {
      tMin = Math.min(tMin, t); tMax = Math.max(tMax, t);
      vMin = Math.min(vMin, v); vMax = Math.max(vMax, v);
    }
  }
  if (tMin === tMax) { tMin -= SECOND; tMax += SECOND; }
  if (vMin === vMax) { const pad = Math.abs(vMin) * 0.1 || 1; vMin -= pad; vMax += pad; }
  const y = valueTicks(vMin, vMax, 5);
  [vMin, vMax] = [y.ticks[0], y.ticks[y.ticks.length - 1]];
  const xOf = (t) => m.left + ((t - tMin) / (tMax - tMin)) * plotW;
  const yOf = (v) => m.top + plotH - ((v - vMin) / (vMax - vMin)) * plotH;

  const svg = svgEl('svg', {
    'data-testid': 'chart', class: 'chart', width, height, viewBox: `0 0 ${width} ${height}`,
    role: 'img', 'aria-label': `Chart of ${chart.series.length} series over ${chart.timeColumn}`,
  });
  // Axes: horizontal grid lines with value labels, vertical ticks with UTC time labels.
  for (const v of y.ticks) {
    svg.append(svgEl('line', { class: 'gridline', x1: m.left, x2: width - m.right, y1: yOf(v), y2: yOf(v) }));
    const label = svgEl('text', { class: 'tick', x: m.left - 6, y: yOf(v) + 4, 'text-anchor': 'end' });
    label.textContent = formatValueTick(v, y.step);
    svg.append(label);
  }
  for (const { t, label } of timeTicks(tMin, tMax, Math.max(2, Math.floor(plotW / 110)))) {
    svg.append(svgEl('line', { class: 'axis', x1: xOf(t), x2: xOf(t), y1: m.top + plotH, y2: m.top + plotH + 4 }));
    const text = svgEl('text', { class: 'tick', x: xOf(t), y: height - 6, 'text-anchor': 'middle' });
    text.textContent = label;
    svg.append(text);
  }
  svg.append(svgEl('line', { class: 'axis', x1: m.left, x2: width - m.right, y1: m.top + plotH, y2: m.top + plotH }));
  const caption = svgEl('text', { class: 'tick caption', x: width - m.right, y: m.top + 10, 'text-anchor': 'end' });
  caption.textContent = `${chart.timeColumn} (UTC)`;
  svg.append(caption);

  chart.series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length];
    const d = s.points.map(([t, v], j) => `${j ? 'L' : 'M'}${xOf(t).toFixed(1)} ${yOf(v).toFixed(1)}`).join('');
    const path = svgEl('path', {
      'data-testid': 'series', 'data-name': s.name, 'data-points': s.points.length, class: 'series', d, stroke: color,
    });
    const title = svgEl('title');
    title.textContent = `${s.name} (${s.points.length} points)`;
    path.append(title);
    svg.append(path);
    // A lone point makes no line: mark it with a dot.
    if (s.points.length === 1) svg.append(svgEl('circle', { cx: xOf(s.points[0][0]), cy: yOf(s.points[0][1]), r: 3, fill: color }));
  });
  return svg;
}

function chartLegend(chart) {
  return el('ul', { class: 'legend' }, chart.series.map((s, i) =>
    el('li', {}, el('span', { class: 'swatch', style: `background:${PALETTE[i % PALETTE.length]}` }), s.name)));
}

// ---------------------------------------------------------------------------------------------
// Query page: CSV download

/**
 * Runs the shown result's SQL (else the editor's) again with `Accept: text/csv` and saves the
 * text. Should the answer come in pages (x-lodestone-next-token), the pages are joined, each
 * page's header line after the first dropped.
 */
async function downloadCsv() {
  const sql = (state.result && state.result.sql) || $('sql').value.trim();
  if (!sql || state.authBlocked) return;
  const button = $('csv');
  button.disabled = true;
  try {
    let text = '';
    let token = null;
    for (let page = 0; page === 0 || (token && page < 1000); page += 1) {
      const body = token ? { next_token: token } : { sql };
      const response = await api('POST', '/v1/query', { body, accept: 'text/csv' });
      const part = await response.text();
      const headerEnd = part.indexOf('\n');
      text += page === 0 ? part : headerEnd < 0 ? '' : part.slice(headerEnd + 1);
      token = response.headers.get('x-lodestone-next-token');
    }
    saveFile(text, `lodestone-${new Date().toISOString().slice(0, 19).replace(/[-:]/g, '').replace('T', '-')}.csv`);
  } catch (error) {
    showError($('query-messages'), 'error', error);
  } finally {
    button.disabled = false;
  }
}

function saveFile(text, name) {
  const url = URL.createObjectURL(new Blob([text], { type: 'text/csv;charset=utf-8' }));
  const link = el('a', { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ---------------------------------------------------------------------------------------------
// Query page: history (localStorage)

function loadHistory() {
  try {
    const list = JSON.parse(storageGet(localStorage, HISTORY_KEY) || '[]');
    return Array.isArray(list) ? list.filter((sql) => typeof sql === 'string') : [];
  } catch {
    return [];
  }
}

/** Puts `sql` first in the history (once: an earlier copy moves up) and keeps the last 50. */
function addHistory(sql) {
  const list = [sql, ...loadHistory().filter((old) => old !== sql)].slice(0, HISTORY_MAX);
  storageSet(localStorage, HISTORY_KEY, JSON.stringify(list));
  renderHistory(list);
}

function renderHistory(list = loadHistory()) {
  const items = list.map((sql) => el('li', { 'data-testid': 'history-item' },
    el('button', { type: 'button', class: 'history-entry', title: sql, text: sql.replace(/\s+/g, ' '), onclick: () => putInEditor(sql) })));
  $('history').replaceChildren(...(items.length ? items : [el('li', { class: 'muted', text: 'Statements you run show here.' })]));
}

function putInEditor(sql) {
  const editor = $('sql');
  editor.value = sql;
  editor.focus();
}

/** Inserts `text` at the editor's cursor (replacing the selection). */
function insertAtCursor(text) {
  const editor = $('sql');
  editor.focus();
  editor.setRangeText(text, editor.selectionStart, editor.selectionEnd, 'end');
}

// ---------------------------------------------------------------------------------------------
// Query page: schema tree

/** The databases (answer of GET /v1/databases), then each one's tables, as a tree. */
function renderSchema(databases) {
  const root = $('schema');
  if (!databases.length) {
    root.replaceChildren(el('li', { class: 'muted', text: 'No databases (or none this token may read).' }));
    return;
  }
  root.replaceChildren(...databases.map((db) => {
    const tables = el('ul', { class: 'tree-children' }, el('li', { class: 'muted', text: 'loading…' }));
    loadTables(db.name, tables);
    return el('li', { 'data-testid': 'schema-database', 'data-name': db.name, class: 'tree-database' },
      treeRow(tables, true, el('span', { class: 'tree-label', text: db.name }), el('span', { class: 'muted', text: ` ${db.table_count}` })),
      tables);
  }));
}

/** A tree line: a caret that shows or hides `children`, then the line's content. */
function treeRow(children, open, ...content) {
  children.hidden = !open;
  const caret = el('button', { type: 'button', class: 'caret', 'aria-expanded': String(open), 'aria-label': 'expand', text: open ? '▾' : '▸' });
  caret.addEventListener('click', () => {
    children.hidden = !children.hidden;
    caret.textContent = children.hidden ? '▸' : '▾';
    caret.setAttribute('aria-expanded', String(!children.hidden));
  });
  return el('div', { class: 'tree-row' }, caret, ...content);
}

async function loadTables(database, list) {
  let tables;
  try {
    tables = (await getJson(`/v1/databases/${encodeURIComponent(database)}/tables`)).tables || [];
  } catch (error) {
    list.replaceChildren(el('li', { class: 'muted error-text', text: `${error.code}: ${error.message}` }));
    return;
  }
  if (!tables.length) {
    list.replaceChildren(el('li', { class: 'muted', text: 'no tables' }));
    return;
  }
  list.replaceChildren(...tables.map((table) => schemaTable(database, table)));
}

/** A table: clicking its name puts a SELECT of its latest rows in the editor; the caret shows its columns. */
function schemaTable(database, table) {
  const name = `${database}.${table.name}`;
  const columns = [
    ...(table.dimensions || []).map((dim) => ({ name: dim, kind: 'dimension', type: 'VARCHAR' })),
    ...Object.entries(table.measures || {}).map(([measure, type]) => ({ name: measure, kind: 'measure', type })),
  ];
  const list = el('ul', { class: 'tree-children' }, columns.map((column) =>
    el('li', { 'data-testid': 'schema-column', 'data-name': `${name}.${column.name}`, 'data-kind': column.kind, 'data-type': column.type, class: 'tree-column' },
      el('button', { type: 'button', class: 'tree-label', title: 'Insert the name', text: column.name, onclick: () => insertAtCursor(quoteIdent(column.name)) }),
      el('span', { class: `kind kind-${column.kind}`, text: column.kind }),
      el('span', { class: 'col-type', text: column.type }))));
  const store = table.magnetic_store || {};
  const select = `SELECT * FROM ${quoteIdent(database)}.${quoteIdent(table.name)} ORDER BY time DESC LIMIT 100`;
  return el('li', { 'data-testid': 'schema-table', 'data-name': name, class: 'tree-table' },
    treeRow(list, false, el('button', {
      type: 'button', class: 'tree-label', text: table.name, onclick: () => putInEditor(select),
      title: `${select}\n${store.rows ?? '?'} rows in ${store.files ?? '?'} files (${formatBytes(store.bytes || 0)})`,
    })),
    list);
}

// ---------------------------------------------------------------------------------------------
// Pipeline page

const PIPELINE_FIELDS = {
  'pipeline-devices': 'devices_connected',
  'pipeline-readings-in': 'readings_in_per_sec',
  'pipeline-rejected': 'readings_rejected_per_sec',
  'pipeline-lag': 'ingest_lag_messages',
  'pipeline-persist-age': 'persist_age_s',
};

async function loadPipeline() {
  let status;
  try {
    status = await getJson('/v1/pipeline');
  } catch (error) {
    if (error.status !== 401) showError($('pipeline-messages'), 'pipeline-error', error);
    return;
  }
  $('pipeline-messages').replaceChildren();
  renderPipeline(status);
}

/** Fills the cards (text: the number; data-value: the raw number; null: "—" and no data-value). */
function renderPipeline(status) {
  for (const [id, field] of Object.entries(PIPELINE_FIELDS)) {
    const value = status[field];
    const node = $(id);
    const known = typeof value === 'number';
    node.textContent = known ? formatNumber(value) : '—';
    node.classList.toggle('unknown', !known);
    if (known) node.dataset.value = String(value); else delete node.dataset.value;
  }
  $('pipeline-sampled').textContent = typeof status.sampled_at_ms === 'number' ? `sampled ${formatTime(status.sampled_at_ms)}` : '';

  const services = status.services || [];
  $('pipeline-services').replaceChildren(...(services.length ? services.map((service) =>
    el('tr', { 'data-testid': 'pipeline-service', 'data-name': service.name, 'data-healthy': String(Boolean(service.healthy)) },
      el('td', { text: service.name }),
      el('td', { class: 'mono muted', text: service.url || '' }),
      el('td', {}, el('span', { class: `badge ${service.healthy ? 'ok' : 'bad'}`, text: service.healthy ? 'healthy' : 'unhealthy' })),
      el('td', { class: 'error-text', text: service.error || '' })))
    : [el('tr', {}, el('td', { colspan: 4, class: 'muted', text: 'No services reported.' }))]));

  const rejections = status.rejections_by_reason || [];
  $('pipeline-rejections').replaceChildren(...(rejections.length ? rejections.map((r) =>
    el('li', { 'data-testid': 'pipeline-rejection', 'data-reason': r.reason, 'data-count': r.count },
      el('span', { class: 'mono', text: r.reason }), el('span', { class: 'count', text: String(r.count) })))
    : [el('li', { class: 'muted', text: 'No rejections.' })]));
}

// ---------------------------------------------------------------------------------------------
// Alerts page

async function loadAlerts() {
  let answer;
  try {
    answer = await getJson('/v1/alerts');
  } catch (error) {
    if (error.status !== 401) showError($('alerts-messages'), 'alert-list-error', error);
    return;
  }
  $('alerts-messages').replaceChildren();
  $('alerts-updated').textContent = `updated ${formatTime(Date.now())}`;
  renderRules(answer.rules || []);
}

function renderRules(rules) {
  $('alert-rules').replaceChildren(...(rules.length ? rules.map(ruleRow)
    : [el('tr', {}, el('td', { colspan: 8, class: 'muted', text: 'No alert rules yet.' }))]));
}

function ruleRow(rule) {
  const c = rule.condition || {};
  const historySql = `SELECT * FROM "_lodestone"."alert_history" WHERE rule = ${quoteLiteral(rule.name)} ORDER BY time DESC`;
  return el('tr', { 'data-testid': 'alert-rule', 'data-name': rule.name, 'data-state': rule.state },
    el('td', {}, el('strong', { text: rule.name }), rule.webhook ? el('div', { class: 'muted mono small', text: rule.webhook }) : null),
    el('td', {}, el('span', { class: `badge state-${rule.state}`, text: rule.state }),
      rule.since_ms ? el('div', { class: 'muted small', title: formatTime(rule.since_ms), text: `for ${formatAge(rule.since_ms)}` }) : null),
    el('td', { class: 'mono', text: `${c.column} ${c.op} ${JSON.stringify(c.value)}` }),
    el('td', { text: `${rule.interval_s} s / ${rule.for_s} s` }),
    el('td', {}, el('span', { title: formatTime(rule.last_evaluated_ms), text: rule.last_evaluated_ms ? `${formatAge(rule.last_evaluated_ms)} ago` : 'never' }),
      rule.last_error ? el('div', { class: 'error-text small', 'data-testid': 'alert-last-error', text: rule.last_error }) : null),
    el('td', { class: 'num', text: String(rule.firing_rows ?? '') }),
    el('td', { class: 'mono small sql-cell', title: rule.sql, text: rule.sql }),
    el('td', { class: 'actions' },
      el('a', { href: queryUrl(historySql), 'data-nav': true, 'data-testid': 'alert-history', text: 'history' }),
      el('button', { type: 'button', class: 'danger', 'data-testid': 'alert-delete', text: 'Delete', onclick: () => deleteRule(rule.name) })));
}

/** The form's rule, as POST /v1/alerts takes it. A value that reads as a number is sent as one. */
function ruleFromForm(form) {
  const f = new FormData(form);
  const text = (name) => String(f.get(name) || '').trim();
  const value = text('value');
  return {
    name: text('name'),
    sql: text('sql'),
    condition: { column: text('column'), op: text('op'), value: value !== '' && Number.isFinite(Number(value)) ? Number(value) : value },
    interval_s: Number(text('interval_s')),
    for_s: Number(text('for_s')),
    webhook: text('webhook') || null,
  };
}

async function createRule(event) {
  event.preventDefault();
  const form = event.target;
  const messages = $('alert-form-messages');
  messages.replaceChildren();
  const button = form.querySelector('button[type=submit]');
  button.disabled = true;
  try {
    const rule = ruleFromForm(form);
    await api('POST', '/v1/alerts', { body: rule });
    form.reset();
    showNote(messages, `Rule ${rule.name} created.`);
    await loadAlerts();
  } catch (error) {
    showError(messages, 'alert-error', error);
  } finally {
    button.disabled = false;
  }
}

async function deleteRule(name) {
  if (!window.confirm(`Delete the alert rule "${name}"?`)) return;
  try {
    await api('DELETE', `/v1/alerts/${encodeURIComponent(name)}`);
    await loadAlerts();
  } catch (error) {
    showError($('alert-form-messages'), 'alert-error', error);
  }
}

// ---------------------------------------------------------------------------------------------
// Start-up

/**
 * Checks access with one call (GET /v1/databases, which also feeds the schema tree): a 401 puts
 * the token prompt up and nothing else is sent; otherwise the URL's page starts. Runs again
 * once a token is given.
 */
async function boot() {
  let databases = null;
  try {
    databases = (await getJson('/v1/databases', { probe: true })).databases || [];
  } catch (error) {
    if (error.status === 401) return; // the prompt is up; submitting it boots again
    // Anything else (403, service down): say so in the tree and go on; queries report their own errors.
    $('schema').replaceChildren(el('li', { class: 'muted error-text', text: `${error.code}: ${error.message}` }));
  }
  showIdentity(!state.token && databases !== null);
  if (databases) renderSchema(databases);
  applyUrl();
}

/** Runs Ctrl+Enter / Cmd+Enter in the editor. */
function onEditorKey(event) {
  if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    runQuery($('sql').value);
  }
}

function init() {
  $('sql').addEventListener('keydown', onEditorKey);
  $('run').addEventListener('click', () => runQuery($('sql').value));
  $('cancel').addEventListener('click', cancelQuery);
  $('csv').addEventListener('click', downloadCsv);
  $('history-clear').addEventListener('click', () => { storageSet(localStorage, HISTORY_KEY, null); renderHistory([]); });
  $('sign-out').addEventListener('click', () => { storageSet(sessionStorage, TOKEN_KEY, null); location.reload(); });
  $('alert-form').addEventListener('submit', createRule);
  $('rejections-link').setAttribute('href', queryUrl(REJECTIONS_SQL));
  document.addEventListener('click', onNavClick);
  window.addEventListener('popstate', () => { if (!state.authBlocked) applyUrl(); });
  let resizeTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { if (state.result) renderChart(state.result); }, 150);
  });
  renderHistory();
  state.token = loadToken();
  boot();
}

document.addEventListener('DOMContentLoaded', init);
