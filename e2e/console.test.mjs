// The web console in a real headless Chromium, against `wf-iot serve` with
// simulated devices (started by .ci/console-e2e.sh). The steps run in order
// and build on each other, like a person's first session with the console.
//
// Environment: WF_BASE_URL (the api-gateway), WF_ADMIN_PASSWORD,
// WF_ARTIFACTS (screenshots), WF_FIRMWARE_FILE (an image to upload),
// CHROMIUM (default /usr/bin/chromium).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { chromium } from 'playwright-core';

const BASE = process.env.WF_BASE_URL;
const ADMIN_PASSWORD = process.env.WF_ADMIN_PASSWORD;
const ARTIFACTS = process.env.WF_ARTIFACTS || 'test-artifacts/console';
const FIRMWARE_FILE = process.env.WF_FIRMWARE_FILE;
const VIEWER = { username: 'vera', password: 'viewer-password-1' };
const OWN = { username: 'olly', password: 'own-password-1', role: 'own-readers' };
const SIM_DEVICE = 'sim-00001';

assert.ok(BASE, 'WF_BASE_URL is not set');
assert.ok(ADMIN_PASSWORD, 'WF_ADMIN_PASSWORD is not set');
mkdirSync(ARTIFACTS, { recursive: true });

let browser;
let context;
let page;
const consoleErrors = [];

async function shot(name) {
  await page.screenshot({ path: `${ARTIFACTS}/${name}.png`, fullPage: true });
}

async function loaded() {
  await page.waitForSelector('body[data-loaded="true"]', { timeout: 20000 });
}

async function go(path) {
  await page.goto(BASE + path);
  await loaded();
}

async function login(username, password) {
  await page.goto(BASE + '/login');
  await page.getByLabel(/username|用户名/i).fill(username);
  await page.getByLabel(/^password$|^密码$/i).fill(password);
  await page.getByRole('button', { name: /sign in|登录/i }).click();
  await page.waitForURL((url) => !url.pathname.startsWith('/login'), { timeout: 15000 });
  await loaded();
}

// A REST call with the signed-in user's token, behind the page's back.
async function rest(method, path, body) {
  return page.evaluate(async ({ method, path, body }) => {
    const resp = await fetch(path, {
      method,
      headers: { 'content-type': 'application/json', authorization: 'Bearer ' + sessionStorage.getItem('wf.access') },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let json = null;
    try {
      json = await resp.json();
    } catch {
      json = null;
    }
    return { status: resp.status, body: json };
  }, { method, path, body });
}

// Reloads the audit page until its rows name every one of `actions`
// (entries from other services arrive through the event bus).
async function auditShows(actions) {
  for (let i = 0; i < 40; i += 1) {
    const text = await page.locator('#audit-rows').textContent();
    if (actions.every((a) => text.includes(a))) return;
    await page.waitForTimeout(250);
    await page.reload();
    await loaded();
  }
  assert.fail(`the audit page never listed ${actions.join(', ')}`);
}

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
  context = await browser.newContext({ viewport: { width: 1366, height: 900 }, locale: 'en-US' });
  page = await context.newPage();
  page.on('console', (msg) => {
    if (msg.type() === 'error') consoleErrors.push(msg.text());
  });
  page.on('pageerror', (err) => consoleErrors.push(String(err)));
});

after(async () => {
  if (browser) await browser.close();
});

test('a wrong password is refused with a readable message', async () => {
  await page.goto(BASE + '/login');
  await loaded();
  await page.getByLabel(/username/i).fill('admin');
  await page.getByLabel(/^password$/i).fill('not-the-password');
  await page.getByRole('button', { name: /sign in/i }).click();
  const error = page.locator('#login-error');
  await error.waitFor({ state: 'visible' });
  assert.equal(await error.textContent(), 'Wrong username or password.');
  assert.ok(new URL(page.url()).pathname === '/login');
  await shot('01-login-error');
});

test('an administrator signs in and sees the fleet live on the dashboard', async () => {
  await login('admin', ADMIN_PASSWORD);
  assert.equal(new URL(page.url()).pathname, '/');
  await page.waitForFunction(() => Number(document.querySelector('#stat-online').textContent) >= 3, null, { timeout: 20000 });
  await page.waitForFunction(() => parseFloat(document.querySelector('#stat-rate').textContent) > 0, null, { timeout: 20000 });
  assert.equal(await page.locator('#whoami').textContent(), 'admin');
  // History from device-service: messages per second and devices online
  // per bucket, commands by outcome.
  await page.waitForSelector('#activity-card[data-buckets]', { timeout: 20000 });
  await page.waitForFunction(() => Number(document.querySelector('#chart-messages').dataset.points || 0) > 0, null, { timeout: 20000 });
  await page.waitForFunction(() => Number(document.querySelector('#chart-online').dataset.points || 0) > 0, null, { timeout: 20000 });
  assert.equal(await page.locator('#chart-messages svg path.line').count(), 1);
  assert.equal(await page.locator('#commands-legend li').count(), 4);
  // The simulated devices stand where their metadata puts them.
  await page.waitForSelector('#fleet-map[data-devices="3"]');
  await page.waitForFunction(() => document.querySelectorAll('#fleet-map a.map-device[data-online="true"]').length === 3, null, { timeout: 20000 });
  assert.match(await page.locator('#map-legend').textContent(), /Online: 3/);
  // Another range reloads the history.
  await page.getByLabel('Time range').selectOption('21600');
  await page.waitForFunction(() => document.querySelector('#activity-card').dataset.interval === '900000', null, { timeout: 20000 });
  await page.waitForFunction(() => Number(document.querySelector('#chart-messages').dataset.points || 0) > 0, null, { timeout: 20000 });
  await shot('02-dashboard');
});

test('the device list shows the simulated devices online and finds one by name', async () => {
  await go('/devices');
  const row = page.locator(`tr[data-device="${SIM_DEVICE}"]`);
  await row.waitFor();
  assert.match(await row.locator('.status-cell').textContent(), /online/);
  await page.getByLabel('Search').fill('Simulated 2');
  await page.getByRole('button', { name: 'Apply' }).click();
  await page.waitForFunction(() => document.querySelectorAll('#device-rows tr[data-device]').length === 1);
  assert.ok(page.url().includes('name=Simulated+2'), page.url());
  assert.equal(await page.locator('#device-rows tr[data-device]').getAttribute('data-device'), 'sim-00002');
  await page.getByLabel('Search').fill('');
  await page.getByRole('button', { name: 'Apply' }).click();
  await page.waitForFunction(() => document.querySelectorAll('#device-rows tr[data-device]').length >= 3);
  await shot('03-devices');
});

test('creating a device shows its secret once with a mosquitto_pub line', async () => {
  await go('/devices');
  await page.getByRole('button', { name: 'New device' }).click();
  await page.locator('#c-id').fill('console-boiler-01');
  await page.locator('#c-name').fill('Boiler room sensor');
  await page.locator('#c-type').fill('thermostat');
  await page.locator('#c-tags').fill('site:lyon, floor:-1');
  await page.locator('#c-meta').fill('not json');
  await page.getByRole('button', { name: 'Create device' }).click();
  const formError = page.locator('#create-form .form-error');
  await formError.waitFor({ state: 'visible' });
  assert.match(await formError.textContent(), /JSON object/);
  await page.locator('#c-meta').fill('{"floor": -1}');
  await page.getByRole('button', { name: 'Create device' }).click();
  await page.locator('#secret-panel').waitFor({ state: 'visible' });
  const secret = await page.locator('#secret-value').textContent();
  assert.ok(secret.length >= 16, 'a secret is shown');
  const cmd = await page.locator('#secret-cmd').inputValue();
  assert.ok(cmd.startsWith('mosquitto_pub '), cmd);
  assert.ok(cmd.includes(secret) && cmd.includes('devices/console-boiler-01/telemetry'), cmd);
  await shot('04-device-created');
  // The same id again is a conflict, shown as a sentence.
  await page.getByRole('button', { name: 'New device' }).click();
  await page.locator('#c-id').fill('console-boiler-01');
  await page.locator('#c-name').fill('Twice');
  await page.getByRole('button', { name: 'Create device' }).click();
  await formError.waitFor({ state: 'visible' });
  assert.match(await formError.textContent(), /^Conflict: /);
  assert.ok(!(await formError.textContent()).includes('{'), 'no raw JSON');
});

test('a device page charts live telemetry and edits the device', async () => {
  await go(`/devices/${SIM_DEVICE}`);
  await page.locator('#live-indicator').waitFor({ state: 'visible' });
  await page.waitForFunction(() => Number(document.querySelector('#chart').dataset.points || 0) > 0, null, { timeout: 20000 });
  const before = Number(await page.locator('#chart').getAttribute('data-points'));
  await page.getByLabel('Aggregation').selectOption('raw');
  await page.getByLabel('Time range').selectOption('900');
  await page.waitForFunction((n) => Number(document.querySelector('#chart').dataset.points || 0) > 0, before, { timeout: 20000 });
  // New readings arrive over the stream and the chart grows.
  const rawBefore = Number(await page.locator('#chart').getAttribute('data-points'));
  await page.waitForFunction((n) => Number(document.querySelector('#chart').dataset.points || 0) > n, rawBefore, { timeout: 20000 });
  assert.ok(await page.locator('#latest-values dd[data-metric="temperature"]').isVisible());
  assert.ok(await page.locator('#chart svg path.line').count() === 1);
  // More metrics at once, each in its colour, with a legend.
  await page.getByLabel('humidity').check();
  await page.getByLabel('battery').check();
  await page.waitForFunction(() => document.querySelectorAll('#chart svg path.line').length === 3, null, { timeout: 20000 });
  const colors = await page.locator('#chart svg path.line').evaluateAll((paths) => paths.map((p) => p.getAttribute('stroke')));
  assert.equal(new Set(colors).size, 3, colors.join());
  assert.deepEqual(await page.locator('#chart .chart-legend li').allTextContents(), ['battery', 'humidity', 'temperature']);
  // Dragging across the chart zooms into that time range; reset goes back.
  const box = await page.locator('#chart svg').boundingBox();
  const wide = Number(await page.locator('#chart').getAttribute('data-to')) - Number(await page.locator('#chart').getAttribute('data-from'));
  await page.mouse.move(box.x + box.width * 0.5, box.y + box.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.7, box.y + box.height / 2, { steps: 5 });
  await page.mouse.move(box.x + box.width * 0.9, box.y + box.height / 2, { steps: 5 });
  await page.mouse.up();
  await page.waitForSelector('#chart[data-zoomed="true"]');
  await page.waitForFunction((w) => {
    const c = document.querySelector('#chart');
    return Number(c.dataset.to) - Number(c.dataset.from) < w / 2;
  }, wide);
  await page.getByRole('button', { name: 'Reset zoom' }).waitFor();
  await shot('05a-device-metrics-zoomed');
  await page.getByRole('button', { name: 'Reset zoom' }).click();
  await page.waitForFunction(() => !document.querySelector('#chart').dataset.zoomed);
  await page.getByLabel('battery').uncheck();
  await page.waitForFunction(() => document.querySelectorAll('#chart svg path.line').length === 2, null, { timeout: 20000 });
  // Readable details: the owner by name, four-digit years, reasons explained.
  assert.equal(await page.locator('#device-owner').textContent(), 'admin (you)');
  assert.match(await page.locator('#device-props').textContent(), /20\d\d/);
  assert.match(await page.locator('#device-props').textContent(), /Location/);
  await page.waitForSelector('#status-rows td[data-reason="connected"], #status-rows td[data-reason="status_message"]');
  assert.match(await page.locator('#status-rows td[data-reason="connected"], #status-rows td[data-reason="status_message"]').first().textContent(), /Connected to the broker|Reported its status itself/);
});

test('a command is sent and the device answer shows', async () => {
  await page.getByLabel('Command', { exact: true }).fill('reboot');
  await page.getByLabel(/Parameters/).fill('{"delay": 1}');
  await page.getByLabel(/Timeout/).fill('10');
  await page.getByRole('button', { name: 'Send command' }).click();
  await page.waitForSelector('#command-result[data-status]', { timeout: 20000 });
  assert.equal(await page.locator('#command-result').getAttribute('data-status'), 'succeeded');
  await page.waitForFunction(() => document.querySelector('#command-rows').textContent.includes('reboot'));
  await shot('05-device');
});

test('a refused command clears the previous answer', async () => {
  await page.getByLabel('Command', { exact: true }).fill('reboot');
  await page.getByLabel(/Parameters/).fill('not json');
  await page.getByRole('button', { name: 'Send command' }).click();
  await page.locator('#command-form .form-error').waitFor({ state: 'visible' });
  assert.equal(await page.locator('#command-result').isVisible(), false);
  assert.equal(await page.locator('#command-result').getAttribute('data-status'), null);
  await page.getByLabel(/Parameters/).fill('');
});

test('tags and metadata are edited in place', async () => {
  await go('/devices/console-boiler-01');
  await page.getByRole('button', { name: 'Edit' }).click();
  await page.locator('#e-tags').fill('site:lyon, floor:-1, boiler');
  await page.locator('#e-meta').fill('{"floor": -1, "room": "B12"}');
  await page.getByRole('button', { name: 'Save' }).click();
  await page.locator('#edit-panel').waitFor({ state: 'hidden' });
  const details = await page.locator('#device-props').textContent();
  assert.ok(details.includes('boiler') && details.includes('B12'), details);
});

test('a command to a device that never answers times out visibly', async () => {
  // console-boiler-01 has never connected.
  await page.getByLabel('Command', { exact: true }).fill('ping');
  await page.getByLabel(/Timeout/).fill('2');
  await page.getByRole('button', { name: 'Send command' }).click();
  await page.waitForSelector('#command-result[data-status]', { timeout: 20000 });
  assert.equal(await page.locator('#command-result').getAttribute('data-status'), 'timed_out');
  assert.match(await page.locator('#command-result').textContent(), /Timed out/);
});

test('a device links to its audit history, which lists its changes', async () => {
  await go('/devices/console-boiler-01');
  await page.getByRole('link', { name: 'Audit history' }).click();
  await page.waitForURL(/\/admin\/audit\?target=console-boiler-01$/);
  await loaded();
  assert.equal(await page.getByLabel('Target').inputValue(), 'console-boiler-01');
  // device-service publishes the entries; auth-service stores them.
  await auditShows(['device.command', 'device.update', 'device.create']);
  const targets = await page.locator('#audit-rows tr td:nth-child(4)').allTextContents();
  assert.ok(targets.length >= 3 && targets.every((t) => t === 'console-boiler-01'), targets.join());
  const actors = await page.locator('#audit-rows tr td:nth-child(2)').allTextContents();
  assert.ok(actors.every((a) => a === 'admin'), actors.join());
  // Another target, typed in: only its entries.
  await page.getByLabel('Target').fill('no-such-target');
  await page.getByRole('button', { name: 'Apply' }).click();
  await page.waitForSelector('#audit-rows td.empty');
  assert.match(page.url(), /target=no-such-target/);
  await shot('05b-device-audit');
});

test('a device\'s state tab shows its shadow and saves desired state onto the version shown', async () => {
  const shadowPath = `/api/v1/devices/${SIM_DEVICE}/shadow`;
  await go(`/devices/${SIM_DEVICE}`);
  await page.getByRole('tab', { name: 'State' }).click();
  assert.equal(new URL(page.url()).hash, '#state');
  assert.equal(await page.getByRole('tab', { name: 'State' }).getAttribute('aria-selected'), 'true');
  assert.equal(await page.locator('#chart').isVisible(), false);
  await page.waitForSelector('#shadow-card[data-loaded="true"][data-version]');
  // The page shows the document the API returns.
  const doc = (await rest('GET', shadowPath)).body;
  assert.deepEqual(JSON.parse(await page.locator('#shadow-reported-json').textContent()), doc.reported);
  assert.deepEqual(JSON.parse(await page.locator('#shadow-desired-json').textContent()), doc.desired);
  // Desired state set in the editor: it shows in desired, with the time
  // it changed, and in the delta until the device reports it.
  const editor = page.getByLabel('Desired state (JSON object)');
  await editor.fill(JSON.stringify({ ...doc.desired, console_mode: 'eco', console_level: 3 }, null, 2));
  await page.getByRole('button', { name: 'Save desired state' }).click();
  await page.getByText(/^Desired state saved \(version \d+\)\.$/).waitFor();
  const desired = () => page.locator('#shadow-desired-json').textContent().then(JSON.parse);
  assert.equal((await desired()).console_mode, 'eco');
  assert.equal((await desired()).console_level, 3);
  assert.match(await page.locator('#shadow-desired-times').textContent(), /console_mode.*20\d\d/);
  // The simulated device applies what it is sent (it takes keys it has no
  // meaning for as they are) and reports it back: the page follows live,
  // and the delta empties.
  await page.waitForFunction(() => JSON.parse(document.querySelector('#shadow-reported-json').textContent).console_mode === 'eco', null, { timeout: 20000 });
  await page.waitForFunction(() => !('console_mode' in JSON.parse(document.querySelector('#shadow-delta-json').textContent)));
  const saved = (await rest('GET', shadowPath)).body;
  assert.equal(saved.desired.console_mode, 'eco');
  assert.equal(saved.reported.console_level, 3);
  await page.waitForFunction((v) => document.querySelector('#shadow-card').dataset.version === v, String(saved.version));
  // A key taken out of the editor is deleted.
  const edited = JSON.parse(await editor.inputValue());
  delete edited.console_level;
  await editor.fill(JSON.stringify(edited, null, 2));
  await page.getByRole('button', { name: 'Save desired state' }).click();
  await page.waitForFunction(() => !JSON.parse(document.querySelector('#shadow-desired-json').textContent).console_level);
  // The history says who changed what.
  await page.waitForFunction(() => document.querySelectorAll('#shadow-history-rows tr[data-source="user"]').length >= 2);
  const latest = page.locator('#shadow-history-rows tr[data-source="user"]').first();
  assert.match(await latest.textContent(), /Desired.*User: admin \(you\).*"console_level":null/);
  await shot('05d-device-state');

  // Someone else changes the state behind the page's back: the stream
  // brings the new version, the editor keeps the edit and warns; saving
  // is refused (412) and the editor reloads.
  await editor.fill(JSON.stringify({ ...edited, console_mode: 'boost' }, null, 2));
  const before = Number(await page.locator('#shadow-card').getAttribute('data-version'));
  const other = await rest('PATCH', shadowPath, { desired: { console_level: 7 } });
  assert.equal(other.status, 200);
  await page.waitForFunction((v) => Number(document.querySelector('#shadow-card').dataset.version) > v, before, { timeout: 20000 });
  assert.equal((await desired()).console_level, 7);
  await page.locator('#desired-stale').waitFor({ state: 'visible' });
  await page.getByRole('button', { name: 'Save desired state' }).click();
  const error = page.locator('#desired-form .form-error');
  await error.waitFor({ state: 'visible' });
  assert.match(await error.textContent(), /changed meanwhile \(now version \d+\), so your edit was not saved\. Reloaded/);
  const reloaded = JSON.parse(await editor.inputValue());
  assert.equal(reloaded.console_mode, 'eco', 'the edit was not applied');
  assert.equal(reloaded.console_level, 7, 'the other change shows');
  assert.equal(await page.locator('#desired-stale').isVisible(), false);
  assert.equal((await rest('GET', shadowPath)).body.desired.console_mode, 'eco');
  await shot('05e-device-state-conflict');
  // A state the server refuses (nested deeper than 8 levels): its reason.
  await editor.fill(JSON.stringify({ ...reloaded, deep: { a: { b: { c: { d: { e: { f: { g: { h: 1 } } } } } } } } }));
  await page.getByRole('button', { name: 'Save desired state' }).click();
  await page.waitForFunction(() => /deeper than 8 levels/.test(document.querySelector('#desired-form .form-error').textContent));
  assert.match(await error.textContent(), /^Please check the values: /);
  await page.getByRole('button', { name: 'Reload' }).click();
  await error.waitFor({ state: 'hidden' });

  // Server attributes: text stays text, JSON stays JSON, one is removed.
  await page.locator('#attr-name').fill('site');
  await page.locator('#attr-value').fill('lyon');
  await page.getByRole('button', { name: 'Set attribute' }).click();
  await page.waitForSelector('#attribute-rows tr[data-attribute="site"]');
  await page.locator('#attr-name').fill('floor');
  await page.locator('#attr-value').fill('2');
  await page.getByRole('button', { name: 'Set attribute' }).click();
  await page.waitForSelector('#attribute-rows tr[data-attribute="floor"]');
  const attrs = (await rest('GET', `/api/v1/devices/${SIM_DEVICE}/attributes`)).body.attributes;
  assert.deepEqual(attrs, { floor: 2, site: 'lyon' });
  assert.equal(await page.locator('#attribute-rows tr[data-attribute="site"] td.value').textContent(), 'lyon');
  await page.getByRole('button', { name: 'Change attribute site' }).click();
  assert.equal(await page.locator('#attr-value').inputValue(), 'lyon');
  await page.getByRole('button', { name: 'Delete attribute floor' }).click();
  await page.locator('#confirm-dialog').getByRole('button', { name: 'Confirm' }).click();
  await page.waitForFunction(() => !document.querySelector('#attribute-rows tr[data-attribute="floor"]'));
  await page.locator('#attr-name').fill('');
  await page.locator('#attr-value').fill('');
  await shot('05f-device-attributes');
  // The tab survives a reload; the overview is one click away.
  await page.reload();
  await loaded();
  await page.waitForSelector('#shadow-card[data-loaded="true"]');
  await page.getByRole('tab', { name: 'Overview' }).click();
  assert.equal(new URL(page.url()).hash, '');
  await page.waitForFunction(() => Number(document.querySelector('#chart').dataset.points || 0) > 0, null, { timeout: 20000 });
});

test('a shadow job sets desired state on the simulated devices and shows its progress', async () => {
  await go('/');
  await page.locator('.mainnav').getByRole('link', { name: 'Shadow jobs', exact: true }).click();
  await page.waitForURL(/\/shadow-jobs$/);
  await loaded();
  await page.getByRole('button', { name: 'New shadow job' }).click();
  await page.getByLabel('Desired state (JSON object)').fill('{"sampling_ms": 750}');
  await page.getByLabel('Tag', { exact: true }).fill('simulated');
  await page.getByLabel('Server attributes').fill('no equals sign');
  await page.getByRole('button', { name: 'Start job' }).click();
  const formError = page.locator('#job-form .form-error');
  await formError.waitFor({ state: 'visible' });
  assert.match(await formError.textContent(), /"no equals sign" is not name=value/);
  await page.getByLabel('Server attributes').fill('');
  await page.getByLabel('Devices per second').fill('2');
  await page.getByRole('button', { name: 'Start job' }).click();
  await page.waitForURL(/\/shadow-jobs\/[^/]+$/);
  await loaded();
  const jobId = new URL(page.url()).pathname.split('/').pop();
  await page.waitForSelector('#job-progress[data-targeted="3"]');
  // Every simulated device is connected: each one gets it.
  await page.waitForSelector('#job-progress[data-delivered="3"]', { timeout: 30000 });
  assert.match(await page.locator('#job-legend').textContent(), /Targeted: 3/);
  assert.match(await page.locator('#job-props').textContent(), /tag simulated.*2 per second.*admin \(you\)/);
  assert.deepEqual(JSON.parse(await page.locator('#job-desired').textContent()), { sampling_ms: 750 });
  await shot('05g-shadow-job');
  // The simulated devices apply it and report it back: the job completes.
  await page.waitForSelector('#job-status[data-status="completed"]', { timeout: 30000 });
  assert.equal(await page.getByRole('button', { name: 'Cancel job' }).isVisible(), false);
  const status = 'completed';
  // Each device by id, converged; the state filter narrows the list.
  await page.waitForFunction(() => document.querySelectorAll('#job-device-rows tr[data-state="converged"]').length === 3);
  assert.equal(await page.locator(`#job-device-rows tr[data-device="${SIM_DEVICE}"] a`).getAttribute('href'), `/devices/${SIM_DEVICE}#state`);
  const stateFilter = page.getByLabel('State', { exact: true });
  await stateFilter.selectOption('pending');
  await page.locator('#job-device-rows').getByText('No device of this job is in that state.').waitFor();
  await stateFilter.selectOption('');
  await page.waitForFunction(() => document.querySelectorAll('#job-device-rows tr[data-state]').length === 3);
  // The list shows it with its progress.
  await page.locator('.crumbs').getByRole('link', { name: 'Shadow jobs' }).click();
  await loaded();
  const row = page.locator(`#job-rows tr[data-job="${jobId}"]`);
  await row.waitFor();
  assert.equal(await row.getAttribute('data-status'), status);
  assert.match(await row.textContent(), /"sampling_ms":750.*tag simulated/);
  assert.equal(await row.locator('.stackbar').count(), 1);
  await shot('05h-shadow-jobs');
  // The device's state holds it, and its history names the job.
  await go(`/devices/${SIM_DEVICE}#state`);
  await page.waitForSelector('#shadow-card[data-loaded="true"]');
  assert.equal(JSON.parse(await page.locator('#shadow-desired-json').textContent()).sampling_ms, 750);
  const byJob = page.locator('#shadow-history-rows tr[data-source="job"]').first();
  await byJob.waitFor();
  assert.equal(await byJob.getByRole('link', { name: 'Shadow job' }).getAttribute('href'), `/shadow-jobs/${jobId}`);

  // A job that cannot finish (one of its devices never connects) shows
  // that device pending, and is cancelled from its page.
  const stuck = await rest('POST', '/api/v1/shadow-jobs', { desired: { console_note: 'held' }, target: { device_ids: [SIM_DEVICE, 'console-boiler-01'] } });
  assert.equal(stuck.status, 201);
  await go(`/shadow-jobs/${stuck.body.id}`);
  await page.waitForSelector('#job-progress[data-converged="1"][data-pending="1"]', { timeout: 30000 });
  await page.getByLabel('State', { exact: true }).selectOption('pending');
  await page.waitForSelector('#job-device-rows tr[data-device="console-boiler-01"][data-state="pending"]');
  assert.equal(await page.locator('#job-device-rows tr[data-device]').count(), 1);
  await shot('05i-shadow-job-pending');
  await page.getByRole('button', { name: 'Cancel job' }).click();
  await page.locator('#confirm-dialog').getByRole('button', { name: 'Confirm' }).click();
  await page.waitForSelector('#job-status[data-status="cancelled"]');
  assert.equal(await page.getByRole('button', { name: 'Cancel job' }).isVisible(), false);
});

test('a selection grows from one page to every device matching the filter', async () => {
  await go('/devices?limit=2');
  await page.waitForFunction(() => document.querySelectorAll('#device-rows tr[data-device]').length === 2);
  await page.getByLabel('Select every device on this page').check();
  assert.equal(await page.locator('#bulk-count').textContent(), '2 selected');
  const more = page.locator('#select-matching');
  await more.waitFor({ state: 'visible' });
  const total = Number((await more.textContent()).match(/Select all (\d+) devices matching the filter/)[1]);
  assert.ok(total > 2, `${total} devices match`);
  await more.click();
  await page.waitForFunction((n) => document.querySelector('#bulk-count').textContent === `${n} selected`, total);
  assert.ok(await more.isHidden());
});

test('bulk actions reach a filtered selection and report each device', async () => {
  await go('/devices?tag=simulated');
  await page.waitForFunction(() => document.querySelectorAll('#device-rows tr[data-device]').length === 3);
  await page.getByLabel('Select every device on this page').check();
  assert.equal(await page.locator('#bulk-count').textContent(), '3 selected');
  // A tag added to all three.
  await page.getByRole('button', { name: 'Add tag' }).click();
  await page.locator('#b-tag').fill('bulk-tested');
  await page.locator('#bulk-tag-submit').click();
  await page.waitForSelector('#bulk-results[data-state="done"][data-action="add_tag"]', { timeout: 20000 });
  assert.equal(await page.locator('#bulk-results').getAttribute('data-ok'), '3');
  await page.waitForFunction(() => document.querySelectorAll('#device-rows .tags-cell').length === 3
    && Array.from(document.querySelectorAll('#device-rows .tags-cell')).every((c) => c.textContent.includes('bulk-tested')));
  // A command to the filtered selection: each device answers.
  await page.getByRole('button', { name: 'Send command' }).click();
  await page.locator('#b-cmd-name').fill('identify');
  await page.locator('#b-cmd-params').fill('{"blink": 3}');
  await page.locator('#b-cmd-timeout').fill('10');
  await page.getByRole('button', { name: 'Send to the selected devices' }).click();
  await page.waitForSelector('#bulk-results[data-state="done"][data-action="command"]', { timeout: 30000 });
  assert.equal(await page.locator('#bulk-results').getAttribute('data-ok'), '3');
  assert.equal(await page.locator('#bulk-rows tr[data-outcome="ok"]').count(), 3);
  assert.match(await page.locator('#bulk-rows').textContent(), /Succeeded/);
  assert.match(await page.locator('#bulk-summary').textContent(), /3 succeeded, 0 failed/);
  await shot('05c-bulk-command');
  // One device that answers and one that never connects: each outcome, and why.
  await page.getByRole('button', { name: 'Clear selection' }).click();
  await go('/devices');
  await page.locator('tr[data-device="sim-00001"] input.row-select').check();
  await page.locator('tr[data-device="console-boiler-01"] input.row-select').check();
  await page.getByRole('button', { name: 'Send command' }).click();
  await page.locator('#b-cmd-name').fill('ping');
  await page.locator('#b-cmd-timeout').fill('2');
  await page.getByRole('button', { name: 'Send to the selected devices' }).click();
  await page.waitForSelector('#bulk-results[data-state="done"][data-action="command"]', { timeout: 30000 });
  assert.equal(await page.locator('#bulk-rows tr[data-device="sim-00001"]').getAttribute('data-outcome'), 'ok');
  const stuck = page.locator('#bulk-rows tr[data-device="console-boiler-01"]');
  assert.equal(await stuck.getAttribute('data-outcome'), 'failed');
  assert.match(await stuck.textContent(), /Timed out.*did not answer/);
  // And the tag removed again.
  await go('/devices?tag=bulk-tested');
  await page.waitForFunction(() => document.querySelectorAll('#device-rows tr[data-device]').length === 3);
  await page.getByLabel('Select every device on this page').check();
  await page.getByRole('button', { name: 'Remove tag' }).click();
  await page.locator('#b-tag').fill('bulk-tested');
  await page.locator('#bulk-tag-submit').click();
  await page.waitForSelector('#bulk-results[data-state="done"][data-action="remove_tag"]', { timeout: 20000 });
  assert.equal(await page.locator('#bulk-results').getAttribute('data-ok'), '3');
  await page.waitForSelector('#device-rows td.empty');
});

test('firmware is uploaded with a progress bar and listed with its digest', async () => {
  assert.ok(FIRMWARE_FILE, 'WF_FIRMWARE_FILE is not set');
  await go('/firmware');
  await page.getByRole('button', { name: 'Upload firmware' }).first().click();
  await page.locator('#u-name').fill('sensor-firmware');
  await page.locator('#u-type').fill('simulated-sensor');
  await page.getByLabel('Version', { exact: true }).fill('1.1.0');
  await page.getByLabel('Release notes').fill('Faster sampling.');
  await page.getByLabel('Image file').setInputFiles(FIRMWARE_FILE);
  await page.locator('#upload-form button[type=submit]').click();
  await page.waitForFunction(() => document.querySelector('#firmware-rows').textContent.includes('1.1.0'), null, { timeout: 30000 });
  const row = page.locator('#firmware-rows tr', { hasText: 'sensor-firmware' });
  assert.match(await row.textContent(), /KiB/);
  assert.match(await row.textContent(), /Unsigned/);
  await shot('06-firmware');
});

test('a rollout by tag runs to completion and is watched live', async () => {
  await go('/rollouts');
  await page.getByRole('button', { name: 'New rollout' }).click();
  await page.getByLabel('Name', { exact: true }).fill('Sensors to 1.1.0');
  await page.waitForFunction(() => document.querySelectorAll('#r-firmware option[value]:not([value=""])').length > 0);
  await page.getByLabel('Firmware', { exact: true }).selectOption({ label: 'sensor-firmware 1.1.0 (simulated-sensor)' });
  await page.getByLabel('Tag', { exact: true }).check();
  await page.getByLabel('Tag, type or device ids').fill('simulated');
  await page.getByLabel('Devices per minute').fill('0');
  await page.getByLabel(/failure rate/).fill('50');
  await page.getByLabel(/Timeout per device/).fill('60');
  await page.getByLabel('Retries per device').fill('1');
  await page.getByRole('button', { name: 'Start rollout' }).click();
  await page.waitForURL(/\/rollouts\/[^/]+$/);
  await loaded();
  await page.waitForSelector('#rollout-state[data-state="completed"]', { timeout: 90000 });
  const legend = await page.locator('#rollout-legend').textContent();
  assert.match(legend, /Succeeded: 3/);
  assert.match(await page.locator('#failing-rows').textContent(), /No failures/);
  await shot('07-rollout');
  await go('/rollouts');
  await shot('08-rollouts');
  // The dashboard now lists the rollout and the command.
  await go('/');
  await page.waitForSelector('#recent-rollouts a');
  await page.waitForSelector('#recent-commands a');
  await page.waitForFunction(() => parseFloat(document.querySelector('#stat-rate').textContent) > 0, null, { timeout: 20000 });
  await shot('08-dashboard-activity');
});

test('a rollout can be paused, resumed and canceled', async () => {
  // A second image, rolled out one device a minute so that most wait.
  await go('/firmware');
  await page.getByRole('button', { name: 'Upload firmware' }).first().click();
  await page.locator('#u-name').fill('sensor-firmware');
  await page.locator('#u-type').fill('simulated-sensor');
  await page.getByLabel('Version', { exact: true }).fill('1.2.0');
  await page.getByLabel('Image file').setInputFiles(FIRMWARE_FILE);
  await page.locator('#upload-form button[type=submit]').click();
  await page.waitForFunction(() => document.querySelector('#firmware-rows').textContent.includes('1.2.0'), null, { timeout: 30000 });
  await go('/rollouts');
  await page.getByRole('button', { name: 'New rollout' }).click();
  await page.getByLabel('Name', { exact: true }).fill('Slow 1.2.0');
  await page.waitForFunction(() => document.querySelectorAll('#r-firmware option').length >= 2);
  await page.getByLabel('Firmware', { exact: true }).selectOption({ label: 'sensor-firmware 1.2.0 (simulated-sensor)' });
  await page.getByLabel('Device type', { exact: true }).check();
  await page.getByLabel('Devices per minute').fill('1');
  await page.getByRole('button', { name: 'Start rollout' }).click();
  await page.waitForURL(/\/rollouts\/[^/]+$/);
  await loaded();
  await page.waitForSelector('#rollout-state[data-state="running"]', { timeout: 20000 });
  await page.getByRole('button', { name: 'Pause', exact: true }).click();
  await page.waitForSelector('#rollout-state[data-state="paused"]');
  await page.getByRole('button', { name: 'Resume', exact: true }).click();
  await page.waitForSelector('#rollout-state[data-state="running"]');
  await page.getByRole('button', { name: 'Cancel rollout' }).click();
  // The confirmation can be declined...
  await page.locator('#confirm-dialog').getByRole('button', { name: 'Cancel' }).click();
  assert.equal(await page.locator('#rollout-state').getAttribute('data-state'), 'running');
  // ...or accepted.
  await page.getByRole('button', { name: 'Cancel rollout' }).click();
  await page.locator('#confirm-dialog').getByRole('button', { name: 'Confirm' }).click();
  await page.waitForSelector('#rollout-state[data-state="canceled"]');
  assert.equal(await page.getByRole('button', { name: 'Pause', exact: true }).isVisible(), false);
});

test('an administrator creates a viewer account', async () => {
  await go('/admin/users');
  await page.getByRole('button', { name: 'New user' }).click();
  await page.locator('#n-username').fill(VIEWER.username);
  await page.locator('#n-email').fill('vera@example.com');
  await page.locator('#n-fullname').fill('Vera Viewer');
  await page.locator('#n-password').fill(VIEWER.password);
  // Only the viewer role: untick what is preselected, tick viewer.
  for (const box of await page.locator('#n-roles input[type=checkbox]').all()) {
    await box.setChecked((await box.getAttribute('value')) === 'viewer');
  }
  await page.getByRole('button', { name: 'Create user' }).click();
  const row = page.locator(`tr[data-user="${VIEWER.username}"]`);
  await row.waitFor();
  // A new password, set by the administrator.
  await row.getByRole('button', { name: 'Reset password' }).click();
  VIEWER.password = 'viewer-password-2';
  await page.locator('#r-password').fill(VIEWER.password);
  await page.locator('#reset-form button[type=submit]').click();
  await page.locator('#reset-panel').waitFor({ state: 'hidden' });
  await page.getByText(`Password of ${VIEWER.username} reset.`).waitFor();
  await shot('09-users');
  await go('/admin/roles');
  await page.waitForSelector('tr[data-role="viewer"]');
  await shot('10-roles');
  await go('/admin/audit');
  await page.waitForFunction(() => document.querySelector('#audit-rows').textContent.includes('user.create'));
  await shot('11-audit');
});

test('a role can narrow its holders to their own devices, and an administrator hands a device over', async () => {
  await go('/admin/roles');
  // The built-in roles reach the whole fleet.
  assert.equal(await page.locator('tr[data-role="viewer"] td[data-scope]').getAttribute('data-scope'), 'fleet');
  await page.getByRole('button', { name: 'New role' }).click();
  await page.locator('#ro-name').fill(OWN.role);
  await page.locator('#ro-scope').selectOption('own');
  await page.getByRole('button', { name: 'Create role' }).click();
  const row = page.locator(`tr[data-role="${OWN.role}"]`);
  await row.waitFor();
  assert.equal(await row.locator('td[data-scope]').getAttribute('data-scope'), 'own');
  assert.match(await row.locator('td[data-scope]').textContent(), /Own devices only/);
  await row.getByRole('button', { name: 'Permissions' }).click();
  await page.locator('#perm-checks input[value="device:read"]').check();
  await page.locator('#perm-form button[type=submit]').click();
  await page.getByText(`Permissions of ${OWN.role} saved.`).waitFor();
  await shot('10b-role-scope');
  // A user holding only that role.
  await go('/admin/users');
  await page.getByRole('button', { name: 'New user' }).click();
  await page.locator('#n-username').fill(OWN.username);
  await page.locator('#n-email').fill('olly@example.com');
  await page.locator('#n-password').fill(OWN.password);
  for (const box of await page.locator('#n-roles input[type=checkbox]').all()) {
    await box.setChecked((await box.getAttribute('value')) === OWN.role);
  }
  await page.getByRole('button', { name: 'Create user' }).click();
  await page.locator(`tr[data-user="${OWN.username}"]`).waitFor();
  // What the API shows that user, before and after the handover.
  const seen = () => page.evaluate(async ({ username, password }) => {
    const login = await fetch('/api/v1/auth/login', {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username, password }),
    });
    const { access_token: token } = await login.json();
    const list = await fetch('/api/v1/devices', { headers: { authorization: 'Bearer ' + token } });
    return (await list.json()).items.map((d) => d.id);
  }, OWN);
  assert.deepEqual(await seen(), []);
  await go('/devices/sim-00002');
  await page.getByRole('button', { name: 'Transfer', exact: true }).click();
  await page.getByLabel('New owner').selectOption({ label: OWN.username });
  await page.locator('#transfer-form button[type=submit]').click();
  await page.getByText(`now belongs to ${OWN.username}.`).waitFor();
  await shot('10c-device-transfer');
  assert.deepEqual(await seen(), ['sim-00002']);
});

test('a device is deleted only after confirmation', async () => {
  await go('/devices/console-boiler-01');
  await page.getByRole('button', { name: 'Delete', exact: true }).click();
  await page.locator('#confirm-dialog').getByRole('button', { name: 'Cancel' }).click();
  assert.equal(new URL(page.url()).pathname, '/devices/console-boiler-01');
  await page.getByRole('button', { name: 'Delete', exact: true }).click();
  assert.match(await page.locator('#confirm-text').textContent(), /console-boiler-01/);
  await page.locator('#confirm-dialog').getByRole('button', { name: 'Confirm' }).click();
  await page.waitForURL(/\/devices\?deleted=console-boiler-01/);
  await loaded();
  await page.getByText('Device console-boiler-01 deleted.').waitFor();
  assert.equal(await page.locator('tr[data-device="console-boiler-01"]').count(), 0);
});

test('the console switches to Simplified Chinese and back', async () => {
  await go('/devices');
  await page.locator('.usermenu [data-lang-switch]').click();
  await page.waitForFunction(() => document.documentElement.lang === 'zh-CN');
  await loaded();
  assert.equal(new URL(page.url()).pathname, '/devices');
  assert.ok(await page.getByRole('link', { name: '设备', exact: true }).isVisible());
  assert.ok(await page.getByRole('button', { name: '新建设备' }).isVisible());
  await page.waitForSelector(`tr[data-device="${SIM_DEVICE}"]`);
  await shot('12-devices-zh');
  // The bulk bar in Chinese.
  await page.getByLabel('选择本页所有设备').check();
  assert.match(await page.locator('#bulk-count').textContent(), /^已选择 \d+ 台$/);
  await page.getByLabel('选择本页所有设备').uncheck();
  await go('/');
  await page.waitForFunction(() => Number(document.querySelector('#stat-total').textContent) >= 3);
  await page.waitForFunction(() => Number(document.querySelector('#chart-messages').dataset.points || 0) > 0, null, { timeout: 20000 });
  assert.ok(await page.getByText('每秒消息数', { exact: true }).isVisible());
  assert.ok(await page.getByRole('heading', { name: '设备地图' }).isVisible());
  await page.waitForSelector('#fleet-map a.map-device');
  assert.match(await page.locator('#map-legend').textContent(), /在线: \d/);
  assert.match(await page.locator('#commands-legend').textContent(), /成功/);
  await shot('13-dashboard-zh');
  await go(`/devices/${SIM_DEVICE}`);
  await page.waitForFunction(() => Number(document.querySelector('#chart').dataset.points || 0) > 0, null, { timeout: 20000 });
  assert.ok(await page.getByText('重置缩放').count() === 1);
  await page.waitForSelector('#status-rows td[data-reason="connected"], #status-rows td[data-reason="status_message"]');
  assert.match(await page.locator('#status-rows td[data-reason="connected"], #status-rows td[data-reason="status_message"]').first().textContent(), /已连接到消息服务器|设备自行上报状态/);
  assert.match(await page.locator('#device-props').textContent(), /20\d\d\/\d\d\/\d\d/);
  await shot('13a-device-zh');
  // The device's state and the shadow jobs in Chinese.
  await page.getByRole('tab', { name: '设备影子' }).click();
  await page.waitForSelector('#shadow-card[data-loaded="true"]');
  assert.ok(await page.getByRole('heading', { name: '上报状态' }).isVisible());
  assert.ok(await page.getByRole('heading', { name: '服务端属性' }).isVisible());
  assert.ok(await page.getByRole('button', { name: '保存期望状态' }).isVisible());
  assert.match(await page.locator('#shadow-version').textContent(), /^版本 \d+$/);
  assert.match(await page.locator('#shadow-history-rows').textContent(), /期望/);
  await shot('13c-device-state-zh');
  await page.locator('.mainnav').getByRole('link', { name: '影子任务', exact: true }).click();
  await page.waitForURL(/\/shadow-jobs$/);
  await loaded();
  assert.ok(await page.getByRole('heading', { name: '影子任务', exact: true }).isVisible());
  await page.waitForSelector('#job-rows tr[data-job]');
  assert.match(await page.locator('#job-rows').textContent(), /已取消|已完成/);
  assert.match(await page.locator('#job-rows').textContent(), /标签 simulated/);
  await page.getByRole('button', { name: '新建影子任务' }).click();
  assert.ok(await page.getByLabel('期望状态（JSON 对象）').isVisible());
  await shot('13d-shadow-jobs-zh');
  await go('/admin/roles');
  await page.waitForSelector('tr[data-role="viewer"]');
  assert.match(await page.locator('tr[data-role="viewer"] td[data-scope]').textContent(), /全部设备/);
  assert.match(await page.locator(`tr[data-role="${OWN.role}"] td[data-scope]`).textContent(), /仅自己的设备/);
  // The audit page in Chinese; the deleted device's history remains.
  await go('/admin/audit?target=console-boiler-01');
  assert.equal(await page.getByLabel('对象').inputValue(), 'console-boiler-01');
  await auditShows(['device.delete']);
  await shot('13b-audit-zh');
  await page.locator('.usermenu [data-lang-switch]').click();
  await page.waitForFunction(() => document.documentElement.lang === 'en');
  await loaded();
});

test('the account page says who is signed in', async () => {
  await go('/account');
  const details = await page.locator('#account-props').textContent();
  assert.ok(details.includes('admin') && details.includes('Administrator'), details);
  assert.ok((await page.locator('#account-permissions').textContent()).includes('device:write'));
});

test('pages fit a tablet without sideways scrolling', async () => {
  await page.setViewportSize({ width: 820, height: 1180 });
  for (const path of ['/', '/devices', `/devices/${SIM_DEVICE}`, '/shadow-jobs', '/rollouts', '/admin/users']) {
    await go(path);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `${path} is ${overflow}px too wide`);
  }
  await go(`/devices/${SIM_DEVICE}`);
  await page.waitForFunction(() => Number(document.querySelector('#chart').dataset.points || 0) > 0, null, { timeout: 20000 });
  await shot('14-tablet-device');
  // The same page's State tab, opened by its address.
  await page.goto(`${BASE}/devices/${SIM_DEVICE}#state`);
  await page.waitForSelector('#shadow-card[data-loaded="true"]');
  assert.equal(await page.getByRole('tab', { name: 'State' }).getAttribute('aria-selected'), 'true');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the State tab is ${overflow}px too wide`);
  await shot('14a-tablet-device-state');
  await page.setViewportSize({ width: 1366, height: 900 });
});

test('a viewer sees no write controls and the server refuses them anyway', async () => {
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.waitForURL(/\/login/);
  assert.match(await page.locator('#login-notice').textContent(), /signed out/);
  await login(VIEWER.username, VIEWER.password);
  for (const name of ['Users', 'Roles', 'Audit log']) {
    assert.equal(await page.getByRole('link', { name, exact: true }).isVisible(), false, name);
  }
  // The viewer role reaches the whole fleet: every device is listed, with
  // nothing to create, change or command them with.
  await go('/devices');
  await page.waitForSelector(`tr[data-device="${SIM_DEVICE}"]`);
  assert.equal(await page.getByRole('button', { name: 'New device' }).isVisible(), false);
  assert.equal(await page.locator('#select-page').isVisible(), false);
  assert.equal(await page.locator('#device-rows input.row-select').count(), 0);
  await go(`/devices/${SIM_DEVICE}`);
  await page.waitForFunction((id) => document.querySelector('#device-name').textContent.length > 0 && document.querySelector('#device-props').textContent.includes('simulated-sensor'), SIM_DEVICE);
  for (const name of ['Edit', 'Rotate secret', 'Delete', 'Send command', 'Transfer']) {
    assert.equal(await page.getByRole('button', { name, exact: true }).isVisible(), false, name);
  }
  assert.equal(await page.getByRole('link', { name: 'Audit history' }).isVisible(), false);
  // The state can be read, not changed.
  await page.getByRole('tab', { name: 'State' }).click();
  await page.waitForSelector('#shadow-card[data-loaded="true"]');
  assert.equal(JSON.parse(await page.locator('#shadow-desired-json').textContent()).sampling_ms, 750);
  await page.waitForSelector('#attribute-rows tr[data-attribute="site"]');
  for (const name of ['Save desired state', 'Reload', 'Set attribute', 'Change attribute site', 'Delete attribute site']) {
    assert.equal(await page.getByRole('button', { name, exact: true }).isVisible(), false, name);
  }
  assert.equal(await page.locator('#desired-json').isVisible(), false);
  assert.equal(await page.locator('#attribute-rows button').count(), 0);
  await shot('15a-viewer-device-state');
  await go('/shadow-jobs');
  await page.waitForSelector('#job-rows tr[data-job]');
  assert.equal(await page.getByRole('button', { name: 'New shadow job' }).isVisible(), false);
  await page.locator('#job-rows tr[data-job] a').first().click();
  await loaded();
  await page.waitForSelector('#job-status[data-status]');
  assert.equal(await page.getByRole('button', { name: 'Cancel job' }).isVisible(), false);
  const refused = await rest('PATCH', `/api/v1/devices/${SIM_DEVICE}/shadow`, { desired: { console_mode: 'viewer' } });
  assert.equal(refused.status, 403);
  await go('/firmware');
  await page.waitForSelector('#firmware-rows tr[data-firmware]');
  assert.equal(await page.getByRole('button', { name: 'Upload firmware' }).isVisible(), false);
  assert.equal(await page.locator('#firmware-rows button').count(), 0, 'no delete buttons');
  await shot('15-viewer-firmware');
  // The administrator's rollouts are listed for the viewer, who cannot
  // start one.
  await go('/rollouts');
  assert.equal(await page.getByRole('button', { name: 'New rollout' }).isVisible(), false);
  await page.waitForSelector('#rollout-rows a');
  // Forcing a write through the API with the viewer's own token.
  const forced = await page.evaluate(async () => {
    const resp = await fetch('/api/v1/devices', {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer ' + sessionStorage.getItem('wf.access') },
      body: JSON.stringify({ name: 'forced' }),
    });
    return resp.status;
  });
  assert.equal(forced, 403);
  // An administration page opened by address explains the refusal.
  await go('/admin/users');
  const cell = page.locator('#user-rows td.empty');
  await cell.waitFor();
  assert.match(await cell.textContent(), /^You do not have permission for this/);
  await shot('16-viewer-forbidden');
});

test('an expired session goes back to the sign-in page', async () => {
  await page.evaluate(() => {
    sessionStorage.setItem('wf.access', 'expired.token.value');
    sessionStorage.setItem('wf.refresh', 'spent-refresh-token');
  });
  await page.goto(BASE + '/devices');
  await page.waitForURL(/\/login\?expired=1/, { timeout: 15000 });
  await loaded();
  assert.match(await page.locator('#login-notice').textContent(), /session has expired/);
  assert.ok(decodeURIComponent(page.url()).includes('next=/devices'));
  await shot('17-session-expired');
});

test('signing in works from the keyboard alone and returns to the page asked for', async () => {
  // The username field has the focus; labels, Tab and Enter do the rest.
  await page.keyboard.type(VIEWER.username);
  await page.keyboard.press('Tab');
  await page.keyboard.type(VIEWER.password);
  await page.keyboard.press('Enter');
  await page.waitForURL((url) => url.pathname === '/devices', { timeout: 15000 });
  await loaded();
});

test('pages raised no script errors', () => {
  // The refused requests above log "Failed to load resource" lines; any
  // other error is a defect.
  const real = consoleErrors.filter((e) => !/Failed to load resource|status of 4\d\d/.test(e));
  assert.deepEqual(real, []);
});
