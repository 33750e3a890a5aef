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

  function fmtTime(value) {
    if (value === null || value === undefined || value === '') return '–';
    const d = typeof value === 'number' ? new Date(value) : new Date(String(value));
    if (Number.isNaN(d.getTime())) return String(value);
    return d.toLocaleString(LANG, { dateStyle: 'short', timeStyle: 'medium' });
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
    paused: 'warn', pending: 'muted', queued: 'muted', scheduled: 'muted', canceled: 'muted',
  };

  function stateBadge(prefix, state) {
    return badge(label(prefix, state), STATE_KIND[state] || '');
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

  async function api(method, path, body) {
    const send = () => {
      const headers = {};
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

  function intervalFor(rangeSecs) {
    const ideal = rangeSecs / 120;
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

  // A line chart of [{ts, value}] between from and to (ms), drawn as SVG.
  function drawChart(container, points, from, to, unitLabel) {
    const NS = 'http://www.w3.org/2000/svg';
    const s = (tag, attrs, ...children) => {
      const el = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
      for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
      return el;
    };
    const data = points.filter((p) => typeof p.value === 'number' && Number.isFinite(p.value));
    if (data.length === 0) {
      fill(container, h('p', { class: 'empty', text: t('device.no_data') }));
      container.dataset.points = '0';
      return;
    }
    const width = Math.max(320, container.clientWidth || 800);
    const height = 260;
    const m = { l: 56, r: 16, t: 12, b: 30 };
    const values = data.map((p) => p.value);
    const ticks = niceTicks(Math.min(...values), Math.max(...values), 5);
    const y0 = ticks[0];
    const y1 = ticks[ticks.length - 1];
    const x = (ts) => m.l + ((ts - from) / Math.max(1, to - from)) * (width - m.l - m.r);
    const y = (v) => m.t + (1 - (v - y0) / Math.max(1e-12, y1 - y0)) * (height - m.t - m.b);
    const svg = s('svg', { viewBox: `0 0 ${width} ${height}`, width, height, class: 'chart-svg', 'aria-hidden': 'true' });
    for (const tv of ticks) {
      svg.append(s('line', { x1: m.l, x2: width - m.r, y1: y(tv), y2: y(tv), class: 'grid' }));
      svg.append(s('text', { x: m.l - 6, y: y(tv) + 4, 'text-anchor': 'end', class: 'tick' }, fmtNumber(tv, 2)));
    }
    const span = to - from;
    const timeFmt = span > 2 * 86400000
      ? { month: 'short', day: 'numeric' }
      : { hour: '2-digit', minute: '2-digit' };
    for (let i = 0; i <= 5; i += 1) {
      const ts = from + (span * i) / 5;
      svg.append(s('text', { x: x(ts), y: height - 8, 'text-anchor': i === 0 ? 'start' : i === 5 ? 'end' : 'middle', class: 'tick' },
        new Date(ts).toLocaleString(LANG, timeFmt)));
    }
    svg.append(s('line', { x1: m.l, x2: m.l, y1: m.t, y2: height - m.b, class: 'axis' }));
    svg.append(s('line', { x1: m.l, x2: width - m.r, y1: height - m.b, y2: height - m.b, class: 'axis' }));
    const d = data.map((p, i) => (i === 0 ? 'M' : 'L') + x(p.ts).toFixed(1) + ',' + y(p.value).toFixed(1)).join(' ');
    svg.append(s('path', { d, class: 'line' }));
    if (data.length <= 150) {
      for (const p of data) {
        svg.append(s('circle', { cx: x(p.ts).toFixed(1), cy: y(p.value).toFixed(1), r: 2.5, class: 'dot' },
          s('title', {}, fmtTime(p.ts) + ' · ' + fmtNumber(p.value, 3) + (p.count ? ' (n=' + p.count + ')' : ''))));
      }
    }
    const last = data[data.length - 1];
    fill(container, svg, h('p', { class: 'chart-caption muted' },
      t('device.chart_caption', { n: data.length, last: fmtNumber(last.value, 3), when: fmtTime(last.ts), what: unitLabel })));
    container.dataset.points = String(data.length);
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
      let pending = null;
      openStream('/api/v1/devices/stream?rate_secs=2', {
        rate: (r) => { $('#stat-rate').textContent = fmtNumber(r.telemetry_per_sec, 1); },
        status: () => {
          if (pending) return;
          pending = setTimeout(() => { pending = null; summary().catch(() => {}); }, 500);
        },
      });
      tasks.push(recentCommands());
    }
    if (can('firmware:read')) tasks.push(recentRollouts());
    const results = await Promise.allSettled(tasks);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) flash(describe(failed.reason));
  };

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

  function progressBar(counts, total, small) {
    const bar = h('div', { class: 'stackbar' + (small ? ' small' : ''), role: 'img' });
    const parts = [];
    for (const [name, states] of BAR_PARTS) {
      const n = states.reduce((sum, s) => sum + ((counts || {})[s] || 0), 0);
      if (n > 0) {
        const seg = h('span', { class: 'seg seg-' + name, title: label('bar', name) + ': ' + n });
        seg.style.width = ((n / Math.max(1, total)) * 100).toFixed(2) + '%';
        bar.append(seg);
      }
      parts.push([name, n]);
    }
    const done = (counts || {}).succeeded || 0;
    bar.setAttribute('aria-label', t('rollouts.bar_label', { done, total }));
    if (small) return h('span', { class: 'barwrap' }, bar, h('span', { class: 'muted small', text: done + '/' + total }));
    bar.parts = parts;
    return bar;
  }

  // --------------------------------------------------------------- devices

  pages.devices = async () => {
    const state = { offset: 0, limit: 25, filters: {} };
    const tbody = $('#device-rows');
    const params = new URLSearchParams(location.search);
    if (params.get('deleted')) flash(t('devices.deleted', { id: params.get('deleted') }), 'ok');
    const load = async () => {
      try {
        const f = state.filters;
        const list = await api('GET', '/api/v1/devices' + query({
          name: f.name, status: f.status, type: f.type, tag: f.tag, sort: f.sort || '-created_at',
          limit: state.limit, offset: state.offset,
        }));
        if (!list.items.length) emptyRow(tbody, 7, t('devices.none'));
        else {
          fill(tbody, list.items.map((d) => h('tr', { 'data-device': d.id },
            h('td', {}, h('a', { href: '/devices/' + enc(d.id), class: 'mono', text: d.id })),
            h('td', { text: d.name }),
            h('td', { text: d.device_type || '–' }),
            h('td', {}, chips(d.tags)),
            h('td', { class: 'status-cell' }, statusBadge(d.online)),
            h('td', { class: 'seen-cell', text: fmtTime(d.last_seen_at) }),
            h('td', { text: d.firmware_version || '–' }))));
        }
        pager(state, list.total, load);
      } catch (e) {
        emptyRow(tbody, 7, describe(e));
        pagerOff();
      }
    };
    filterForm(state, load);
    await load();
    openStream('/api/v1/devices/stream', {
      status: (s) => {
        const row = tbody.querySelector(`tr[data-device="${CSS.escape(s.device_id)}"]`);
        if (!row) return;
        fill($('.status-cell', row), statusBadge(s.online));
        $('.seen-cell', row).textContent = fmtTime(s.at);
      },
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
      props($('#device-props'), [
        [t('devices.type'), device.device_type],
        [t('devices.tags'), chips(device.tags)],
        [t('devices.firmware'), device.firmware_version],
        [t('devices.last_seen'), fmtTime(device.last_seen_at)],
        [t('devices.owner'), h('span', { class: 'mono', text: device.owner_id })],
        [t('common.created'), fmtTime(device.created_at)],
        [t('devices.metadata'), pre(device.metadata)],
      ]);
    };
    render();

    // Latest values, and the metrics the chart offers.
    const latest = new Map();
    const renderLatest = () => {
      const dl = $('#latest-values');
      if (!latest.size) return;
      fill(dl, Array.from(latest.entries()).sort().map(([metric, v]) => [
        h('dt', { text: metric }),
        h('dd', { 'data-metric': metric }, h('strong', { text: typeof v.value === 'number' ? fmtNumber(v.value, 3) : String(v.value) }),
          ' ', h('span', { class: 'muted small', text: fmtTime(v.ts) })),
      ]));
      const select = $('#ch-metric');
      const current = select.value;
      const metrics = Array.from(latest.keys()).sort();
      if (metrics.join() !== $$('option', select).map((o) => o.value).join()) {
        fill(select, metrics.map((m) => h('option', { value: m, text: m })));
        select.value = current && metrics.includes(current) ? current : metrics.includes('temperature') ? 'temperature' : metrics[0];
      }
    };
    const loadLatest = async () => {
      const l = await api('GET', base + '/telemetry/latest');
      for (const v of l.values) latest.set(v.metric, { value: v.value, ts: v.ts });
      renderLatest();
    };

    // The chart.
    const chart = $('#chart');
    let chartBusy = false;
    let chartAgain = false;
    const loadChart = async () => {
      const metric = $('#ch-metric').value;
      if (!metric) {
        fill(chart, h('p', { class: 'empty', text: t('device.no_data') }));
        return;
      }
      if (chartBusy) {
        chartAgain = true;
        return;
      }
      chartBusy = true;
      try {
        const range = Number($('#ch-range').value);
        const agg = $('#ch-agg').value;
        const to = Date.now();
        const from = to - range * 1000;
        const params = { metric, from, to };
        if (agg === 'raw') params.limit = 2000;
        else {
          params.interval = intervalFor(range) + 's';
          params.agg = agg;
        }
        const series = await api('GET', base + '/telemetry' + query(params));
        const points = (series.points || []).map((p) => ({ ts: p.ts, value: p.value, count: p.count }));
        const what = agg === 'raw' ? metric : label('agg', agg) + ' · ' + metric;
        drawChart(chart, points, series.from || from, series.to || to, what);
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
    $('#chart-form').addEventListener('change', loadChart);
    $('#chart-form').addEventListener('submit', (ev) => { ev.preventDefault(); loadChart(); });

    // Status history and commands.
    const statusRows = $('#status-rows');
    const loadStatus = async () => {
      const items = await api('GET', base + '/status-history?limit=15');
      if (!items.length) return emptyRow(statusRows, 3);
      fill(statusRows, items.map((s) => h('tr', {},
        h('td', { text: fmtTime(s.time) }), h('td', {}, statusBadge(s.online)), h('td', { text: s.reason || '–' }))));
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

    const results = await Promise.allSettled([loadLatest(), loadStatus(), loadCommands()]);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) flash(describe(failed.reason));
    await loadChart();

    // Live updates.
    let chartTimer = null;
    openStream(base + '/stream', {
      up: () => { $('#live-indicator').hidden = false; },
      down: () => { $('#live-indicator').hidden = true; },
      telemetry: (m) => {
        const ts = Date.parse(m.ts) || Date.now();
        for (const [metric, value] of Object.entries(m.values || {})) latest.set(metric, { value, ts });
        renderLatest();
        if (!chartTimer) chartTimer = setTimeout(() => { chartTimer = null; loadChart(); }, 2000);
      },
      status: (s) => {
        device.online = s.online;
        device.last_seen_at = s.at;
        render();
        statusRows.prepend(h('tr', {}, h('td', { text: fmtTime(s.at) }), h('td', {}, statusBadge(s.online)), h('td', { text: s.reason || '–' })));
      },
      command_response: () => { loadCommands().catch(() => {}); },
    });

    // Commands.
    const cmdForm = $('#command-form');
    const result = $('#command-result');
    onSubmit(cmdForm, async () => {
      const name = $('#cmd-name').value.trim();
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

  function describeTarget(target) {
    if (!target) return '–';
    if (target.tag) return t('rollouts.target_tag', { tag: target.tag });
    if (target.device_type) return t('rollouts.target_type', { type: target.device_type });
    if (target.device_ids) return t('rollouts.target_devices', { n: target.device_ids.length });
    return JSON.stringify(target);
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
      const bar = progressBar(r.counts, r.total, false);
      bar.classList.add('big');
      bar.id = 'rollout-bar';
      $('#rollout-bar').replaceWith(bar);
      fill($('#rollout-legend'), bar.parts.map(([name, n]) => h('li', {}, h('span', { class: 'swatch seg-' + name }), label('bar', name) + ': ', h('strong', { text: n }))),
        h('li', {}, t('rollouts.total') + ': ', h('strong', { text: r.total })));
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
      a.href = '/lang/' + a.dataset.langSwitch + '?next=' + enc(location.pathname + location.search);
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
