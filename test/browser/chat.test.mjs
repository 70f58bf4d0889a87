// Browser test of the gateway's chat page, in headless Chromium driven by
// playwright-core (make browser). It starts its own redis-server and a
// production gateway on free ports, then checks that
//
//   - two pages in one room exchange messages and see the member count;
//   - a <script> in a message shows as text and does not run;
//   - after the gateway is killed and started again on the same port, the
//     pages reconnect by themselves and every message sent meanwhile (by
//     the other page while the gateway was down, by another client before
//     the pages were back, and right after) appears exactly once.
//
// It fails, never skips, when something it needs is missing.
//
//   GATEWAY_BIN=bin/gateway node chat.test.mjs   (built with go build when unset)
//   CHROMIUM=/usr/bin/chromium                   (default)

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const DEADLINE_MS = 60_000; // the whole test; it normally takes well under 30 s
const WAIT_MS = 15_000; // one wait

const started = Date.now();
const cleanups = [];
let gatewayLog = '';

function log(msg) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}`);
}

async function fail(msg) {
  console.error(`FAIL: ${msg}`);
  if (gatewayLog) console.error(`--- gateway output (last 4 KB) ---\n${gatewayLog.slice(-4096)}`);
  await cleanup();
  process.exit(1);
}

async function cleanup() {
  while (cleanups.length) {
    try {
      await cleanups.pop()();
    } catch (e) {
      // best effort
    }
  }
}

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

// ---- what the test needs ----

let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  await fail(`playwright-core is not installed: run "npm ci" in test/browser (make browser does) (${e.message})`);
}
if (!existsSync(CHROMIUM)) {
  await fail(`Chromium is not installed at ${CHROMIUM}: run "make browser" (it installs it) or "sudo apt-get install -y chromium"`);
}
if (spawnSync('redis-server', ['--version']).error) {
  await fail('redis-server is not installed: run "make deps" or "sudo apt-get install -y redis-server redis-tools"');
}

const tmp = mkdtempSync(path.join(os.tmpdir(), 'chat-browser-'));
cleanups.push(() => rmSync(tmp, { recursive: true, force: true }));

let gatewayBin = process.env.GATEWAY_BIN ? path.resolve(process.env.GATEWAY_BIN) : '';
if (!gatewayBin) {
  gatewayBin = path.join(tmp, 'gateway');
  log('building the gateway (set GATEWAY_BIN to skip)');
  const b = spawnSync('go', ['build', '-o', gatewayBin, './cmd/gateway'], { cwd: repo, stdio: 'inherit' });
  if (b.status !== 0) await fail('go build ./cmd/gateway failed');
}
if (!existsSync(gatewayBin)) await fail(`no gateway binary at ${gatewayBin}`);

// ---- processes ----

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function poll(what, fn, ms = WAIT_MS) {
  const end = Date.now() + ms;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function redisPing(port) {
  return new Promise((resolve) => {
    const c = net.connect(port, '127.0.0.1');
    c.setTimeout(1000);
    let got = '';
    c.on('connect', () => c.write('PING\r\n'));
    c.on('data', (d) => {
      got += d;
      if (got.includes('\r\n')) {
        c.destroy();
        resolve(got.startsWith('+PONG'));
      }
    });
    c.on('error', () => resolve(false));
    c.on('timeout', () => {
      c.destroy();
      resolve(false);
    });
  });
}

async function startRedis() {
  const port = await freePort();
  const p = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', tmp], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  cleanups.push(() => p.kill('SIGKILL'));
  await poll('redis-server to answer PING', () => redisPing(port));
  return port;
}

async function httpStatus(url) {
  try {
    const r = await fetch(url);
    await r.text();
    return r.status;
  } catch (e) {
    return 0;
  }
}

function startGateway(port, redisPort) {
  const env = {
    PATH: process.env.PATH,
    ENVIRONMENT: 'production',
    IP_REDIS: '127.0.0.1',
    PORT_REDIS: String(redisPort),
    PORT: String(port),
    LISTEN_HOST: '127.0.0.1',
    ALLOWED_HOSTS: '127.0.0.1',
    REDIS_PRESENCE_INTERVAL: '200ms',
    REDIS_BLOCK: '1s',
    DRAIN_DELAY: '0s',
    DRAIN_WINDOW: '0s',
    LOG_LEVEL: 'warn',
  };
  const p = spawn(gatewayBin, [], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const keep = (d) => {
    gatewayLog = (gatewayLog + d).slice(-65536);
  };
  p.stdout.on('data', keep);
  p.stderr.on('data', keep);
  p.exited = new Promise((r) => p.on('exit', r));
  cleanups.push(() => p.kill('SIGKILL'));
  return p;
}

// ---- page helpers ----

async function openRoom(page, base, room, name) {
  await page.goto(`${base}/${room}/`);
  await page.fill('#name', name);
  await page.waitForSelector('#status[data-state="open"]', { timeout: WAIT_MS });
}

async function send(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

// messages returns what a page shows: [{user, text, id, mine, pending}].
function messages(page) {
  return page.$$eval('#messages li.msg', (els) =>
    els.map((e) => ({
      user: e.dataset.user,
      text: e.querySelector('.text').textContent,
      id: e.dataset.id || '',
      mine: e.classList.contains('mine'),
      pending: e.classList.contains('pending'),
    })),
  );
}

async function waitText(page, who, text) {
  try {
    await page.waitForFunction(
      (t) => Array.from(document.querySelectorAll('#messages li.msg .text')).some((e) => e.textContent === t),
      text,
      { timeout: WAIT_MS, polling: 50 },
    );
  } catch (e) {
    const shown = (await messages(page)).map((m) => `${m.user}: ${m.text}`).join(' | ');
    const notice = await page.textContent('#notice');
    throw new Error(`${who} never showed ${JSON.stringify(text)}; it shows [${shown}]; notice: ${notice}`);
  }
}

async function expectOnce(page, who, texts) {
  // An ack travels on the sender's socket, the copy on the others': the
  // sender's ack may land after another page showed the message, so wait
  // for the acks before checking (a lost ack still fails below).
  await page
    .waitForFunction(() => document.querySelectorAll('#messages li.msg.pending').length === 0, null, { timeout: WAIT_MS, polling: 50 })
    .catch(() => {});
  const shown = await messages(page);
  for (const t of texts) {
    const n = shown.filter((m) => m.text === t).length;
    check(n === 1, `${who} shows ${JSON.stringify(t)} ${n} times, want exactly once; it shows ${JSON.stringify(shown.map((m) => m.text))}`);
  }
  const pending = shown.filter((m) => m.pending);
  check(pending.length === 0, `${who} still has unacknowledged messages: ${JSON.stringify(pending)}`);
}

// ---- the test ----

const timer = setTimeout(() => fail(`the browser test took more than ${DEADLINE_MS / 1000} s`), DEADLINE_MS);

try {
  const redisPort = await startRedis();
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  let gw = startGateway(port, redisPort);
  await poll('the gateway to be ready', async () => (await httpStatus(`${base}/readyz`)) === 200);
  log(`gateway on ${base}, redis on :${redisPort}`);

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update'],
  });
  cleanups.push(() => browser.close());
  const problems = [];
  const newPage = async (who) => {
    const ctx = await browser.newContext({ viewport: { width: 390, height: 740 } }); // a phone
    const page = await ctx.newPage();
    page.on('pageerror', (e) => problems.push(`${who}: script error: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error' && /Content Security Policy/i.test(m.text())) problems.push(`${who}: ${m.text()}`);
    });
    return page;
  };
  const room = `browser-${Date.now().toString(36)}`;
  const ana = await newPage('ana');
  const bob = await newPage('bob');
  await openRoom(ana, base, room, 'ana');
  await openRoom(bob, base, room, 'bob');
  await ana.waitForSelector('#members[data-members="2"]', { timeout: WAIT_MS });
  log('two pages joined; ana sees 2 members');

  // Exchange.
  await send(ana, 'hello from ana');
  await waitText(bob, 'bob', 'hello from ana');
  await send(bob, 'hi ana');
  await waitText(ana, 'ana', 'hi ana');
  log('messages exchanged');

  // A <script> shows as text and does not run.
  const evil = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"><b>bold?</b>';
  await send(bob, evil);
  await waitText(ana, 'ana', evil);
  const pwned = await ana.evaluate(() => window.__pwned);
  check(pwned === undefined, `a message's markup ran in ana's page (window.__pwned = ${pwned})`);
  const injected = await ana.$$eval('#messages script, #messages img, #messages b', (els) => els.length);
  check(injected === 0, `a message's markup became ${injected} element(s) in ana's page`);
  log('a <script> message shows as text');

  // Restart the gateway while both pages stay open.
  gw.kill('SIGKILL');
  await gw.exited;
  log('gateway killed');
  for (const [who, page] of [['ana', ana], ['bob', bob]]) {
    await page.waitForSelector('#status:not([data-state="open"]):not([data-state="connecting"])', { timeout: WAIT_MS }).catch(() => {
      throw new Error(`${who} did not notice the gateway was gone`);
    });
  }
  const notice = await ana.textContent('#notice');
  check(/lost|cannot be reached/.test(notice) && /Reconnecting/.test(notice), `ana's notice does not say the connection was lost: ${JSON.stringify(notice)}`);
  await send(bob, 'sent by bob while the gateway was down');
  await send(ana, 'sent by ana while the gateway was down');
  // Let ana back off to its fourth attempt (its next try comes 2 to 4 s
  // later), so that a message stored before it is back reaches it only
  // through since=.
  await ana.waitForSelector('#status[data-attempt="4"][data-state="closed"]', { timeout: WAIT_MS });
  gw = startGateway(port, redisPort);
  await poll('the restarted gateway to be ready', async () => (await httpStatus(`${base}/readyz`)) === 200);
  log('gateway restarted on the same port');

  // Another client writes at once, before the pages are back.
  const carol = await newPage('carol');
  await carol.goto(`${base}/healthz`);
  const early = 'sent by carol before the pages were back';
  const ack = await carol.evaluate(
    ([url, text]) =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(url);
        ws.onopen = () => ws.send(JSON.stringify({ username: 'carol', message: text, cid: 'carol-1' }));
        ws.onmessage = (ev) => {
          const f = JSON.parse(ev.data);
          if (f.ack) {
            ws.close();
            resolve(f);
          } else if (f.error) reject(new Error(ev.data));
        };
        ws.onclose = (ev) => reject(new Error(`closed ${ev.code}`));
      }),
    [`ws://127.0.0.1:${port}/ws/chat/${room}/?ack=1`, early],
  );
  const anaState = `${await ana.getAttribute('#status', 'data-state')}/${await ana.getAttribute('#status', 'data-attempt')}`;
  check(anaState === 'closed/4', `ana tried to reconnect before carol's message was stored (status ${anaState}); the test cannot check since=`);
  log(`carol's message stored as ${ack.ack} while ana was still away`);

  for (const page of [ana, bob]) await page.waitForSelector('#status[data-state="open"]', { timeout: WAIT_MS });
  await send(bob, 'sent by bob right after the restart');
  await send(bob, 'the end');
  await waitText(ana, 'ana', 'the end');
  await send(ana, 'ana is back');
  await waitText(bob, 'bob', 'ana is back');
  log('both pages reconnected');

  const all = ['hello from ana', 'hi ana', evil, 'sent by bob while the gateway was down', 'sent by ana while the gateway was down', early,
    'sent by bob right after the restart', 'the end', 'ana is back'];
  await waitText(bob, 'bob', early);
  await waitText(bob, 'bob', 'sent by ana while the gateway was down');
  await expectOnce(ana, 'ana', all);
  await expectOnce(bob, 'bob', all);
  const anaIds = (await messages(ana)).map((m) => m.id);
  check(anaIds.every((id) => /^\d+-\d+$/.test(id)), `ana shows messages without a stream ID: ${JSON.stringify(anaIds)}`);
  check(problems.length === 0, `the pages reported problems:\n${problems.join('\n')}`);
  log('every message shown exactly once on both pages');

  clearTimeout(timer);
  await cleanup();
  console.log(`ok  browser test (${((Date.now() - started) / 1000).toFixed(1)} s)`);
} catch (e) {
  clearTimeout(timer);
  await fail(e.message);
}
