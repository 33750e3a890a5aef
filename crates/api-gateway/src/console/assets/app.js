// wf-iot web console.
//
// Every page is a server-rendered shell; this script signs the user in,
// fills the page from the REST API under /api/v1 (through the gateway,
// with the user's access token) and keeps it live with Server-Sent Events.
// Tokens live in sessionStorage and are refreshed before they expire.
// Controls the user has no permission for stay hidden; the API refuses
// them anyway.
'use strict';

(() => {
  const I18N = JSON.parse(document.getElementById('wf-i18n').textContent);
  const LANG = document.documentElement.lang || 'en';
  const BODY = document.body;
  const PAGE = BODY.dataset.page;

  // ---------------------------------------------------------------- text

  function t(key, vars) {
    let s = Object.prototype.hasOwnProperty.call(I18N, key) ? I18N[key] : key;
    if (vars) {
      for (const [k, v] of Object.entries(vars)) s = s.split('{' + k + '}').join(String(v));
    }
    return s;
  }

  // A label for an API value (a state, a status), or the value itself.
  function label(prefix, value) {
    const key = prefix + '.' + value;
    return Object.prototype.hasOwnProperty.call(I18N, key) ? I18N[key] : String(value);
  }

  // A date and time in the reader's language, always with a four-digit year.
  const TIME_FORMAT = {
    year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
  };

  function fmtTime(value) {
    if (value === null || value === undefined || value === '') return '–';
    const d = typeof value === 'number' ? new Date(value) : new Date(String(value));
    if (Number.isNaN(d.getTime())) return String(value);
    return d.toLocaleString(LANG, TIME_FORMAT);
  }

  function fmtNumber(n, digits) {
    if (typeof n !== 'number' || !Number.isFinite(n)) return String(n);
    return n.toLocaleString(LANG, { maximumFractionDigits: digits === undefined ? 2 : digits });
  }

  function fmtBytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB'];
    let i = 0;
    let v = Number(n) || 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return fmtNumber(v, i === 0 ? 0 : 1) + ' ' + units[i];
  }

  // ----------------------------------------------------------------- DOM

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  // h('a', {href: '/x', class: 'y', onclick: fn}, 'text', child, ...)
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (v === true) el.setAttribute(k, '');
      else el.setAttribute(k, String(v));
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function fill(el, ...children) {
    el.replaceChildren();
    return append(el, children);
  }

  function emptyRow(tbody, cols, text) {
    fill(tbody, h('tr', {}, h('td', { colspan: cols, class: 'empty', text: text || t('common.none') })));
  }

  function badge(text, kind) {
    return h('span', { class: 'badge ' + (kind || ''), text });
  }

  function statusBadge(online) {
    return badge(online ? t('status.online') : t('status.offline'), online ? 'ok' : 'off');
  }

  const STATE_KIND = {
    succeeded: 'ok', completed: 'ok', online: 'ok', success: 'ok',
    failed: 'bad', timed_out: 'warn', aborted: 'bad', rejected: 'bad', failure: 'bad', denied: 'warn',
    running: 'info', notified: 'info', downloading: 'info', installing: 'info', sent: 'info',
    converged: 'ok', delivered: 'info',
    paused: 'warn', pending: 'muted', queued: 'muted', scheduled: 'muted', canceled: 'muted', cancelled: 'muted',
  };

  function stateBadge(prefix, state) {
    return badge(label(prefix, state), STATE_KIND[state] || '');
  }

  // A status-history row, its reason explained.
  function statusRow(at, online, reason) {
    const known = reason && Object.prototype.hasOwnProperty.call(I18N, 'reason.' + reason);
    return h('tr', {},
      h('td', { text: fmtTime(at) }),
      h('td', {}, statusBadge(online)),
      h('td', { 'data-reason': reason || '' }, known
        ? [h('span', { text: t('reason.' + reason) }), ' ', h('code', { class: 'muted small', text: reason })]
        : reason || '–'));
  }

  function chips(values) {
    return h('span', { class: 'chips' }, (values || []).map((v) => h('span', { class: 'chip', text: v })));
  }

  function props(dl, pairs) {
    fill(dl, pairs.map(([k, v]) => [h('dt', { text: k }), h('dd', {}, v === null || v === undefined || v === '' ? '–' : v)]));
  }

  function pre(value) {
    return h('pre', { class: 'json', text: JSON.stringify(value, null, 2) });
  }

  // Tabs: buttons with role=tab in a role=tablist, each showing the panel
  // its aria-controls names. The chosen tab (other than the first) is kept
  // in the address's #hash, so a reload or a link opens it; the arrow keys,
  // Home and End move between tabs. `onShow(name)` follows every change.
  function tabs(list, onShow) {
    const all = $$('[role=tab]', list);
    const show = (tab, focus) => {
      for (const b of all) {
        const on = b === tab;
        b.setAttribute('aria-selected', String(on));
        b.tabIndex = on ? 0 : -1;
        document.getElementById(b.getAttribute('aria-controls')).hidden = !on;
      }
      if (focus) tab.focus();
      const hash = tab === all[0] ? '' : '#' + tab.dataset.tab;
      if (location.hash !== hash) history.replaceState(null, '', location.pathname + location.search + hash);
      wireLanguageLinks();
      if (onShow) onShow(tab.dataset.tab);
    };
    for (const b of all) {
      b.addEventListener('click', () => show(b, false));
      b.addEventListener('keydown', (ev) => {
        const i = all.indexOf(b);
        const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: all.length - 1 }[ev.key];
        if (to === undefined) return;
        ev.preventDefault();
        show(all[(to + all.length) % all.length], true);
      });
    }
    window.addEventListener('hashchange', () => {
      const tab = all.find((b) => '#' + b.dataset.tab === location.hash);
      if (tab) show(tab, false);
    });
    show(all.find((b) => '#' + b.dataset.tab === location.hash) || all[0], false);
  }

  // Users by id, for saying who owns or did something: the reader is
  // "name (you)"; others go by username to those who may look users up
  // (resolveUsers), else by id.
  const users = new Map();

  function userLabel(id) {
    if (ME && id === ME.id) return t('devices.owner_you', { name: ME.username });
    return users.get(id) || null;
  }

  function userCell(id) {
    if (!id) return '–';
    const name = userLabel(id);
    return name ? h('span', { title: id, text: name }) : h('span', { class: 'mono', text: id });
  }

  // Looks the users not known yet up, once each; `then()` after each found.
  function resolveUsers(ids, then) {
    if (!can('user:manage')) return;
    for (const id of new Set(ids)) {
      if (!id || userLabel(id) || users.has(id)) continue;
      users.set(id, null);
      api('GET', '/api/v1/users/' + enc(id)).then((u) => {
        users.set(id, u.full_name ? `${u.username} (${u.full_name})` : u.username);
        then();
      }).catch(() => {
        // Unknown or gone: the id stays.
      });
    }
  }

  // --------------------------------------------------------- messages

  function flash(message, kind) {
    const box = $('#flash');
    const item = h('div', { class: 'flash-item ' + (kind || 'error'), role: kind === 'ok' ? 'status' : 'alert' },
      h('span', { text: message }),
      h('button', { type: 'button', class: 'link', 'aria-label': t('common.close'), onclick: () => item.remove() }, '×'));
    box.append(item);
    if (kind === 'ok') setTimeout(() => item.remove(), 6000);
  }

  function formError(form, err) {
    const box = $('.form-error', form);
    if (!box) return flash(describe(err));
    if (err) {
      box.textContent = typeof err === 'string' ? err : describe(err);
      box.hidden = false;
    } else {
      box.textContent = '';
      box.hidden = true;
    }
  }

  function confirmAction(text) {
    const dialog = $('#confirm-dialog');
    if (!dialog || typeof dialog.showModal !== 'function') return Promise.resolve(window.confirm(text));
    $('#confirm-text', dialog).textContent = text;
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
      dialog.returnValue = '';
      dialog.showModal();
      $('#confirm-ok', dialog).focus();
    });
  }

  // Opens or closes a form panel, keeping its toggle's aria-expanded true.
  function panel(id, open, toggle) {
    const p = document.getElementById(id);
    p.hidden = !open;
    if (toggle) toggle.setAttribute('aria-expanded', String(open));
    if (open) {
      const first = $('input:not([type=hidden]):not([readonly]), select, textarea', p);
      if (first) first.focus();
    }
    return p;
  }

  function wireCopyButtons(root) {
    for (const btn of $$('button.copy', root)) {
      btn.addEventListener('click', async () => {
        const src = document.getElementById(btn.dataset.copy);
        try {
          await navigator.clipboard.writeText(src.value || src.textContent);
          flash(t('common.copied'), 'ok');
        } catch {
          src.select();
        }
      });
    }
  }

  // ------------------------------------------------------------ session

  const Session = {
    get access() { return sessionStorage.getItem('wf.access'); },
    get refresh() { return sessionStorage.getItem('wf.refresh'); },
    get expiresAt() { return Number(sessionStorage.getItem('wf.expires') || 0); },
    save(pair) {
      sessionStorage.setItem('wf.access', pair.access_token);
      sessionStorage.setItem('wf.refresh', pair.refresh_token);
      sessionStorage.setItem('wf.expires', String(Date.now() + (pair.expires_in || 900) * 1000));
    },
    clear() {
      for (const k of ['wf.access', 'wf.refresh', 'wf.expires']) sessionStorage.removeItem(k);
    },
  };

  class ApiError extends Error {
    constructor(status, code, message, requestId, retryAfter) {
      super(message || code);
      this.status = status;
      this.code = code;
      this.detail = message || '';
      this.requestId = requestId || '';
      this.retryAfter = retryAfter || '';
    }
  }

  async function toError(resp) {
    let code = 'http_' + resp.status;
    let message = '';
    let requestId = resp.headers.get('x-request-id');
    try {
      const body = await resp.json();
      if (body && body.error) {
        code = body.error.code || code;
        message = body.error.message || '';
        requestId = body.error.request_id || requestId;
      }
    } catch {
      // Not the error envelope (a proxy's page): the status says enough.
    }
    return new ApiError(resp.status, code, message, requestId, resp.headers.get('retry-after'));
  }

  // A readable sentence for an error: what kind of failure, in the
  // reader's language, then the server's explanation.
  function describe(err) {
    if (!(err instanceof ApiError)) return t('error.unexpected');
    const key = 'error.' + err.code;
    const head = Object.prototype.hasOwnProperty.call(I18N, key) ? I18N[key] : t('error.generic', { status: err.status });
    let msg = err.detail && err.detail !== head ? head + ': ' + err.detail : head;
    if (err.retryAfter) msg += ' ' + t('error.retry_after', { secs: err.retryAfter });
    return msg;
  }

  let refreshing = null;
  let refreshTimer = null;

  function refreshTokens() {
    if (!refreshing) {
      refreshing = (async () => {
        const token = Session.refresh;
        if (!token) throw new ApiError(401, 'unauthorized', '');
        let resp;
        try {
          resp = await fetch('/api/v1/auth/refresh', {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ refresh_token: token }),
          });
        } catch {
          throw new ApiError(0, 'network', '');
        }
        if (!resp.ok) {
          const err = await toError(resp);
          if (resp.status === 401 || resp.status === 400) Session.clear();
          throw err;
        }
        Session.save(await resp.json());
        scheduleRefresh();
      })().finally(() => { refreshing = null; });
    }
    return refreshing;
  }

  // Renews the tokens a minute before the access token expires.
  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    const wait = Math.max(5000, Session.expiresAt - Date.now() - 60000);
    refreshTimer = setTimeout(() => {
      refreshTokens().catch((e) => { if (e.status === 401) sessionExpired(); });
    }, wait);
  }

  let leaving = false;
  function sessionExpired() {
    if (leaving) return;
    leaving = true;
    Session.clear();
    location.assign('/login?expired=1&next=' + encodeURIComponent(location.pathname + location.search));
  }

  // A call to the REST API with the user's token; `extra` adds request
  // headers (If-Match).
  async function api(method, path, body, extra) {
    const send = () => {
      const headers = { ...(extra || {}) };
      if (Session.access) headers.authorization = 'Bearer ' + Session.access;
      let payload;
      if (body instanceof FormData) payload = body;
      else if (body !== undefined) {
        headers['content-type'] = 'application/json';
        payload = JSON.stringify(body);
      }
      return fetch(path, { method, headers, body: payload });
    };
    let resp;
    try {
      if (Session.refresh && Session.expiresAt - Date.now() < 15000) await refreshTokens().catch(() => {});
      resp = await send();
      if (resp.status === 401) {
        try {
          await refreshTokens();
        } catch (e) {
          sessionExpired();
          throw e;
        }
        resp = await send();
        if (resp.status === 401) {
          const err = await toError(resp);
          sessionExpired();
          throw err;
        }
      }
    } catch (e) {
      if (e instanceof ApiError) throw e;
      throw new ApiError(0, 'network', '');
    }
    if (!resp.ok) throw await toError(resp);
    if (resp.status === 204) return null;
    const type = resp.headers.get('content-type') || '';
    return type.includes('json') ? resp.json() : resp.text();
  }

  const enc = encodeURIComponent;

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
    }
    const s = q.toString();
    return s ? '?' + s : '';
  }

  // ------------------------------------------------------- permissions

  let ME = null;

  function can(perm) {
    return !!ME && (ME.is_superuser || (ME.permissions || []).includes(perm));
  }

  function applyPermissions(root) {
    for (const el of $$('[data-perm]', root)) {
      const allowed = el.dataset.perm.split(/\s+/).some(can);
      if (allowed) el.hidden = false;
      else el.hidden = true;
    }
  }

  // ------------------------------------------------------------ streams

  // A Server-Sent Events stream that reconnects with a fresh token when
  // the server says the token expired, and backs off on errors.
  function openStream(path, handlers) {
    let source = null;
    let closed = false;
    let delay = 1000;
    const connect = async () => {
      if (closed) return;
      if (Session.expiresAt - Date.now() < 30000) {
        try {
          await refreshTokens();
        } catch (e) {
          if (e.status === 401) return sessionExpired();
        }
      }
      const sep = path.includes('?') ? '&' : '?';
      source = new EventSource(path + sep + 'access_token=' + enc(Session.access || ''));
      source.addEventListener('ready', () => {
        delay = 1000;
        if (handlers.up) handlers.up();
      });
      for (const [name, fn] of Object.entries(handlers)) {
        if (name === 'up' || name === 'down') continue;
        source.addEventListener(name, (ev) => {
          let data = null;
          try {
            data = JSON.parse(ev.data);
          } catch {
            return;
          }
          fn(data);
        });
      }
      const again = (fresh) => {
        if (source) source.close();
        if (handlers.down) handlers.down();
        if (closed) return;
        setTimeout(async () => {
          if (fresh) {
            try {
              await refreshTokens();
            } catch (e) {
              if (e.status === 401) return sessionExpired();
            }
          }
          connect();
        }, fresh ? 0 : delay);
        delay = Math.min(delay * 2, 30000);
      };
      source.addEventListener('expired', () => again(true));
      source.addEventListener('revoked', () => {
        source.close();
        closed = true;
        if (handlers.down) handlers.down();
        flash(t('stream.revoked'));
      });
      source.onerror = () => again(false);
    };
    connect();
    window.addEventListener('pagehide', () => {
      closed = true;
      if (source) source.close();
    });
    return { close() { closed = true; if (source) source.close(); } };
  }

  // -------------------------------------------------------------- paging

  // Pager buttons when a list could not be loaded.
  function pagerOff() {
    for (const id of ['#prev-page', '#next-page']) {
      const b = $(id);
      if (b) b.disabled = true;
    }
    const count = $('#page-count') || $('#device-count');
    if (count) count.textContent = '';
  }

  function pager(state, total, load) {
    const from = total === 0 ? 0 : state.offset + 1;
    const to = Math.min(state.offset + state.limit, total);
    const count = $('#page-count') || $('#device-count');
    if (count) count.textContent = t('common.showing', { from, to, total });
    const prev = $('#prev-page');
    const next = $('#next-page');
    prev.disabled = state.offset === 0;
    next.disabled = state.offset + state.limit >= total;
    prev.onclick = () => { state.offset = Math.max(0, state.offset - state.limit); load(); };
    next.onclick = () => { state.offset += state.limit; load(); };
  }

  // Binds a filter form to the page URL's query, so a filtered list can be
  // bookmarked and survives a reload.
  function filterForm(state, load) {
    const form = $('#filter-form');
    const params = new URLSearchParams(location.search);
    for (const el of $$('input, select', form)) {
      if (params.has(el.name)) el.value = params.get(el.name);
      state.filters[el.name] = el.value;
    }
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      for (const el of $$('input, select', form)) {
        state.filters[el.name] = el.value.trim();
        if (el.value.trim()) q.set(el.name, el.value.trim());
      }
      state.offset = 0;
      history.replaceState(null, '', location.pathname + (q.toString() ? '?' + q : ''));
      load();
    });
  }

  function parseTags(text) {
    return text.split(',').map((s) => s.trim()).filter(Boolean);
  }

  function parseJsonObject(text, what) {
    const trimmed = text.trim();
    if (!trimmed) return {};
    let value;
    try {
      value = JSON.parse(trimmed);
    } catch {
      throw new Error(t('error.invalid_json', { field: what }));
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      throw new Error(t('error.invalid_json', { field: what }));
    }
    return value;
  }

  // Submits a form with its button disabled meanwhile; errors show in the
  // form's error box.
  function onSubmit(form, fn) {
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const buttons = $$('button[type=submit]', form);
      buttons.forEach((b) => { b.disabled = true; });
      formError(form, null);
      try {
        await fn(ev);
      } catch (e) {
        formError(form, e instanceof ApiError ? e : e.message || String(e));
      } finally {
        buttons.forEach((b) => { b.disabled = false; });
      }
    });
  }

  // ---------------------------------------------------------------- chart

  const NICE_INTERVALS = [1, 5, 10, 30, 60, 300, 900, 1800, 3600, 21600, 86400];

  function intervalFor(rangeSecs, buckets) {
    const ideal = rangeSecs / (buckets || 120);
    return NICE_INTERVALS.find((i) => i >= ideal) || 86400;
  }

  function niceTicks(min, max, count) {
    if (min === max) {
      min -= 1;
      max += 1;
    }
    const span = max - min;
    const step0 = Math.pow(10, Math.floor(Math.log10(span / count)));
    const err = (count * step0) / span;
    const step = step0 * (err <= 0.15 ? 10 : err <= 0.35 ? 5 : err <= 0.75 ? 2 : 1);
    const lo = Math.floor(min / step) * step;
    const hi = Math.ceil(max / step) * step;
    const ticks = [];
    for (let v = lo; v <= hi + step / 2; v += step) ticks.push(Number(v.toFixed(10)));
    return ticks;
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';

  // An SVG element: svg('line', {x1: 0, ...}, child, ...).
  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) el.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
      if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  // One colour per series, in order; the same metric keeps its colour.
  const PALETTE = ['#1f5fbf', '#d9480f', '#2b8a3e', '#9c36b5', '#e67700', '#0b7285', '#c2255c', '#5c940d'];

  function swatch(color) {
    const el = h('span', { class: 'swatch' });
    el.style.background = color;
    return el;
  }

  // A time chart drawn as SVG: lines (one per series, each in its colour)
  // or stacked bars (kind 'bars', one segment per series and bucket),
  // between `from` and `to` (ms). series: [{key, label, color, points:
  // [{ts, value, count}]}]. With `onZoom(from, to)`, dragging across the
  // plot selects a time range.
  function drawChart(container, opts) {
    const { from, to, kind, onZoom } = opts;
    const series = opts.series.map((se) => ({
      ...se, points: se.points.filter((p) => typeof p.value === 'number' && Number.isFinite(p.value)),
    }));
    const total = series.reduce((n, se) => n + se.points.length, 0);
    container.dataset.points = String(total);
    container.dataset.series = String(series.filter((se) => se.points.length).length);
    if (total === 0) {
      fill(container, h('p', { class: 'empty', text: opts.empty || t('device.no_data') }));
      return;
    }
    const width = Math.max(280, container.clientWidth || 800);
    const height = opts.height || 260;
    const m = { l: 52, r: 12, t: 10, b: 28 };
    const span = Math.max(1, to - from);
    const x = (ts) => m.l + ((ts - from) / span) * (width - m.l - m.r);
    // Bars stack per bucket; lines share one axis.
    let stacks = null;
    let values;
    if (kind === 'bars') {
      stacks = new Map();
      for (const se of series) {
        for (const p of se.points) stacks.set(p.ts, (stacks.get(p.ts) || 0) + Math.max(0, p.value));
      }
      values = [0, ...stacks.values()];
    } else {
      values = series.flatMap((se) => se.points.map((p) => p.value));
      if (opts.zero) values.push(0);
    }
    let lo = Math.min(...values);
    let hi = Math.max(...values);
    if (opts.integer && hi - lo < 4) hi = lo + 4;
    const ticks = niceTicks(lo, hi, 4).filter((v) => !opts.integer || Number.isInteger(v));
    const y0 = ticks[0];
    const y1 = ticks[ticks.length - 1];
    const y = (v) => m.t + (1 - (v - y0) / Math.max(1e-12, y1 - y0)) * (height - m.t - m.b);
    const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, width, height, class: 'chart-svg', 'aria-hidden': 'true' });
    for (const tv of ticks) {
      root.append(svg('line', { x1: m.l, x2: width - m.r, y1: y(tv), y2: y(tv), class: 'grid' }));
      root.append(svg('text', { x: m.l - 6, y: y(tv) + 4, 'text-anchor': 'end', class: 'tick' }, fmtNumber(tv, 2)));
    }
    const timeFmt = span > 2 * 86400000 ? { month: 'short', day: 'numeric' }
      : span > 3 * 3600000 ? { hour: '2-digit', minute: '2-digit' }
        : { hour: '2-digit', minute: '2-digit', second: span < 600000 ? '2-digit' : undefined };
    const labels = width < 420 ? 3 : 5;
    for (let i = 0; i <= labels; i += 1) {
      const ts = from + (span * i) / labels;
      root.append(svg('text', { x: x(ts), y: height - 8, 'text-anchor': i === 0 ? 'start' : i === labels ? 'end' : 'middle', class: 'tick' },
        new Date(ts).toLocaleString(LANG, timeFmt)));
    }
    root.append(svg('line', { x1: m.l, x2: m.l, y1: m.t, y2: height - m.b, class: 'axis' }));
    root.append(svg('line', { x1: m.l, x2: width - m.r, y1: height - m.b, y2: height - m.b, class: 'axis' }));
    if (kind === 'bars') {
      const bw = Math.max(1, ((opts.interval || span / 60) / span) * (width - m.l - m.r) - 1);
      const base = new Map();
      for (const se of series) {
        for (const p of se.points) {
          if (p.value <= 0) continue;
          const under = base.get(p.ts) || 0;
          base.set(p.ts, under + p.value);
          root.append(svg('rect', {
            x: x(p.ts).toFixed(1), y: y(under + p.value).toFixed(1), width: bw.toFixed(1),
            height: Math.max(0.5, y(under) - y(under + p.value)).toFixed(1), fill: se.color, class: 'bar', 'data-series': se.key,
          }, svg('title', {}, fmtTime(p.ts) + ' · ' + se.label + ': ' + fmtNumber(p.value, 0))));
        }
      }
    } else {
      for (const se of series) {
        if (!se.points.length) continue;
        const d = se.points.map((p, i) => (i === 0 ? 'M' : 'L') + x(p.ts).toFixed(1) + ',' + y(p.value).toFixed(1)).join(' ');
        root.append(svg('path', { d, class: 'line', stroke: se.color, 'data-series': se.key }));
        if (se.points.length <= 150) {
          for (const p of se.points) {
            root.append(svg('circle', { cx: x(p.ts).toFixed(1), cy: y(p.value).toFixed(1), r: 2.5, class: 'dot', fill: se.color },
              svg('title', {}, fmtTime(p.ts) + ' · ' + se.label + ': ' + fmtNumber(p.value, 3) + (p.count ? ' (n=' + p.count + ')' : ''))));
          }
        }
      }
    }
    if (onZoom) wireZoom(root, { from, span, m, width, height, onZoom });
    const children = [root];
    if (opts.legend !== false && series.length > 1 && kind !== 'bars') {
      children.push(h('ul', { class: 'legend chart-legend' }, series.map((se) => h('li', { 'data-series': se.key }, swatch(se.color), se.label))));
    }
    if (opts.caption) children.push(h('p', { class: 'chart-caption muted', text: opts.caption(series) }));
    fill(container, children);
  }

  // Dragging across a chart selects the time range between the two ends.
  function wireZoom(root, { from, span, m, width, height, onZoom }) {
    const band = svg('rect', { class: 'zoom-band', y: m.t, height: height - m.t - m.b, x: 0, width: 0, visibility: 'hidden' });
    root.append(band);
    root.classList.add('zoomable');
    const toX = (ev) => {
      const box = root.getBoundingClientRect();
      const vx = ((ev.clientX - box.left) / Math.max(1, box.width)) * width;
      return Math.min(width - m.r, Math.max(m.l, vx));
    };
    const toTs = (vx) => from + ((vx - m.l) / (width - m.l - m.r)) * span;
    let start = null;
    root.addEventListener('pointerdown', (ev) => {
      if (ev.button !== 0) return;
      start = toX(ev);
      root.setPointerCapture(ev.pointerId);
      band.setAttribute('x', start);
      band.setAttribute('width', 0);
      band.setAttribute('visibility', 'visible');
      ev.preventDefault();
    });
    root.addEventListener('pointermove', (ev) => {
      if (start === null) return;
      const now = toX(ev);
      band.setAttribute('x', Math.min(start, now));
      band.setAttribute('width', Math.abs(now - start));
    });
    const end = (ev) => {
      if (start === null) return;
      const stop = toX(ev);
      const a = Math.min(start, stop);
      const b = Math.max(start, stop);
      start = null;
      band.setAttribute('visibility', 'hidden');
      if (b - a >= 6) onZoom(Math.round(toTs(a)), Math.round(toTs(b)));
    };
    root.addEventListener('pointerup', end);
    root.addEventListener('pointercancel', () => { start = null; band.setAttribute('visibility', 'hidden'); });
  }

  // ------------------------------------------------------------------ map

  // A device's position from its metadata: `location: {lat, lon}`, or
  // `lat` and `lon` at the top level; decimal degrees (WGS 84).
  function locationOf(device) {
    const md = device && device.metadata;
    if (!md || typeof md !== 'object') return null;
    const src = md.location && typeof md.location === 'object' ? md.location : md;
    const lat = Number(src.lat !== undefined ? src.lat : src.latitude);
    const lon = Number(src.lon !== undefined ? src.lon : src.lng !== undefined ? src.lng : src.longitude);
    if (src.lat === undefined && src.latitude === undefined) return null;
    if (!Number.isFinite(lat) || !Number.isFinite(lon) || Math.abs(lat) > 90 || Math.abs(lon) > 180) return null;
    return { lat, lon };
  }

  // Devices on a plain map: an equirectangular projection fitted to where
  // the devices are, with a graticule and no tiles, so it works offline.
  function drawMap(container, devices) {
    const placed = devices.map((d) => ({ d, at: locationOf(d) })).filter((p) => p.at);
    container.dataset.devices = String(placed.length);
    if (!placed.length) {
      fill(container, h('p', { class: 'empty', text: t('map.none') }));
      return placed;
    }
    const lats = placed.map((p) => p.at.lat);
    const lons = placed.map((p) => p.at.lon);
    let [s, n, w, e] = [Math.min(...lats), Math.max(...lats), Math.min(...lons), Math.max(...lons)];
    // At least 4° across, plus a margin, within the world.
    const padLat = Math.max(2 - (n - s) / 2, 0) + (n - s) * 0.12 + 0.5;
    const padLon = Math.max(2 - (e - w) / 2, 0) + (e - w) * 0.12 + 0.5;
    s = Math.max(-90, s - padLat); n = Math.min(90, n + padLat);
    w = Math.max(-180, w - padLon); e = Math.min(180, e + padLon);
    const width = Math.max(280, container.clientWidth || 600);
    // Longitude shrinks with latitude: scale x by the cosine at the middle.
    const k = Math.cos(((s + n) / 2) * Math.PI / 180);
    const aspect = ((e - w) * k) / Math.max(1e-6, n - s);
    const height = Math.round(Math.min(420, Math.max(220, width / Math.max(0.5, aspect))));
    const pad = 24;
    const sx = (width - 2 * pad) / Math.max(1e-6, (e - w) * k);
    const sy = (height - 2 * pad) / Math.max(1e-6, n - s);
    const scale = Math.min(sx, sy);
    const ox = (width - (e - w) * k * scale) / 2;
    const oy = (height - (n - s) * scale) / 2;
    const px = (lon) => ox + (lon - w) * k * scale;
    const py = (lat) => oy + (n - lat) * scale;
    const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, width, height, class: 'map-svg' });
    root.append(svg('rect', { x: px(w), y: py(n), width: px(e) - px(w), height: py(s) - py(n), class: 'map-sea' }));
    const step = [0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 45].find((st) => Math.max(n - s, e - w) / st <= 8) || 45;
    const deg = (v, pos, neg) => fmtNumber(Math.abs(v), 2) + '°' + (v === 0 ? '' : v > 0 ? pos : neg);
    for (let lat = Math.ceil(s / step) * step; lat <= n; lat += step) {
      root.append(svg('line', { x1: px(w), x2: px(e), y1: py(lat), y2: py(lat), class: lat === 0 ? 'graticule equator' : 'graticule' }));
      root.append(svg('text', { x: px(w) + 3, y: py(lat) - 3, class: 'tick' }, deg(Number(lat.toFixed(4)), 'N', 'S')));
    }
    for (let lon = Math.ceil(w / step) * step; lon <= e; lon += step) {
      root.append(svg('line', { x1: px(lon), x2: px(lon), y1: py(n), y2: py(s), class: 'graticule' }));
      root.append(svg('text', { x: px(lon) + 3, y: py(s) - 4, class: 'tick' }, deg(Number(lon.toFixed(4)), 'E', 'W')));
    }
    // Offline devices first, so online ones are drawn on top.
    placed.sort((a, b) => Number(a.d.online) - Number(b.d.online));
    for (const { d, at } of placed) {
      const title = `${d.name} (${d.id}) · ${d.online ? t('status.online') : t('status.offline')} · ${fmtNumber(at.lat, 4)}, ${fmtNumber(at.lon, 4)}`;
      root.append(svg('a', { href: '/devices/' + enc(d.id), class: 'map-device', 'data-device': d.id, 'data-online': String(!!d.online) },
        svg('circle', { cx: px(at.lon).toFixed(1), cy: py(at.lat).toFixed(1), r: 7, class: d.online ? 'pin online' : 'pin offline' }),
        svg('title', {}, title)));
    }
    fill(container, root);
    return placed;
  }

  // ------------------------------------------------------ device secrets

  function showCredentials(device) {
    const c = device.credentials;
    const host = BODY.dataset.mqttHost || location.hostname;
    const port = BODY.dataset.mqttPort || '1883';
    props($('#secret-props'), [
      [t('devices.mqtt_host'), h('code', { text: host + ':' + port })],
      [t('devices.client_id'), h('code', { text: c.client_id })],
      [t('devices.username'), h('code', { text: c.username })],
      [t('devices.secret'), h('code', { class: 'secret', id: 'secret-value', text: c.secret })],
      [t('devices.topic'), h('code', { text: 'devices/' + device.id + '/telemetry' })],
    ]);
    const quote = (s) => "'" + String(s).replace(/'/g, "'\\''") + "'";
    $('#secret-cmd').value = `mosquitto_pub -h ${host} -p ${port} -i ${quote(c.client_id)} -u ${quote(c.username)} -P ${quote(c.secret)} -t ${quote('devices/' + device.id + '/telemetry')} -m '{"temperature": 21.5}'`;
    const open = $('#secret-open');
    if (open) open.href = '/devices/' + enc(device.id);
    const p = $('#secret-panel');
    p.hidden = false;
    p.scrollIntoView({ block: 'nearest' });
    $('#secret-close').onclick = () => { p.hidden = true; };
  }

  // ================================================================ pages

  const pages = {};

  pages.login = () => {
    const params = new URLSearchParams(location.search);
    const notice = $('#login-notice');
    for (const [flag, key] of [['expired', 'login.expired'], ['logged_out', 'login.logged_out'], ['changed', 'login.password_changed']]) {
      if (params.get(flag)) {
        notice.textContent = t(key);
        notice.hidden = false;
      }
    }
    const next = params.get('next');
    const safe = next && next.startsWith('/') && !next.startsWith('//') && !next.includes('\\') ? next : '/';
    if (Session.refresh && !params.get('expired')) {
      // Already signed in in this tab.
      location.replace(safe);
      return;
    }
    const form = $('#login-form');
    const error = $('#login-error');
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      error.hidden = true;
      const username = $('#username').value.trim();
      const password = $('#password').value;
      if (!username || !password) {
        error.textContent = t('login.missing');
        error.hidden = false;
        return;
      }
      const button = $('button[type=submit]', form);
      button.disabled = true;
      try {
        let resp;
        try {
          resp = await fetch('/api/v1/auth/login', {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ username, password }),
          });
        } catch {
          throw new ApiError(0, 'network', '');
        }
        if (!resp.ok) throw await toError(resp);
        Session.save(await resp.json());
        location.assign(safe);
      } catch (e) {
        if (e.status === 401) error.textContent = t('login.invalid');
        else if (e.status === 429) error.textContent = t('login.throttled', { secs: e.retryAfter || 60 });
        else error.textContent = describe(e);
        error.hidden = false;
        $('#password').select();
      } finally {
        button.disabled = false;
      }
    });
  };

  pages.not_found = () => {};

  pages.account = async () => {
    const roles = (ME.roles || []).map((r) => r.name);
    props($('#account-props'), [
      [t('login.username'), ME.username],
      [t('users.email'), ME.email],
      [t('users.full_name'), ME.full_name],
      [t('users.roles'), chips(roles)],
      [t('account.superuser'), ME.is_superuser ? t('common.yes') : t('common.no')],
      [t('users.last_login'), fmtTime(ME.last_login_at)],
    ]);
    fill($('#account-permissions'), (ME.permissions || []).map((p) => h('li', { class: 'chip', text: p })));
    const form = $('#password-form');
    onSubmit(form, async () => {
      await api('PUT', '/api/v1/auth/me/password', {
        current_password: $('#current-password').value,
        new_password: $('#new-password').value,
      });
      // The change ends every access token of the account: sign in again.
      Session.clear();
      location.assign('/login?changed=1');
    });
  };

  const COMMAND_PARTS = [
    ['succeeded', '#1b7f4b'],
    ['failed', '#b42318'],
    ['timed_out', '#e08a00'],
    ['open', '#8fa3bf'],
  ];

  pages.dashboard = async () => {
    const tasks = [];
    if (can('device:read')) {
      const summary = async () => {
        const s = await api('GET', '/api/v1/devices/summary');
        $('#stat-total').textContent = fmtNumber(s.total, 0);
        $('#stat-online').textContent = fmtNumber(s.online, 0);
        $('#stat-offline').textContent = fmtNumber(s.offline, 0);
      };
      tasks.push(summary());
      const map = fleetMap();
      tasks.push(map.load());
      let pending = null;
      openStream('/api/v1/devices/stream?rate_secs=2', {
        rate: (r) => { $('#stat-rate').textContent = fmtNumber(r.telemetry_per_sec, 1); },
        status: (st) => {
          map.status(st);
          if (pending) return;
          pending = setTimeout(() => { pending = null; summary().catch(() => {}); }, 500);
        },
      });
      tasks.push(recentCommands());
      tasks.push(activityCharts());
    }
    if (can('firmware:read')) tasks.push(recentRollouts(), activeRollouts());
    const results = await Promise.allSettled(tasks);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) flash(describe(failed.reason));
  };

  // The fleet's history from device-service, reloaded every few seconds:
  // messages per second, devices online, commands by outcome.
  async function activityCharts() {
    const select = $('#a-range');
    let timer = null;
    let busy = false;
    let again = false;
    const load = async () => {
      clearTimeout(timer);
      if (busy) {
        again = true;
        return;
      }
      busy = true;
      const range = Number(select.value) * 1000;
      const to = Date.now();
      const from = to - range;
      // Activity is counted per minute: buckets are whole minutes.
      const interval = Math.max(60, Math.ceil(intervalFor(range / 1000, 60) / 60) * 60);
      try {
        const a = await api('GET', '/api/v1/devices/activity' + query({ from, to, interval: interval + 's' }));
        const secs = a.interval_ms / 1000;
        const now = Date.now();
        // The bucket still filling would read low: rate it over its elapsed part.
        const rate = a.buckets.map((b) => {
          const elapsed = Math.min(secs, Math.max(1, (now - b.ts) / 1000));
          return { ts: b.ts, value: b.messages / elapsed };
        });
        drawChart($('#chart-messages'), {
          from: a.from, to: a.to, height: 180, zero: true, empty: t('dashboard.no_activity'),
          series: [{ key: 'messages', label: t('dashboard.chart_messages'), color: PALETTE[0], points: rate }],
        });
        drawChart($('#chart-online'), {
          from: a.from, to: a.to, height: 180, zero: true, integer: true, empty: t('dashboard.no_activity'),
          series: [{ key: 'online', label: t('dashboard.online'), color: '#1b7f4b', points: a.buckets.map((b) => ({ ts: b.ts, value: b.online })) }],
        });
        const totals = {};
        const series = COMMAND_PARTS.map(([key, color]) => {
          totals[key] = a.buckets.reduce((n, b) => n + b.commands[key], 0);
          return { key, color, label: label('cstatus', key), points: a.buckets.map((b) => ({ ts: b.ts, value: b.commands[key] })) };
        });
        const anyCommand = Object.values(totals).some((n) => n > 0);
        drawChart($('#chart-commands'), {
          from: a.from, to: a.to, height: 180, kind: 'bars', integer: true, interval: a.interval_ms,
          empty: t('commands.none_in_range'),
          series: anyCommand ? series : [],
        });
        fill($('#commands-legend'), COMMAND_PARTS.map(([key, color]) => h('li', { 'data-part': key }, swatch(color),
          label('cstatus', key) + ': ', h('strong', { text: fmtNumber(totals[key], 0) }))));
        $('#activity-card').dataset.buckets = String(a.buckets.length);
        $('#activity-card').dataset.interval = String(a.interval_ms);
        $('#activity-live').hidden = false;
      } catch (e) {
        $('#activity-live').hidden = true;
        fill($('#chart-messages'), h('p', { class: 'form-error', role: 'alert', text: describe(e) }));
      } finally {
        busy = false;
        timer = setTimeout(load, again ? 0 : 10000);
        again = false;
      }
    };
    select.addEventListener('change', load);
    $('#activity-form').addEventListener('submit', (ev) => { ev.preventDefault(); load(); });
    await load();
  }

  // The devices that have a location, on a map; their colour follows the
  // fleet stream.
  function fleetMap() {
    const container = $('#fleet-map');
    let devices = [];
    let redraw = null;
    const draw = () => {
      const placed = drawMap(container, devices);
      const online = placed.filter((p) => p.d.online).length;
      fill($('#map-legend'),
        h('li', {}, h('span', { class: 'swatch pin-online' }), t('dashboard.online') + ': ', h('strong', { text: online })),
        h('li', {}, h('span', { class: 'swatch pin-offline' }), t('dashboard.offline') + ': ', h('strong', { text: placed.length - online })),
        h('li', { class: 'muted' }, t('map.unplaced', { n: devices.length - placed.length })));
    };
    return {
      async load() {
        const list = await api('GET', '/api/v1/devices?limit=500&sort=id');
        devices = list.items;
        draw();
      },
      status(st) {
        const d = devices.find((x) => x.id === st.device_id);
        if (!d || d.online === st.online) return;
        d.online = st.online;
        if (!redraw) redraw = setTimeout(() => { redraw = null; draw(); }, 500);
      },
    };
  }

  async function activeRollouts() {
    const tbody = $('#active-rollouts');
    let timer = null;
    const load = async () => {
      clearTimeout(timer);
      try {
        const lists = await Promise.all(ACTIVE_ROLLOUT.map((state) => api('GET', '/api/v1/rollouts' + query({ state, limit: 20 }))));
        const items = lists.flatMap((l) => l.items);
        if (!items.length) emptyRow(tbody, 3, t('dashboard.no_active_rollouts'));
        else {
          fill(tbody, items.map((r) => h('tr', { 'data-rollout': r.id },
            h('td', {}, h('a', { href: '/rollouts/' + enc(r.id), text: r.name }), ' ', h('span', { class: 'muted small', text: r.firmware_version })),
            h('td', {}, stateBadge('rstate', r.state)),
            h('td', {}, progressBar(r.counts, r.total, true)))));
        }
      } catch (e) {
        emptyRow(tbody, 3, describe(e));
      }
      timer = setTimeout(load, 5000);
    };
    await load();
  }

  async function recentRollouts() {
    const tbody = $('#recent-rollouts');
    const list = await api('GET', '/api/v1/rollouts?limit=5');
    if (!list.items.length) return emptyRow(tbody, 4, t('rollouts.none'));
    fill(tbody, list.items.map((r) => h('tr', {},
      h('td', {}, h('a', { href: '/rollouts/' + enc(r.id), text: r.name })),
      h('td', { text: r.firmware_version }),
      h('td', {}, stateBadge('rstate', r.state)),
      h('td', {}, progressBar(r.counts, r.total, true)))));
  }

  // The newest commands across the fleet the user may see.
  async function recentCommands() {
    const tbody = $('#recent-commands');
    const commands = (await api('GET', '/api/v1/commands?limit=8')).items;
    if (!commands.length) return emptyRow(tbody, 4, t('commands.none'));
    fill(tbody, commands.map((c) => h('tr', {},
      h('td', { text: fmtTime(c.created_at) }),
      h('td', {}, h('a', { href: '/devices/' + enc(c.device_id), text: c.device_id })),
      h('td', { text: c.name }),
      h('td', {}, stateBadge('cstatus', c.status)))));
  }

  // Counts per state as one stacked bar.
  const BAR_PARTS = [
    ['succeeded', ['succeeded']],
    ['failed', ['failed', 'rejected']],
    ['timed_out', ['timed_out']],
    ['active', ['notified', 'downloading', 'installing']],
    ['queued', ['queued']],
    ['canceled', ['canceled']],
  ];

  // A stacked bar of `parts` ([name, count] in order) out of `total`: one
  // segment per part, coloured by its class seg-<name> and titled with the
  // catalog's `<labels>.<name>`. Small: in a table row, with done/total
  // beside it; else the bar, its parts kept for showBar().
  function stackBar(parts, total, done, labels, ariaLabel, small) {
    const bar = h('div', { class: 'stackbar' + (small ? ' small' : ''), role: 'img', 'aria-label': ariaLabel });
    for (const [name, n] of parts) {
      if (n <= 0) continue;
      const seg = h('span', { class: 'seg seg-' + name, title: label(labels, name) + ': ' + n });
      seg.style.width = ((n / Math.max(1, total)) * 100).toFixed(2) + '%';
      bar.append(seg);
    }
    if (small) return h('span', { class: 'barwrap' }, bar, h('span', { class: 'muted small', text: done + '/' + total }));
    bar.parts = parts;
    bar.labels = labels;
    return bar;
  }

  // Puts a big bar in place of the element with its id and lists its
  // parts, then the total, in the legend `ul`.
  function showBar(id, bar, ul, totalLabel, total) {
    bar.classList.add('big');
    bar.id = id;
    document.getElementById(id).replaceWith(bar);
    fill(ul, bar.parts.map(([name, n]) => h('li', { 'data-part': name }, h('span', { class: 'swatch seg-' + name }), label(bar.labels, name) + ': ', h('strong', { text: n }))),
      h('li', { 'data-part': 'total' }, totalLabel + ': ', h('strong', { text: total })));
  }

  // A rollout's executions by state.
  function progressBar(counts, total, small) {
    const parts = BAR_PARTS.map(([name, states]) => [name, states.reduce((sum, s) => sum + ((counts || {})[s] || 0), 0)]);
    const done = (counts || {}).succeeded || 0;
    return stackBar(parts, total, done, 'bar', t('rollouts.bar_label', { done, total }), small);
  }

  // A shadow job's devices: converged, delivered but not reported back
  // yet, pending (not delivered), failed.
  function jobBar(p, small) {
    const parts = [
      ['converged', p.converged], ['delivered', p.delivered - p.converged], ['pending', p.pending], ['failed', p.failed],
    ];
    return stackBar(parts, p.targeted, p.converged, 'jobbar', t('jobs.bar_label', { done: p.converged, total: p.targeted }), small);
  }

  // --------------------------------------------------------------- devices

  // Runs `fn(item)` over every item with at most `limit` at a time;
  // `onDone(item, outcome)` follows each one as it finishes.
  async function eachBounded(items, limit, fn, onDone) {
    let next = 0;
    const worker = async () => {
      while (next < items.length) {
        const item = items[next];
        next += 1;
        let outcome;
        try {
          outcome = { ok: true, value: await fn(item) };
        } catch (e) {
          outcome = { ok: false, error: e };
        }
        onDone(item, outcome);
      }
    };
    await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  }

  // The most devices one bulk action reaches, and how many requests it
  // keeps in flight.
  const BULK_MAX = 5000;
  const BULK_CONCURRENCY = 4;

  pages.devices = async () => {
    const params = new URLSearchParams(location.search);
    // Devices per page: ?limit= (1 to 500), 25 by default.
    const perPage = Math.trunc(Number(params.get('limit')));
    const state = { offset: 0, limit: perPage >= 1 && perPage <= 500 ? perPage : 25, filters: {} };
    const tbody = $('#device-rows');
    if (params.get('deleted')) flash(t('devices.deleted', { id: params.get('deleted') }), 'ok');
    const bulkAllowed = can('device:write') || can('device:command');
    // The selection: device id -> device, across pages.
    const selected = new Map();
    let shown = [];
    let matching = 0;
    const filterQuery = () => {
      const f = state.filters;
      return { name: f.name, status: f.status, type: f.type, tag: f.tag, sort: f.sort || '-created_at' };
    };
    const pageBox = $('#select-page');
    pageBox.hidden = !bulkAllowed;
    const renderSelection = () => {
      const bar = $('#bulk-bar');
      bar.hidden = !bulkAllowed || (selected.size === 0 && $('#bulk-results').hidden);
      $('#bulk-count').textContent = t('bulk.selected', { n: selected.size });
      const more = $('#select-matching');
      more.hidden = !(matching > shown.length && shown.length > 0 && shown.every((d) => selected.has(d.id)) && selected.size < matching);
      more.textContent = t('bulk.select_matching', { n: matching });
      for (const b of ['#bulk-command', '#bulk-add-tag', '#bulk-remove-tag', '#bulk-delete']) $(b).disabled = selected.size === 0;
      for (const box of $$('input.row-select', tbody)) box.checked = selected.has(box.value);
      pageBox.checked = shown.length > 0 && shown.every((d) => selected.has(d.id));
      pageBox.indeterminate = !pageBox.checked && shown.some((d) => selected.has(d.id));
    };
    const load = async () => {
      try {
        const list = await api('GET', '/api/v1/devices' + query({ ...filterQuery(), limit: state.limit, offset: state.offset }));
        shown = list.items;
        matching = list.total;
        if (!list.items.length) emptyRow(tbody, 8, t('devices.none'));
        else {
          fill(tbody, list.items.map((d) => h('tr', { 'data-device': d.id },
            h('td', { class: 'check-col' }, bulkAllowed ? h('input', {
              type: 'checkbox', class: 'row-select', value: d.id, 'aria-label': t('bulk.select_device', { id: d.id }),
              onchange: (ev) => {
                if (ev.target.checked) selected.set(d.id, d);
                else selected.delete(d.id);
                renderSelection();
              },
            }) : null),
            h('td', {}, h('a', { href: '/devices/' + enc(d.id), class: 'mono', text: d.id })),
            h('td', { text: d.name }),
            h('td', { text: d.device_type || '–' }),
            h('td', { class: 'tags-cell' }, chips(d.tags)),
            h('td', { class: 'status-cell' }, statusBadge(d.online)),
            h('td', { class: 'seen-cell', text: fmtTime(d.last_seen_at) }),
            h('td', { text: d.firmware_version || '–' }))));
        }
        pager(state, list.total, load);
      } catch (e) {
        shown = [];
        emptyRow(tbody, 8, describe(e));
        pagerOff();
      }
      renderSelection();
    };
    filterForm(state, load);
    // A new filter starts a new selection.
    $('#filter-form').addEventListener('submit', () => { selected.clear(); });
    await load();
    openStream('/api/v1/devices/stream', {
      status: (s) => {
        const row = tbody.querySelector(`tr[data-device="${CSS.escape(s.device_id)}"]`);
        if (!row) return;
        fill($('.status-cell', row), statusBadge(s.online));
        $('.seen-cell', row).textContent = fmtTime(s.at);
      },
    });

    // Selecting.
    pageBox.addEventListener('change', () => {
      for (const d of shown) {
        if (pageBox.checked) selected.set(d.id, d);
        else selected.delete(d.id);
      }
      renderSelection();
    });
    $('#select-matching').addEventListener('click', async () => {
      const btn = $('#select-matching');
      btn.disabled = true;
      try {
        if (matching > BULK_MAX) throw new Error(t('bulk.too_many', { n: matching, max: BULK_MAX }));
        for (let offset = 0; offset < matching && offset < BULK_MAX; offset += 500) {
          const list = await api('GET', '/api/v1/devices' + query({ ...filterQuery(), limit: 500, offset }));
          for (const d of list.items) selected.set(d.id, d);
          if (list.items.length < 500) break;
        }
      } catch (e) {
        flash(e instanceof ApiError ? describe(e) : e.message);
      } finally {
        btn.disabled = false;
        renderSelection();
      }
    });
    $('#clear-selection').addEventListener('click', () => {
      selected.clear();
      $('#bulk-results').hidden = true;
      renderSelection();
    });

    // Acting on the selection: each device separately, a few at a time,
    // with its own outcome.
    const commandForm = $('#bulk-command-form');
    const tagForm = $('#bulk-tag-form');
    let tagMode = 'add';
    const showForm = (form) => {
      for (const f of [commandForm, tagForm]) f.hidden = f !== form || !f.hidden;
      if (form && !form.hidden) {
        formError(form, null);
        const first = $('input', form);
        if (first) first.focus();
      }
    };
    $('#bulk-command').addEventListener('click', () => showForm(commandForm));
    $('#bulk-add-tag').addEventListener('click', () => { tagMode = 'add'; tagForm.hidden = true; showForm(tagForm); $('#bulk-tag-submit').textContent = t('bulk.add_tag'); });
    $('#bulk-remove-tag').addEventListener('click', () => { tagMode = 'remove'; tagForm.hidden = true; showForm(tagForm); $('#bulk-tag-submit').textContent = t('bulk.remove_tag'); });
    for (const f of [commandForm, tagForm]) $('.cancel', f).addEventListener('click', () => { f.hidden = true; });

    const run = async (action, fn, describeOk) => {
      const targets = Array.from(selected.values());
      const results = $('#bulk-results');
      const rows = $('#bulk-rows');
      const summary = $('#bulk-summary');
      results.hidden = false;
      results.dataset.state = 'running';
      results.dataset.action = action;
      delete results.dataset.ok;
      delete results.dataset.failed;
      fill(rows, targets.map((d) => h('tr', { 'data-device': d.id, 'data-outcome': 'pending' },
        h('td', {}, h('a', { href: '/devices/' + enc(d.id), class: 'mono', text: d.id })),
        h('td', { class: 'outcome' }, badge(t('bulk.pending'), 'muted')),
        h('td', { class: 'detail', text: '–' }))));
      let ok = 0;
      let failed = 0;
      const progress = () => { summary.textContent = t('bulk.progress', { done: ok + failed, total: targets.length, ok, failed }); };
      progress();
      renderSelection();
      await eachBounded(targets, BULK_CONCURRENCY, fn, (d, outcome) => {
        const row = rows.querySelector(`tr[data-device="${CSS.escape(d.id)}"]`);
        const [good, kind, text, detail] = outcome.ok ? describeOk(outcome.value) : [false, 'bad', t('bulk.failed'), describe(outcome.error)];
        if (good) ok += 1;
        else failed += 1;
        if (row) {
          row.dataset.outcome = good ? 'ok' : 'failed';
          fill($('.outcome', row), badge(text, kind));
          fill($('.detail', row), detail || '–');
        }
        progress();
      });
      results.dataset.state = 'done';
      results.dataset.ok = String(ok);
      results.dataset.failed = String(failed);
      summary.textContent = t('bulk.summary', { ok, failed });
      return { ok, failed };
    };

    onSubmit(commandForm, async () => {
      const name = $('#b-cmd-name').value.trim();
      if (!name) throw new Error(t('error.name_required'));
      const cmdParams = parseJsonObject($('#b-cmd-params').value, t('commands.params'));
      const timeout = Math.min(30, Math.max(1, Number($('#b-cmd-timeout').value) || 10));
      await run('command', (d) => api('POST', '/api/v1/devices/' + enc(d.id) + '/commands?wait=true', { name, params: cmdParams, timeout_s: timeout }),
        (c) => [c.status === 'succeeded', STATE_KIND[c.status] || 'info', label('cstatus', c.status),
          c.error ? c.error : c.result !== null && c.result !== undefined ? h('code', { text: JSON.stringify(c.result) }) : null]);
      commandForm.hidden = true;
    });
    onSubmit(tagForm, async () => {
      const tag = $('#b-tag').value.trim();
      if (!tag) throw new Error(t('bulk.tag_required'));
      const adding = tagMode === 'add';
      await run(adding ? 'add_tag' : 'remove_tag', async (d) => {
        // The device as it is now, so a concurrent change of its tags is kept.
        const fresh = await api('GET', '/api/v1/devices/' + enc(d.id));
        const tags = adding ? Array.from(new Set([...fresh.tags, tag])) : fresh.tags.filter((x) => x !== tag);
        if (tags.length === fresh.tags.length && tags.every((x, i) => x === fresh.tags[i])) return { unchanged: true, device: fresh };
        return { device: await api('PATCH', '/api/v1/devices/' + enc(d.id), { tags }) };
      }, (r) => [true, r.unchanged ? 'muted' : 'ok', r.unchanged ? t('bulk.unchanged') : t('bulk.done'), chips(r.device.tags)]);
      tagForm.hidden = true;
      await load();
    });
    $('#bulk-delete').addEventListener('click', async () => {
      showForm(null);
      const n = selected.size;
      if (!(await confirmAction(t('bulk.delete_confirm', { n })))) return;
      const outcome = await run('delete', (d) => api('DELETE', '/api/v1/devices/' + enc(d.id)), () => [true, 'ok', t('bulk.deleted'), null]);
      for (const row of $$('#bulk-rows tr[data-outcome="ok"]')) selected.delete(row.dataset.device);
      if (outcome.ok) flash(t('bulk.deleted_n', { n: outcome.ok }), 'ok');
      await load();
    });

    const toggle = $('#new-device');
    const form = $('#create-form');
    toggle.addEventListener('click', () => panel('create-panel', $('#create-panel').hidden, toggle));
    $('.cancel', form).addEventListener('click', () => panel('create-panel', false, toggle));
    wireCopyButtons(document);
    onSubmit(form, async () => {
      const body = {
        name: $('#c-name').value.trim(),
        device_type: $('#c-type').value.trim(),
        tags: parseTags($('#c-tags').value),
        metadata: parseJsonObject($('#c-meta').value, t('devices.metadata')),
      };
      const id = $('#c-id').value.trim();
      if (id) body.id = id;
      if (!body.name) throw new Error(t('error.name_required'));
      const created = await api('POST', '/api/v1/devices', body);
      form.reset();
      panel('create-panel', false, toggle);
      showCredentials(created);
      flash(t('devices.created', { id: created.id }), 'ok');
      await load();
    });
  };

  // ---------------------------------------------------------- device state

  const hasOwn = (o, key) => Object.prototype.hasOwnProperty.call(o, key);
  const isPlainObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

  // The merge patch (RFC 7386) that turns the object `from` into `to`: new
  // and changed keys with their values, removed keys as null, objects on
  // both sides compared key by key.
  function mergePatch(from, to) {
    const patch = {};
    for (const key of Object.keys(from)) {
      if (!hasOwn(to, key)) patch[key] = null;
    }
    for (const [key, value] of Object.entries(to)) {
      const old = hasOwn(from, key) ? from[key] : undefined;
      if (isPlainObject(old) && isPlainObject(value)) {
        const inner = mergePatch(old, value);
        if (Object.keys(inner).length) patch[key] = inner;
      } else if (JSON.stringify(old) !== JSON.stringify(value)) {
        patch[key] = value;
      }
    }
    return patch;
  }

  // The leaves of a shadow's metadata section (the time, in ms, each key
  // last changed) by their dotted paths.
  function leafTimes(meta, prefix) {
    const out = [];
    for (const [key, value] of Object.entries(meta || {})) {
      const path = prefix ? prefix + '.' + key : key;
      if (isPlainObject(value)) out.push(...leafTimes(value, path));
      else out.push([path, value]);
    }
    return out;
  }

  // A server attribute as typed: JSON when it reads as JSON (a number,
  // true, false, a quoted string, an object, a list), else the text.
  function parseAttribute(text) {
    const trimmed = text.trim();
    try {
      const value = JSON.parse(trimmed);
      if (value !== null) return value;
    } catch {
      // Not JSON: the text itself.
    }
    return trimmed;
  }

  // The text that parseAttribute() reads back as `value`.
  function attributeText(value) {
    return typeof value === 'string' && parseAttribute(value) === value ? value : JSON.stringify(value);
  }

  // A device's State tab: its shadow (reported, desired, delta, each key's
  // last change, the version), the desired state editor (saved with
  // If-Match of the version it started from), the change history and the
  // server attributes. load() when the tab is first shown; changed() on
  // the live stream's shadow events.
  function deviceState(base) {
    const card = $('#shadow-card');
    const form = $('#desired-form');
    const editor = $('#desired-json');
    const stale = $('#desired-stale');
    let shadow = null;
    // What the editor was filled from: {version, desired, text}.
    let editing = null;
    let loaded = false;

    const startEditing = () => {
      editing = { version: shadow.version, desired: shadow.desired, text: JSON.stringify(shadow.desired, null, 2) };
      editor.value = editing.text;
      $('#desired-base').textContent = t('shadow.editing_version', { version: shadow.version });
      stale.hidden = true;
    };
    // Shows `doc`; the editor follows unless it holds the user's changes
    // (`fresh`: follows anyway), which are then marked as based on an
    // older version.
    const render = (doc, fresh) => {
      // An answer older than what shows (the stream was faster) only
      // refills the editor.
      if (!shadow || doc.version >= shadow.version) {
        shadow = doc;
        card.dataset.version = String(doc.version);
        $('#shadow-version').textContent = t('shadow.version', { version: doc.version });
        $('#shadow-updated').textContent = doc.updated_at ? t('shadow.updated', { when: fmtTime(doc.updated_at) }) : t('shadow.never');
        for (const name of ['reported', 'desired']) {
          $(`#shadow-${name}-json`).textContent = JSON.stringify(doc[name], null, 2);
          const leaves = leafTimes((doc.metadata || {})[name]);
          props($(`#shadow-${name}-times`), leaves.length
            ? leaves.map(([path, ms]) => [path, fmtTime(ms)])
            : [['–', t('shadow.empty_' + name)]]);
        }
        $('#shadow-delta-json').textContent = JSON.stringify(doc.delta, null, 2);
        $('#shadow-delta-note').textContent = Object.keys(doc.delta).length ? '' : t('shadow.in_sync');
      }
      if (fresh || !editing || editor.value === editing.text) startEditing();
      else if (!Object.keys(mergePatch(editing.desired, shadow.desired)).length) {
        // Only what the device reported changed: the edit still applies
        // to desired state as it is, onto the newer version.
        editing.version = shadow.version;
        $('#desired-base').textContent = t('shadow.editing_version', { version: shadow.version });
        stale.hidden = true;
      } else if (shadow.version !== editing.version) {
        stale.textContent = t('shadow.stale', { version: shadow.version });
        stale.hidden = false;
      }
    };
    const loadShadow = async (fresh) => render(await api('GET', base + '/shadow'), fresh);

    // The change history, newest first.
    const hist = { offset: 0, limit: 10 };
    const historyRows = $('#shadow-history-rows');
    const author = (c) => {
      if (c.source === 'job' && c.actor) return h('a', { href: '/shadow-jobs/' + enc(c.actor), title: c.actor, text: label('source', 'job') });
      if (c.source === 'user') return [label('source', 'user') + ': ', userCell(c.actor)];
      return label('source', c.source);
    };
    let lastHistory = [];
    const renderHistory = () => {
      if (!lastHistory.length) return emptyRow(historyRows, 5, t('shadow.no_history'));
      fill(historyRows, lastHistory.map((c) => h('tr', { 'data-version': c.version, 'data-source': c.source },
        h('td', { text: c.version }),
        h('td', { text: fmtTime(c.at) }),
        h('td', { text: label('section', c.section) }),
        h('td', {}, author(c)),
        h('td', {}, h('code', { class: 'changes', text: JSON.stringify(c.changes) })))));
      return undefined;
    };
    const loadHistory = async () => {
      try {
        const list = await api('GET', base + '/shadow/history' + query({ limit: hist.limit, offset: hist.offset }));
        lastHistory = list.items;
        renderHistory();
        resolveUsers(lastHistory.filter((c) => c.source === 'user').map((c) => c.actor), renderHistory);
        pager(hist, list.total, loadHistory);
      } catch (e) {
        emptyRow(historyRows, 5, describe(e));
        pagerOff();
      }
    };

    // Server attributes.
    const attrRows = $('#attribute-rows');
    const attrForm = $('#attribute-form');
    const renderAttributes = (attrs) => {
      const names = Object.keys(attrs || {}).sort();
      if (!names.length) return emptyRow(attrRows, 3, t('attributes.none'));
      const writable = can('device:write');
      fill(attrRows, names.map((name) => h('tr', { 'data-attribute': name },
        h('td', {}, h('code', { text: name })),
        h('td', { class: 'value' }, typeof attrs[name] === 'string' ? attrs[name] : h('code', { text: JSON.stringify(attrs[name]) })),
        writable ? h('td', { class: 'row-actions' }, [
          h('button', {
            type: 'button', class: 'small', 'aria-label': t('attributes.edit_label', { name }),
            onclick: () => {
              $('#attr-name').value = name;
              $('#attr-value').value = attributeText(attrs[name]);
              $('#attr-value').focus();
            },
          }, t('common.edit')),
          h('button', {
            type: 'button', class: 'small danger', 'aria-label': t('attributes.delete_label', { name }),
            onclick: async () => {
              if (!(await confirmAction(t('attributes.delete_confirm', { name })))) return;
              try {
                renderAttributes((await api('PATCH', base + '/attributes', { [name]: null })).attributes);
                flash(t('attributes.deleted', { name }), 'ok');
              } catch (e) {
                flash(describe(e));
              }
            },
          }, t('common.delete')),
        ]) : h('td', {}))));
      return undefined;
    };
    const loadAttributes = async () => renderAttributes((await api('GET', base + '/attributes')).attributes);
    onSubmit(attrForm, async () => {
      const name = $('#attr-name').value.trim();
      if (!name) throw new Error(t('attributes.name_required'));
      const value = parseAttribute($('#attr-value').value);
      renderAttributes((await api('PATCH', base + '/attributes', { [name]: value })).attributes);
      attrForm.reset();
      flash(t('attributes.saved', { name }), 'ok');
    });

    // Saving desired state: only what the user changed, and only onto the
    // version the editor started from.
    onSubmit(form, async () => {
      if (!editing) throw new Error(t('error.unexpected'));
      if (!editor.value.trim()) throw new Error(t('shadow.desired_empty'));
      const wanted = parseJsonObject(editor.value, t('shadow.desired_json'));
      const patch = mergePatch(editing.desired, wanted);
      if (!Object.keys(patch).length) {
        flash(t('shadow.unchanged'), 'ok');
        return;
      }
      let doc;
      try {
        doc = await api('PATCH', base + '/shadow', { desired: patch }, { 'if-match': '"' + editing.version + '"' });
      } catch (e) {
        if (e.status !== 412) throw e;
        // Changed meanwhile: nothing was applied. Start again from now.
        await loadShadow(true);
        throw new Error(t('shadow.conflict', { version: shadow.version }));
      }
      render(doc, true);
      flash(t('shadow.saved', { version: doc.version }), 'ok');
      hist.offset = 0;
      await loadHistory();
    });
    $('#desired-reload').addEventListener('click', async () => {
      formError(form, null);
      try {
        await loadShadow(true);
      } catch (e) {
        formError(form, e);
      }
    });

    let timer = null;
    return {
      async load() {
        if (loaded) return;
        loaded = true;
        const results = await Promise.allSettled([loadShadow(true), loadHistory(), loadAttributes()]);
        const failed = results.find((r) => r.status === 'rejected');
        if (failed) flash(describe(failed.reason));
        card.dataset.loaded = 'true';
      },
      // The shadow changed (or the stream reconnected): reload what shows it.
      changed() {
        if (!loaded || timer) return;
        timer = setTimeout(() => {
          timer = null;
          loadShadow(false).catch((e) => flash(describe(e)));
          if (hist.offset === 0) loadHistory();
        }, 200);
      },
      live(on) {
        $('#shadow-live').hidden = !on;
      },
    };
  }

  pages.device = async () => {
    const id = BODY.dataset.subject;
    const base = '/api/v1/devices/' + enc(id);
    let device;
    try {
      device = await api('GET', base);
    } catch (e) {
      fill($('#main'), h('section', { class: 'card' }, h('h1', { text: t('device.title') }),
        h('p', { class: 'form-error', role: 'alert', text: describe(e) }),
        h('p', {}, h('a', { href: '/devices', text: t('nav.devices') }))));
      return;
    }
    const render = () => {
      $('#device-name').textContent = device.name;
      fill($('#device-status'), statusBadge(device.online));
      // The owner by name when the reader may look users up.
      const name = userLabel(device.owner_id);
      props($('#device-props'), [
        [t('devices.type'), device.device_type],
        [t('devices.tags'), chips(device.tags)],
        [t('devices.firmware'), device.firmware_version],
        [t('devices.last_seen'), fmtTime(device.last_seen_at)],
        [t('devices.owner'), name ? h('span', { id: 'device-owner', title: device.owner_id, text: name })
          : h('span', { id: 'device-owner', class: 'mono', text: device.owner_id })],
        [t('common.created'), fmtTime(device.created_at)],
        [t('devices.location'), locationOf(device) ? fmtNumber(locationOf(device).lat, 5) + ', ' + fmtNumber(locationOf(device).lon, 5) : null],
        [t('devices.metadata'), pre(device.metadata)],
      ]);
    };
    render();
    resolveUsers([device.owner_id], render);

    // Latest values, and the metrics the chart offers.
    const latest = new Map();
    // Chosen metrics, each with its colour for as long as the page is open.
    const chosen = new Set();
    const colors = new Map();
    const colorOf = (metric) => {
      if (!colors.has(metric)) colors.set(metric, PALETTE[colors.size % PALETTE.length]);
      return colors.get(metric);
    };
    const numeric = () => Array.from(latest.entries()).filter(([, v]) => typeof v.value === 'number' || typeof v.value === 'boolean').map(([m]) => m).sort();
    const renderPicker = () => {
      const metrics = numeric();
      const box = $('#ch-metrics');
      if (box.dataset.metrics === metrics.join()) return;
      box.dataset.metrics = metrics.join();
      if (!chosen.size && metrics.length) chosen.add(metrics.includes('temperature') ? 'temperature' : metrics[0]);
      for (const m of metrics) colorOf(m);
      fill(box, metrics.map((m) => h('label', { class: 'check metric-choice' },
        h('input', { type: 'checkbox', name: 'metric', value: m, checked: chosen.has(m), onchange: (ev) => {
          if (ev.target.checked) chosen.add(m);
          else chosen.delete(m);
          loadChart();
        } }), swatch(colorOf(m)), ' ', m)));
    };
    const renderLatest = () => {
      const dl = $('#latest-values');
      if (!latest.size) return;
      fill(dl, Array.from(latest.entries()).sort().map(([metric, v]) => [
        h('dt', { text: metric }),
        h('dd', { 'data-metric': metric }, h('strong', { text: typeof v.value === 'number' ? fmtNumber(v.value, 3) : String(v.value) }),
          ' ', h('span', { class: 'muted small', text: fmtTime(v.ts) })),
      ]));
      renderPicker();
    };
    const loadLatest = async () => {
      const l = await api('GET', base + '/telemetry/latest');
      for (const v of l.values) latest.set(v.metric, { value: v.value, ts: v.ts });
      renderLatest();
    };

    // The chart's window: a range ending now while data keeps coming,
    // else ending where the data is; a zoom narrows it until reset.
    const view = { zoom: null };
    const windowFor = () => {
      if (view.zoom) return view.zoom;
      const range = Number($('#ch-range').value) * 1000;
      const now = Date.now();
      const newest = Math.max(0, ...Array.from(latest.values()).map((v) => v.ts || 0));
      const to = newest && newest < now - range ? newest + Math.max(1000, range / 60) : now;
      return { from: to - range, to, follow: to === now };
    };
    // A young device's data fits in the last 15 minutes; an old device
    // keeps the default hour.
    const created = Date.parse(device.created_at);
    if (Number.isFinite(created) && Date.now() - created < 15 * 60000) $('#ch-range').value = '900';

    const chart = $('#chart');
    let chartBusy = false;
    let chartAgain = false;
    const loadChart = async () => {
      const metrics = Array.from(chosen).filter((m) => latest.has(m)).sort();
      if (!metrics.length) {
        chart.dataset.points = '0';
        fill(chart, h('p', { class: 'empty', text: latest.size ? t('device.pick_metric') : t('device.no_data') }));
        return;
      }
      if (chartBusy) {
        chartAgain = true;
        return;
      }
      chartBusy = true;
      try {
        const agg = $('#ch-agg').value;
        const { from, to } = windowFor();
        const secs = Math.max(1, (to - from) / 1000);
        const answers = await Promise.all(metrics.map((metric) => {
          const params = { metric, from, to };
          if (agg === 'raw') params.limit = 2000;
          else {
            params.interval = intervalFor(secs) + 's';
            params.agg = agg;
          }
          return api('GET', base + '/telemetry' + query(params));
        }));
        const series = answers.map((a, i) => ({
          key: metrics[i], label: metrics[i], color: colorOf(metrics[i]),
          points: (a.points || []).map((p) => ({ ts: p.ts, value: typeof p.value === 'boolean' ? Number(p.value) : p.value, count: p.count })),
        }));
        const what = agg === 'raw' ? t('agg.raw') : label('agg', agg);
        drawChart(chart, {
          from, to, series,
          onZoom: (a, b) => {
            view.zoom = { from: a, to: Math.max(b, a + 1000), follow: false };
            $('#zoom-reset').hidden = false;
            chart.dataset.zoomed = 'true';
            loadChart();
          },
          caption: (drawn) => {
            const last = drawn.flatMap((se) => se.points.map((p) => p.ts)).reduce((a, b) => Math.max(a, b), 0);
            const n = drawn.reduce((k, se) => k + se.points.length, 0);
            return t('device.chart_caption_multi', { n, what, from: fmtTime(from), to: fmtTime(to), when: fmtTime(last) });
          },
        });
        chart.dataset.metrics = metrics.join(',');
        chart.dataset.from = String(from);
        chart.dataset.to = String(to);
      } catch (e) {
        fill(chart, h('p', { class: 'form-error', role: 'alert', text: describe(e) }));
      } finally {
        chartBusy = false;
        if (chartAgain) {
          chartAgain = false;
          setTimeout(loadChart, 0);
        }
      }
    };
    $('#chart-form').addEventListener('change', () => {
      view.zoom = null;
      $('#zoom-reset').hidden = true;
      delete chart.dataset.zoomed;
      loadChart();
    });
    $('#chart-form').addEventListener('submit', (ev) => { ev.preventDefault(); loadChart(); });
    $('#zoom-reset').addEventListener('click', () => {
      view.zoom = null;
      $('#zoom-reset').hidden = true;
      delete chart.dataset.zoomed;
      loadChart();
    });

    // Status history and commands.
    const statusRows = $('#status-rows');
    const loadStatus = async () => {
      const items = await api('GET', base + '/status-history?limit=15');
      if (!items.length) return emptyRow(statusRows, 3);
      fill(statusRows, items.map((s) => statusRow(s.time, s.online, s.reason)));
    };
    const commandRows = $('#command-rows');
    const loadCommands = async () => {
      const list = await api('GET', base + '/commands?limit=15');
      if (!list.items.length) return emptyRow(commandRows, 5, t('commands.none'));
      fill(commandRows, list.items.map((c) => h('tr', { 'data-command': c.id },
        h('td', { text: fmtTime(c.created_at) }),
        h('td', { text: c.name }),
        h('td', {}, h('code', { text: JSON.stringify(c.params) })),
        h('td', {}, stateBadge('cstatus', c.status)),
        h('td', {}, c.error ? h('span', { class: 'bad-text', text: c.error }) : c.result !== null && c.result !== undefined ? h('code', { text: JSON.stringify(c.result) }) : '–'))));
    };

    // Overview and State tabs; the state loads when its tab is first shown,
    // a chart drawn while hidden is drawn again at its width.
    const shadowTab = deviceState(base);
    let chartDrawn = false;
    tabs($('#device-tabs'), (name) => {
      if (name === 'state') shadowTab.load();
      else if (chartDrawn) loadChart();
    });

    const results = await Promise.allSettled([loadLatest(), loadStatus(), loadCommands()]);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) flash(describe(failed.reason));
    await loadChart();
    chartDrawn = true;

    // Live updates.
    let chartTimer = null;
    openStream(base + '/stream', {
      up: () => {
        $('#live-indicator').hidden = false;
        shadowTab.live(true);
        // Changes made while the stream was down.
        shadowTab.changed();
      },
      down: () => {
        $('#live-indicator').hidden = true;
        shadowTab.live(false);
      },
      shadow: () => shadowTab.changed(),
      telemetry: (m) => {
        const ts = Date.parse(m.ts) || Date.now();
        for (const [metric, value] of Object.entries(m.values || {})) latest.set(metric, { value, ts });
        renderLatest();
        // A zoomed or past window stays where it is.
        if (!chartTimer && windowFor().follow) chartTimer = setTimeout(() => { chartTimer = null; loadChart(); }, 2000);
      },
      status: (s) => {
        device.online = s.online;
        device.last_seen_at = s.at;
        render();
        statusRows.prepend(statusRow(s.at, s.online, s.reason));
      },
      command_response: () => { loadCommands().catch(() => {}); },
    });

    // Commands.
    const cmdForm = $('#command-form');
    const result = $('#command-result');
    onSubmit(cmdForm, async () => {
      const name = $('#cmd-name').value.trim();
      // A previous answer must not stand for this command.
      result.hidden = true;
      delete result.dataset.status;
      result.replaceChildren();
      if (!name) throw new Error(t('error.name_required'));
      const params = parseJsonObject($('#cmd-params').value, t('commands.params'));
      const timeout = Math.min(30, Math.max(1, Number($('#cmd-timeout').value) || 10));
      result.hidden = false;
      fill(result, h('p', { class: 'muted', text: t('commands.waiting', { secs: timeout }) }));
      try {
        const c = await api('POST', base + '/commands?wait=true', { name, params, timeout_s: timeout });
        fill(result,
          h('p', {}, t('commands.answer') + ' ', stateBadge('cstatus', c.status)),
          c.error ? h('p', { class: 'bad-text', text: c.error }) : null,
          c.result !== null && c.result !== undefined ? pre(c.result) : null);
        result.dataset.status = c.status;
      } catch (e) {
        result.hidden = true;
        throw e;
      } finally {
        loadCommands().catch(() => {});
      }
    });

    // Edit, rotate, delete.
    const editForm = $('#edit-form');
    const editToggle = $('#edit-device');
    editToggle.addEventListener('click', () => {
      $('#e-name').value = device.name;
      $('#e-tags').value = (device.tags || []).join(', ');
      $('#e-meta').value = JSON.stringify(device.metadata || {}, null, 2);
      panel('edit-panel', $('#edit-panel').hidden, editToggle);
    });
    $('.cancel', editForm).addEventListener('click', () => panel('edit-panel', false, editToggle));
    onSubmit(editForm, async () => {
      device = await api('PATCH', base, {
        name: $('#e-name').value.trim(),
        tags: parseTags($('#e-tags').value),
        metadata: parseJsonObject($('#e-meta').value, t('devices.metadata')),
      });
      render();
      panel('edit-panel', false, editToggle);
      flash(t('devices.saved'), 'ok');
    });
    wireCopyButtons(document);
    // Handing the device to another owner: administrators only.
    const isAdmin = !!ME && (ME.is_superuser || (ME.roles || []).some((r) => r.name === 'admin'));
    const transferToggle = $('#transfer-device');
    const transferForm = $('#transfer-form');
    transferToggle.hidden = !isAdmin;
    transferToggle.addEventListener('click', async () => {
      const opening = $('#transfer-panel').hidden;
      if (opening) {
        try {
          const users = (await api('GET', '/api/v1/users?limit=500')).items;
          fill($('#t-owner'), users.map((u) => h('option', { value: u.id, text: u.username, selected: u.id === device.owner_id })));
        } catch (e) {
          flash(describe(e));
          return;
        }
      }
      panel('transfer-panel', opening, transferToggle);
    });
    $('.cancel', transferForm).addEventListener('click', () => panel('transfer-panel', false, transferToggle));
    onSubmit(transferForm, async () => {
      const select = $('#t-owner');
      device = await api('PUT', base + '/owner', { owner_id: select.value });
      render();
      resolveUsers([device.owner_id], render);
      panel('transfer-panel', false, transferToggle);
      flash(t('devices.transferred', { name: device.name, owner: select.selectedOptions[0].textContent }), 'ok');
    });

    $('#rotate-secret').addEventListener('click', async () => {
      if (!(await confirmAction(t('devices.rotate_confirm', { id })))) return;
      try {
        showCredentials(await api('POST', base + '/secret'));
      } catch (e) {
        flash(describe(e));
      }
    });
    $('#delete-device').addEventListener('click', async () => {
      if (!(await confirmAction(t('devices.delete_confirm', { id })))) return;
      try {
        await api('DELETE', base);
        location.assign('/devices?deleted=' + enc(id));
      } catch (e) {
        flash(describe(e));
      }
    });
  };

  // ----------------------------------------------------------- shadow jobs

  // "name=value" lines: the server attributes a job's devices must have.
  function parseAttributeLines(text) {
    const out = {};
    for (const line of text.split('\n').map((l) => l.trim()).filter(Boolean)) {
      const at = line.indexOf('=');
      const name = at > 0 ? line.slice(0, at).trim() : '';
      if (!name) throw new Error(t('jobs.bad_attribute', { line }));
      out[name] = line.slice(at + 1).trim();
    }
    return out;
  }

  pages.shadow_jobs = async () => {
    const state = { offset: 0, limit: 25 };
    const tbody = $('#job-rows');
    let timer = null;
    let shown = [];
    const render = () => {
      if (!shown.length) return emptyRow(tbody, 6, t('jobs.none'));
      fill(tbody, shown.map((j) => h('tr', { 'data-job': j.id, 'data-status': j.status },
        h('td', {}, h('a', { href: '/shadow-jobs/' + enc(j.id), text: fmtTime(j.created_at) })),
        h('td', {}, h('code', { text: JSON.stringify(j.desired) })),
        h('td', { text: describeTarget(j.target) }),
        h('td', {}, stateBadge('jstate', j.status)),
        h('td', {}, jobBar(j.progress, true)),
        h('td', {}, userCell(j.created_by)))));
      return undefined;
    };
    const load = async () => {
      clearTimeout(timer);
      try {
        const list = await api('GET', '/api/v1/shadow-jobs' + query({ limit: state.limit, offset: state.offset }));
        shown = list.items;
        render();
        resolveUsers(shown.map((j) => j.created_by), render);
        pager(state, list.total, load);
        if (shown.some((j) => j.status === 'running')) timer = setTimeout(load, 3000);
      } catch (e) {
        emptyRow(tbody, 6, describe(e));
        pagerOff();
      }
    };
    await load();

    const toggle = $('#new-job');
    const form = $('#job-form');
    toggle.addEventListener('click', () => panel('job-panel', $('#job-panel').hidden, toggle));
    $('.cancel', form).addEventListener('click', () => panel('job-panel', false, toggle));
    onSubmit(form, async () => {
      const desired = parseJsonObject($('#j-desired').value, t('jobs.desired'));
      if (!Object.keys(desired).length) throw new Error(t('jobs.desired_required'));
      const target = {};
      const tag = $('#j-tag').value.trim();
      if (tag) target.tag = tag;
      const type = $('#j-type').value.trim();
      if (type) target.type = type;
      const attributes = parseAttributeLines($('#j-attributes').value);
      if (Object.keys(attributes).length) target.attributes = attributes;
      const ids = $('#j-ids').value.split(/[\s,]+/).filter(Boolean);
      if (ids.length) target.device_ids = ids;
      if (!Object.keys(target).length) throw new Error(t('jobs.target_required'));
      const body = { desired, target };
      const rate = $('#j-rate').value.trim();
      if (rate) body.rate_per_second = Number(rate);
      const created = await api('POST', '/api/v1/shadow-jobs', body);
      location.assign('/shadow-jobs/' + enc(created.id));
    });
  };

  pages.shadow_job = async () => {
    const id = BODY.dataset.subject;
    const base = '/api/v1/shadow-jobs/' + enc(id);
    let timer = null;
    let job = null;
    const render = () => {
      const j = job;
      const status = $('#job-status');
      fill(status, stateBadge('jstate', j.status));
      status.dataset.status = j.status;
      const p = j.progress;
      showBar('job-bar', jobBar(p, false), $('#job-legend'), t('jobs.targeted'), p.targeted);
      const card = $('#job-progress');
      for (const key of ['targeted', 'delivered', 'converged', 'pending', 'failed']) card.dataset[key] = String(p[key]);
      $('#job-desired').textContent = JSON.stringify(j.desired, null, 2);
      props($('#job-props'), [
        [t('jobs.target'), describeTarget(j.target)],
        [t('jobs.rate'), j.rate_per_second ? t('jobs.rate_value', { n: j.rate_per_second }) : t('jobs.unlimited')],
        [t('jobs.created_by'), userCell(j.created_by)],
        [t('common.created'), fmtTime(j.created_at)],
        [t('jobs.finished'), fmtTime(j.finished_at)],
      ]);
      const running = j.status === 'running';
      $('#cancel-job').hidden = !(running && can('device:write'));
      $('#live-indicator').hidden = !running;
    };
    // The job's devices, by id, of the state chosen.
    const devices = { offset: 0, limit: 25 };
    const deviceRows = $('#job-device-rows');
    const loadDevices = async () => {
      try {
        const list = await api('GET', base + '/devices' + query({
          state: $('#jd-state').value, limit: devices.limit, offset: devices.offset,
        }));
        if (!list.items.length) emptyRow(deviceRows, 3, t('jobs.no_devices'));
        else {
          fill(deviceRows, list.items.map((d) => h('tr', { 'data-device': d.device_id, 'data-state': d.state },
            h('td', {}, h('a', { href: '/devices/' + enc(d.device_id) + '#state', text: d.device_id })),
            h('td', {}, stateBadge('jobbar', d.state)),
            h('td', { text: fmtTime(d.updated_at) }))));
        }
        pager(devices, list.total, loadDevices);
      } catch (e) {
        flash(describe(e));
      }
    };
    $('#jd-state').addEventListener('change', () => { devices.offset = 0; loadDevices(); });
    // Reloaded every 2 s while the job runs.
    const load = async () => {
      clearTimeout(timer);
      try {
        job = await api('GET', base);
      } catch (e) {
        flash(describe(e));
        return;
      }
      render();
      await loadDevices();
      resolveUsers([job.created_by], render);
      if (job.status === 'running') timer = setTimeout(load, 2000);
    };
    await load();
    $('#cancel-job').addEventListener('click', async () => {
      if (!(await confirmAction(t('jobs.cancel_confirm')))) return;
      try {
        await api('POST', base + '/cancel');
        flash(t('jobs.cancelled'), 'ok');
      } catch (e) {
        flash(describe(e));
      }
      await load();
    });
  };

  // -------------------------------------------------------------- firmware

  pages.firmware = async () => {
    const state = { offset: 0, limit: 25, filters: {} };
    const tbody = $('#firmware-rows');
    const load = async () => {
      try {
        const list = await api('GET', '/api/v1/firmware' + query({
          device_type: state.filters.device_type, limit: state.limit, offset: state.offset,
        }));
        if (!list.items.length) emptyRow(tbody, 8, t('firmware.none'));
        else {
          fill(tbody, list.items.map((f) => h('tr', { 'data-firmware': f.id },
            h('td', { text: f.name }),
            h('td', {}, h('strong', { text: f.version })),
            h('td', { text: f.device_type }),
            h('td', { text: fmtBytes(f.size) }),
            h('td', {}, h('code', { class: 'hash', title: f.sha256, text: f.sha256.slice(0, 12) + '…' })),
            h('td', {}, f.signed ? badge(t('firmware.signed'), 'ok') : badge(t('firmware.unsigned'), 'muted')),
            h('td', { text: fmtTime(f.created_at) }),
            h('td', {}, can('firmware:write')
              ? h('button', {
                type: 'button', class: 'danger small', 'aria-label': t('firmware.delete_label', { name: f.name, version: f.version }),
                onclick: async () => {
                  if (!(await confirmAction(t('firmware.delete_confirm', { name: f.name, version: f.version })))) return;
                  try {
                    await api('DELETE', '/api/v1/firmware/' + enc(f.id));
                    flash(t('firmware.deleted'), 'ok');
                    load();
                  } catch (e) {
                    flash(describe(e));
                  }
                },
              }, t('common.delete'))
              : null))));
        }
        pager(state, list.total, load);
      } catch (e) {
        emptyRow(tbody, 8, describe(e));
        pagerOff();
      }
    };
    filterForm(state, load);
    await load();

    const toggle = $('#new-firmware');
    const form = $('#upload-form');
    toggle.addEventListener('click', () => panel('upload-panel', $('#upload-panel').hidden, toggle));
    $('.cancel', form).addEventListener('click', () => panel('upload-panel', false, toggle));
    onSubmit(form, async () => {
      const file = $('#u-file').files[0];
      if (!file) throw new Error(t('firmware.file_required'));
      const data = new FormData();
      // The fields must come before the file.
      for (const name of ['name', 'device_type', 'version', 'release_notes', 'signature']) {
        const v = form.elements[name].value.trim();
        if (v) data.append(name, v);
      }
      data.append('file', file, file.name);
      const row = $('#upload-progress-row');
      const bar = $('#upload-progress');
      const pct = $('#upload-percent');
      row.hidden = false;
      bar.value = 0;
      pct.textContent = '0 %';
      const created = await upload('/api/v1/firmware', data, (p) => {
        bar.value = p;
        pct.textContent = p + ' %';
      });
      form.reset();
      row.hidden = true;
      panel('upload-panel', false, toggle);
      flash(t('firmware.uploaded', { name: created.name, version: created.version }), 'ok');
      await load();
    });
  };

  // fetch() cannot report upload progress; XMLHttpRequest can.
  function upload(path, data, onProgress) {
    const send = () => new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open('POST', path);
      if (Session.access) xhr.setRequestHeader('authorization', 'Bearer ' + Session.access);
      xhr.upload.addEventListener('progress', (ev) => {
        if (ev.lengthComputable) onProgress(Math.round((ev.loaded / ev.total) * 100));
      });
      xhr.addEventListener('load', () => resolve(xhr));
      xhr.addEventListener('error', () => reject(new ApiError(0, 'network', '')));
      xhr.send(data);
    });
    const asError = (xhr) => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      const e = body && body.error ? body.error : {};
      return new ApiError(xhr.status, e.code || 'http_' + xhr.status, e.message || '', e.request_id, xhr.getResponseHeader('retry-after'));
    };
    return (async () => {
      if (Session.expiresAt - Date.now() < 60000) await refreshTokens().catch(() => {});
      let xhr = await send();
      if (xhr.status === 401) {
        await refreshTokens().catch((e) => { sessionExpired(); throw e; });
        xhr = await send();
      }
      if (xhr.status < 200 || xhr.status >= 300) throw asError(xhr);
      onProgress(100);
      return JSON.parse(xhr.responseText);
    })();
  }

  // -------------------------------------------------------------- rollouts

  // A rollout's or shadow job's target: its filters, each of which must
  // match.
  function describeTarget(target) {
    if (!target) return '–';
    const parts = [];
    if (target.tag) parts.push(t('rollouts.target_tag', { tag: target.tag }));
    const type = target.device_type || target.type;
    if (type) parts.push(t('rollouts.target_type', { type }));
    for (const [name, value] of Object.entries(target.attributes || {})) parts.push(t('target.attribute', { name, value }));
    if (target.device_ids && target.device_ids.length) parts.push(t('rollouts.target_devices', { n: target.device_ids.length }));
    return parts.length ? parts.join(' · ') : JSON.stringify(target);
  }

  const ACTIVE_ROLLOUT = ['scheduled', 'running', 'paused'];

  pages.rollouts = async () => {
    const state = { offset: 0, limit: 25, filters: {} };
    const tbody = $('#rollout-rows');
    let timer = null;
    const load = async () => {
      clearTimeout(timer);
      try {
        const list = await api('GET', '/api/v1/rollouts' + query({ state: state.filters.state, limit: state.limit, offset: state.offset }));
        if (!list.items.length) emptyRow(tbody, 6, t('rollouts.none'));
        else {
          fill(tbody, list.items.map((r) => h('tr', {},
            h('td', {}, h('a', { href: '/rollouts/' + enc(r.id), text: r.name })),
            h('td', { text: r.firmware_version }),
            h('td', { text: describeTarget(r.target) }),
            h('td', {}, stateBadge('rstate', r.state)),
            h('td', {}, progressBar(r.counts, r.total, true)),
            h('td', { text: fmtTime(r.created_at) }))));
        }
        pager(state, list.total, load);
        if (list.items.some((r) => ACTIVE_ROLLOUT.includes(r.state))) timer = setTimeout(load, 3000);
      } catch (e) {
        emptyRow(tbody, 6, describe(e));
        pagerOff();
      }
    };
    filterForm(state, load);
    await load();

    const toggle = $('#new-rollout');
    const form = $('#rollout-form');
    toggle.addEventListener('click', async () => {
      const open = $('#rollout-panel').hidden;
      if (open) {
        try {
          const fw = await api('GET', '/api/v1/firmware?limit=200');
          const select = $('#r-firmware');
          fill(select, fw.items.map((f) => h('option', { value: f.id, 'data-type': f.device_type, text: `${f.name} ${f.version} (${f.device_type})` })));
          if (!fw.items.length) fill(select, h('option', { value: '', text: t('firmware.none') }));
        } catch (e) {
          flash(describe(e));
        }
      }
      panel('rollout-panel', open, toggle);
    });
    $('.cancel', form).addEventListener('click', () => panel('rollout-panel', false, toggle));
    onSubmit(form, async () => {
      const kind = form.elements.target_kind.value;
      const raw = $('#r-target').value.trim();
      const target = {};
      if (kind === 'device_ids') target.device_ids = raw.split(/[\s,]+/).filter(Boolean);
      else if (kind === 'device_type') {
        const selected = $('#r-firmware').selectedOptions[0];
        target.device_type = raw || (selected ? selected.dataset.type : '');
      } else target.tag = raw;
      if ((kind === 'tag' && !raw) || (kind === 'device_ids' && !target.device_ids.length)) throw new Error(t('rollouts.target_required'));
      const created = await api('POST', '/api/v1/rollouts', {
        name: $('#r-name').value.trim(),
        firmware_id: $('#r-firmware').value,
        target,
        rate_per_minute: Number($('#r-rate').value) || 0,
        failure_threshold_percent: Number($('#r-threshold').value),
        timeout_secs: Number($('#r-timeout').value) || 600,
        max_retries: Number($('#r-retries').value) || 0,
      });
      location.assign('/rollouts/' + enc(created.id));
    });
  };

  pages.rollout = async () => {
    const id = BODY.dataset.subject;
    const base = '/api/v1/rollouts/' + enc(id);
    let timer = null;
    let rollout = null;
    const load = async () => {
      clearTimeout(timer);
      try {
        rollout = await api('GET', base);
      } catch (e) {
        flash(describe(e));
        return;
      }
      const r = rollout;
      $('#rollout-name').textContent = r.name;
      fill($('#rollout-state'), stateBadge('rstate', r.state));
      $('#rollout-state').dataset.state = r.state;
      showBar('rollout-bar', progressBar(r.counts, r.total, false), $('#rollout-legend'), t('rollouts.total'), r.total);
      const reason = $('#rollout-reason');
      reason.hidden = !r.reason;
      reason.textContent = r.reason || '';
      props($('#rollout-props'), [
        [t('rollouts.version'), r.firmware_version],
        [t('devices.type'), r.device_type],
        [t('rollouts.target'), describeTarget(r.target)],
        [t('rollouts.rate'), r.rate_per_minute ? String(r.rate_per_minute) : t('rollouts.unlimited')],
        [t('rollouts.threshold'), fmtNumber(r.failure_threshold_percent, 1) + ' %'],
        [t('rollouts.timeout'), r.timeout_secs + ' s'],
        [t('rollouts.retries'), String(r.max_retries)],
        [t('common.created'), fmtTime(r.created_at)],
        [t('rollouts.started'), fmtTime(r.started_at)],
        [t('rollouts.finished'), fmtTime(r.finished_at)],
      ]);
      const deploy = can('firmware:deploy');
      $('#pause-rollout').hidden = !(deploy && (r.state === 'running' || r.state === 'scheduled'));
      $('#resume-rollout').hidden = !(deploy && r.state === 'paused');
      $('#cancel-rollout').hidden = !(deploy && ACTIVE_ROLLOUT.includes(r.state));
      try {
        const ex = await api('GET', base + '/executions?limit=200');
        const rows = ex.items;
        const failing = rows.filter((e) => ['failed', 'timed_out', 'rejected'].includes(e.state));
        if (!failing.length) emptyRow($('#failing-rows'), 4, t('rollouts.no_failures'));
        else {
          fill($('#failing-rows'), failing.map((e) => h('tr', {},
            h('td', {}, h('a', { href: '/devices/' + enc(e.device_id), text: e.device_id })),
            h('td', {}, stateBadge('estate', e.state)),
            h('td', { text: e.attempts }),
            h('td', { text: e.error || '–' }))));
        }
        if (!rows.length) emptyRow($('#execution-rows'), 6);
        else {
          fill($('#execution-rows'), rows.map((e) => h('tr', {},
            h('td', {}, h('a', { href: '/devices/' + enc(e.device_id), text: e.device_id })),
            h('td', {}, stateBadge('estate', e.state)),
            h('td', { text: e.progress === null || e.progress === undefined ? '–' : fmtNumber(e.progress, 0) + ' %' }),
            h('td', { text: e.attempts }),
            h('td', { text: e.reported_version || '–' }),
            h('td', { text: fmtTime(e.updated_at) }))));
        }
      } catch (e) {
        flash(describe(e));
      }
      const live = ACTIVE_ROLLOUT.includes(r.state);
      $('#live-indicator').hidden = !live;
      if (live) timer = setTimeout(load, 2000);
    };
    await load();
    const act = (button, action, confirmKey) => {
      $(button).addEventListener('click', async () => {
        if (confirmKey && !(await confirmAction(t(confirmKey, { name: rollout ? rollout.name : id })))) return;
        try {
          await api('POST', base + '/' + action);
          await load();
        } catch (e) {
          flash(describe(e));
        }
      });
    };
    act('#pause-rollout', 'pause');
    act('#resume-rollout', 'resume');
    act('#cancel-rollout', 'cancel', 'rollouts.cancel_confirm');
  };

  // ---------------------------------------------------------- administration

  pages.users = async () => {
    const state = { offset: 0, limit: 25, filters: {} };
    const tbody = $('#user-rows');
    let roles = [];
    try {
      roles = (await api('GET', '/api/v1/roles')).items;
    } catch (e) {
      flash(describe(e));
    }
    const roleChecks = (container, selected, prefix) => fill(container, roles.map((r) => h('label', { class: 'check' },
      h('input', { type: 'checkbox', name: 'roles', value: r.name, id: prefix + r.name, checked: selected.includes(r.name) }), ' ', r.name)));
    let editing = null;
    const load = async () => {
      try {
        const list = await api('GET', '/api/v1/users' + query({ q: state.filters.q, is_active: state.filters.is_active, limit: state.limit, offset: state.offset }));
        if (!list.items.length) emptyRow(tbody, 7);
        else {
          fill(tbody, list.items.map((u) => h('tr', { 'data-user': u.username },
            h('td', {}, h('strong', { text: u.username }), u.is_superuser ? [' ', badge(t('account.superuser'), 'info')] : null),
            h('td', { text: u.email }),
            h('td', { text: u.full_name || '–' }),
            h('td', {}, chips(u.roles.map((r) => r.name))),
            h('td', {}, u.is_active ? badge(t('users.enabled'), 'ok') : badge(t('users.disabled'), 'muted')),
            h('td', { text: fmtTime(u.last_login_at) }),
            h('td', { class: 'row-actions' },
              h('button', { type: 'button', class: 'small', onclick: () => toggleActive(u) }, u.is_active ? t('users.disable') : t('users.enable')),
              h('button', { type: 'button', class: 'small', onclick: () => openRoles(u) }, t('users.roles')),
              h('button', { type: 'button', class: 'small', onclick: () => openReset(u) }, t('users.reset_password')),
              h('button', { type: 'button', class: 'small danger', onclick: () => remove(u) }, t('common.delete'))))));
        }
        pager(state, list.total, load);
      } catch (e) {
        emptyRow(tbody, 7, describe(e));
        pagerOff();
      }
    };
    const toggleActive = async (u) => {
      if (u.is_active && !(await confirmAction(t('users.disable_confirm', { name: u.username })))) return;
      try {
        await api('POST', '/api/v1/users/' + enc(u.id) + (u.is_active ? '/disable' : '/enable'));
        flash(t(u.is_active ? 'users.disabled_ok' : 'users.enabled_ok', { name: u.username }), 'ok');
        load();
      } catch (e) {
        flash(describe(e));
      }
    };
    const remove = async (u) => {
      if (!(await confirmAction(t('users.delete_confirm', { name: u.username })))) return;
      try {
        await api('DELETE', '/api/v1/users/' + enc(u.id));
        flash(t('users.deleted', { name: u.username }), 'ok');
        load();
      } catch (e) {
        flash(describe(e));
      }
    };
    const openRoles = (u) => {
      editing = u;
      $('#roles-panel-title').textContent = t('users.assign_roles_for', { name: u.username });
      roleChecks($('#a-roles'), u.roles.map((r) => r.name), 'a-role-');
      panel('roles-panel', true);
    };
    const openReset = (u) => {
      editing = u;
      $('#reset-panel-title').textContent = t('users.reset_password_for', { name: u.username });
      $('#r-password').value = '';
      panel('reset-panel', true);
    };
    filterForm(state, load);
    await load();

    const toggle = $('#new-user');
    const form = $('#user-form');
    toggle.addEventListener('click', () => {
      roleChecks($('#n-roles'), ['viewer'], 'n-role-');
      panel('user-panel', $('#user-panel').hidden, toggle);
    });
    for (const id of ['user-panel', 'roles-panel', 'reset-panel']) {
      $('.cancel', document.getElementById(id)).addEventListener('click', () => panel(id, false, id === 'user-panel' ? toggle : null));
    }
    const checked = (container) => $$('input[name=roles]:checked', container).map((i) => i.value);
    onSubmit(form, async () => {
      const body = {
        username: $('#n-username').value.trim(),
        email: $('#n-email').value.trim(),
        password: $('#n-password').value,
        full_name: $('#n-fullname').value.trim(),
        roles: checked($('#n-roles')),
      };
      await api('POST', '/api/v1/users', body);
      form.reset();
      panel('user-panel', false, toggle);
      flash(t('users.created', { name: body.username }), 'ok');
      load();
    });
    onSubmit($('#roles-form'), async () => {
      await api('PUT', '/api/v1/users/' + enc(editing.id) + '/roles', { roles: checked($('#a-roles')) });
      panel('roles-panel', false);
      flash(t('users.roles_saved', { name: editing.username }), 'ok');
      load();
    });
    onSubmit($('#reset-form'), async () => {
      await api('PUT', '/api/v1/users/' + enc(editing.id) + '/password', { new_password: $('#r-password').value });
      panel('reset-panel', false);
      flash(t('users.password_reset', { name: editing.username }), 'ok');
    });
  };

  pages.roles = async () => {
    const tbody = $('#role-rows');
    let permissions = [];
    let editing = null;
    const manage = can('role:manage');
    const load = async () => {
      try {
        const [list, perms] = await Promise.all([api('GET', '/api/v1/roles'), api('GET', '/api/v1/permissions')]);
        permissions = perms.items;
        fill(tbody, list.items.map((r) => h('tr', { 'data-role': r.name },
          h('td', {}, h('strong', { text: r.name }), r.is_system ? [' ', badge(t('roles.builtin'), 'muted')] : null),
          h('td', { text: r.description || '–' }),
          h('td', { 'data-scope': r.scope }, badge(t('roles.scope_' + r.scope), r.scope === 'own' ? 'warn' : 'muted')),
          h('td', {}, chips(r.permissions)),
          h('td', { class: 'row-actions' }, manage ? [
            h('button', { type: 'button', class: 'small', onclick: () => openPerms(r) }, t('roles.edit_permissions')),
            r.is_system ? null : h('button', { type: 'button', class: 'small danger', onclick: () => remove(r) }, t('common.delete')),
          ] : null))));
      } catch (e) {
        emptyRow(tbody, 5, describe(e));
      }
    };
    const openPerms = (r) => {
      editing = r;
      $('#pe-scope').value = r.scope;
      $('#pe-scope').disabled = r.is_system && r.name === 'admin';
      $('#perm-panel-title').textContent = t('roles.edit_permissions_for', { name: r.name });
      fill($('#perm-checks'), permissions.map((p) => h('label', { class: 'check', title: p.description },
        h('input', { type: 'checkbox', name: 'perm', value: p.code, checked: r.permissions.includes(p.code) }), ' ', h('code', { text: p.code }), ' ', h('span', { class: 'muted small', text: p.description }))));
      panel('perm-panel', true);
    };
    const remove = async (r) => {
      if (!(await confirmAction(t('roles.delete_confirm', { name: r.name })))) return;
      try {
        await api('DELETE', '/api/v1/roles/' + enc(r.id));
        flash(t('roles.deleted', { name: r.name }), 'ok');
        load();
      } catch (e) {
        flash(describe(e));
      }
    };
    await load();
    const toggle = $('#new-role');
    const form = $('#role-form');
    toggle.addEventListener('click', () => panel('role-panel', $('#role-panel').hidden, toggle));
    $('.cancel', form).addEventListener('click', () => panel('role-panel', false, toggle));
    $('.cancel', $('#perm-form')).addEventListener('click', () => panel('perm-panel', false));
    onSubmit(form, async () => {
      await api('POST', '/api/v1/roles', { name: $('#ro-name').value.trim(), description: $('#ro-desc').value.trim(), scope: $('#ro-scope').value });
      form.reset();
      panel('role-panel', false, toggle);
      load();
    });
    onSubmit($('#perm-form'), async () => {
      const codes = $$('input[name=perm]:checked', $('#perm-form')).map((i) => i.value);
      const scope = $('#pe-scope').value;
      if (scope !== editing.scope) await api('PATCH', '/api/v1/roles/' + enc(editing.id), { scope });
      if (codes.join() !== editing.permissions.join()) {
        await api('PUT', '/api/v1/roles/' + enc(editing.id) + '/permissions', { permissions: codes });
      }
      panel('perm-panel', false);
      flash(t('roles.saved', { name: editing.name }), 'ok');
      load();
    });
  };

  pages.audit = async () => {
    const state = { offset: 0, limit: 50, filters: {} };
    const tbody = $('#audit-rows');
    const load = async () => {
      try {
        const f = state.filters;
        const list = await api('GET', '/api/v1/audit-logs' + query({ action: f.action, actor: f.actor, target: f.target, outcome: f.outcome, limit: state.limit, offset: state.offset }));
        if (!list.items.length) emptyRow(tbody, 6);
        else {
          fill(tbody, list.items.map((a) => h('tr', {},
            h('td', { text: fmtTime(a.time) }),
            h('td', { text: a.actor_username || '–' }),
            h('td', {}, h('code', { text: a.action })),
            h('td', { text: a.target || '–' }),
            h('td', {}, stateBadge('outcome', a.outcome)),
            h('td', { text: a.client_ip || '–' }))));
        }
        pager(state, list.total, load);
      } catch (e) {
        emptyRow(tbody, 6, describe(e));
        pagerOff();
      }
    };
    filterForm(state, load);
    await load();
  };

  // ================================================================= start

  function wireLanguageLinks() {
    for (const a of $$('[data-lang-switch]')) {
      a.href = '/lang/' + a.dataset.langSwitch + '?next=' + enc(location.pathname + location.search + location.hash);
    }
  }

  async function start() {
    wireLanguageLinks();
    if (PAGE === 'login') return pages.login();
    if (!Session.refresh) {
      if (PAGE === 'not_found') return undefined;
      location.replace('/login?next=' + enc(location.pathname + location.search));
      return undefined;
    }
    try {
      ME = await api('GET', '/api/v1/auth/me');
    } catch (e) {
      if (e.status !== 401) flash(describe(e));
      return undefined;
    }
    const who = $('#whoami');
    if (who) {
      who.textContent = ME.username;
      if (ME.full_name) who.title = ME.full_name;
    }
    applyPermissions(document);
    const logout = $('#logout');
    if (logout) {
      logout.addEventListener('click', async () => {
        const token = Session.refresh;
        Session.clear();
        try {
          await fetch('/api/v1/auth/logout', {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ refresh_token: token }),
          });
        } finally {
          location.assign('/login?logged_out=1');
        }
      });
    }
    scheduleRefresh();
    BODY.classList.add('ready');
    const fn = pages[PAGE];
    if (fn) {
      try {
        await fn();
      } catch (e) {
        flash(describe(e));
      }
    }
    BODY.dataset.loaded = 'true';
    return undefined;
  }

  start().finally(() => {
    if (PAGE === 'login' || !BODY.dataset.loaded) BODY.dataset.loaded = 'true';
  });
})();
