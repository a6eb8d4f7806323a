//! The migrated app in a real browser: headless Chromium (Debian's `chromium`, driven by
//! playwright-core; no browser download) against the release switchboard binary (SQLite) and
//! client-demo built with `next build` and served by `next start`, same-site: the browser opens
//! Socket.IO on the app's origin and next.config.ts forwards it to switchboard, which learns the
//! user from the app's own `uid` cookie through /api/pusher/auth.
//!
//! Two users (alice 5, carol 12) in two browser contexts. The steps share one app and build on
//! each other, in order. On a failure every open page is saved to E2E_SCREENSHOTS
//! (default client-demo/e2e/screenshots/) and the server logs' tails are printed.
//!
//! Env: SWITCHBOARD_BIN (default <repo>/target/release/switchboard), CHROMIUM (default
//! /usr/bin/chromium), E2E_SWITCHBOARD_PORT (default: a free port). The rewrite target is fixed
//! by `next build`, so the test builds unless .next was built for that same switchboard URL.

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { after, before, test } from 'node:test'
import { fileURLToPath } from 'node:url'
import Pusher from 'pusher'
import { chromium } from 'playwright-core'

const APP_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const REPO = path.resolve(APP_DIR, '..')
const BIN = process.env.SWITCHBOARD_BIN || path.join(REPO, 'target', 'release', 'switchboard')
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'
const SHOTS = process.env.E2E_SCREENSHOTS || path.join(APP_DIR, 'e2e', 'screenshots')
const NEXT_BIN = path.join(APP_DIR, 'node_modules', 'next', 'dist', 'bin', 'next')

const PUSHER = { PUSHER_APP_ID: '4242', PUSHER_KEY: 'e2e-key', PUSHER_SECRET: 'e2e-secret-0123456789abcdef' }
const ALICE = { id: 5, fullName: 'Alice Martin' }
const CAROL = { id: 12, fullName: 'Carol Ito' }

const SCRUBBED_ENV =
  /^(PORT|HOST|DATABASE_URL|JWT_SECRET|JWT_PUBLIC_KEY|REDIS_URL|REDIS_PREFIX|ALLOWED_ORIGINS|SWITCHBOARD_URL|PUSHER_.*|NEXT_PUBLIC_.*|RECOVERY_.*|RATE_LIMIT_.*)$/

const started = Date.now()
const work = mkdtempSync(path.join(tmpdir(), 'client-demo-e2e-'))
const children = []
let appUrl = ''
let backend // the app's own server SDK, pointed at switchboard as the app's routes use it
let browser
const users = {} // 'alice' | 'carol' -> { context, page, packets }
const sent = [] // every message text sent, in order; each must show exactly once on both sides

// ---------------------------------------------------------------- processes

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

function run(name, cmd, args, env, opts = {}) {
  const log = path.join(work, `${name}.log`)
  const out = createWriteStream(log)
  // The developer's shell must not configure the servers (a REDIS_URL, another DATABASE_URL…).
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !SCRUBBED_ENV.test(k)))
  const child = spawn(cmd, args, { cwd: APP_DIR, env: { ...inherited, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  child.stdout.pipe(out)
  child.stderr.pipe(out)
  child.log = log
  child.label = name
  if (!opts.oneShot) children.push(child)
  return child
}

function tail(file, lines = 40) {
  if (!existsSync(file)) return ''
  return readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n')
}

async function waitHttp(url, what, ms) {
  const end = Date.now() + ms
  while (Date.now() < end) {
    try {
      const res = await fetch(url, { redirect: 'manual' })
      if (res.status < 500) return
    } catch {
      // not listening yet
    }
    await sleep(200)
  }
  throw new Error(`${what} did not answer ${url} within ${ms} ms`)
}

// Whether .next is a build of the current sources for this switchboard URL (then it is reused).
function builtFor(switchboardUrl) {
  const manifest = path.join(APP_DIR, '.next', 'routes-manifest.json')
  const buildId = path.join(APP_DIR, '.next', 'BUILD_ID')
  if (!existsSync(manifest) || !existsSync(buildId)) return false
  if (!readFileSync(manifest, 'utf8').includes(`"${switchboardUrl}/socket.io/`)) return false
  const newest = (p) =>
    statSync(p).isDirectory() ? Math.max(0, ...readdirSync(p).map((n) => newest(path.join(p, n)))) : statSync(p).mtimeMs
  const sources = ['src', 'next.config.ts', 'package-lock.json', 'tsconfig.json'].map((p) => path.join(APP_DIR, p))
  return Math.max(...sources.filter(existsSync).map(newest)) < statSync(buildId).mtimeMs
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// ---------------------------------------------------------------- the page

// What one chat box shows. ChatBoxInstance.tsx is the legacy file, untouched, so this reads its
// structure: header (dot, name, "connecting…"), message list, typing line, form.
function readBox(page) {
  return page.evaluate(() => {
    const box = document.querySelector('main > div')
    if (!box) return null
    const [header, list, typing] = box.children
    const messages = [...list.children]
      .filter((el) => el.tagName === 'DIV')
      .map((bubble) =>
        [...bubble.childNodes]
          .filter((n) => n.nodeType === Node.TEXT_NODE)
          .map((n) => n.textContent)
          .join('')
          .trim(),
      )
    return {
      online: header.querySelector('span[title]')?.getAttribute('title') === 'online',
      connected: !header.querySelector('small'),
      typing: typing.textContent.replace(/\u00a0/g, '').trim(),
      messages,
      error: box.textContent.includes('could not') || box.textContent.includes('Could not'),
    }
  })
}

async function eventually(who, what, predicate, ms = 15_000) {
  const end = Date.now() + ms
  let last
  while (Date.now() < end) {
    last = await readBox(users[who].page).catch((err) => ({ error: String(err) }))
    if (last && predicate(last)) return last
    await sleep(100)
  }
  throw new Error(`${who}: timed out after ${ms} ms waiting for ${what}; the box shows ${JSON.stringify(last)}`)
}

// Every engine.io packet the page received, over WebSocket or long-polling, so a test can tell a
// recovered session (replayed `new-message` packets) from history in a join-room ack.
function recordPackets(page, packets) {
  page.on('websocket', (ws) => {
    if (!ws.url().includes('/socket.io/')) return
    ws.on('framereceived', (frame) => typeof frame.payload === 'string' && packets.push(frame.payload))
    ws.on('close', () => packets.push('(websocket closed)'))
  })
  page.on('response', async (res) => {
    if (!res.url().includes('/socket.io/') || res.request().method() !== 'GET') return
    const body = await res.text().catch(() => '')
    packets.push(...body.split('\x1e').filter(Boolean))
  })
}

async function open(who, user, other) {
  const context = await browser.newContext()
  const page = await context.newPage()
  const packets = []
  recordPackets(page, packets)
  const consoleLines = []
  page.on('console', (msg) => consoleLines.push(`${new Date().toISOString()} ${msg.type()}: ${msg.text()}`))
  page.on('pageerror', (err) => consoleLines.push(`${new Date().toISOString()} page error: ${err.message}`))
  users[who] = { context, page, packets, consoleLines }
  const t0 = Date.now()
  await page.goto(`${appUrl}/api/login?uid=${user.id}&with=${other.id}`)
  await eventually(who, 'the chat box, connected', (box) => box.connected)
  if (process.env.E2E_DEBUG) console.log(`${who} connected in ${Date.now() - t0} ms`, consoleLines)
  return users[who]
}

async function close(who) {
  await users[who].context.close()
  delete users[who]
}

async function send(who, text) {
  const input = users[who].page.locator('input[placeholder^="Message @"]')
  await input.fill(text)
  await input.press('Enter')
  sent.push(text)
}

function count(box, text) {
  return box.messages.filter((m) => m === text).length
}

async function seesOnce(who, text, ms) {
  await eventually(who, `"${text}" in the list`, (box) => count(box, text) >= 1, ms)
  await sleep(300) // a duplicate would arrive right behind it
  const box = await readBox(users[who].page)
  assert.equal(count(box, text), 1, `${who} shows "${text}" ${count(box, text)} times: ${JSON.stringify(box.messages)}`)
}

async function noDuplicates(who) {
  const box = await readBox(users[who].page)
  const seen = new Set()
  for (const m of box.messages) {
    assert.ok(!seen.has(m), `${who} shows "${m}" twice: ${JSON.stringify(box.messages)}`)
    seen.add(m)
  }
  return box
}

// Saves every open page when a step fails, then rethrows.
let failed = '' // the steps build on each other: after a failure the rest are skipped
function step(name, fn, timeout = 60_000) {
  test(name, { timeout }, async (t) => {
    if (failed) return t.skip(`an earlier step failed: ${failed}`)
    try {
      await fn()
    } catch (err) {
      failed = name
      mkdirSync(SHOTS, { recursive: true })
      const slug = name.replace(/[^a-z0-9]+/gi, '-').toLowerCase()
      for (const [who, { page, consoleLines, packets }] of Object.entries(users)) {
        if (consoleLines.length) console.log(`--- ${who}'s browser console ---\n${consoleLines.slice(-30).join('\n')}`)
        console.log(`--- ${who}'s last Socket.IO packets ---\n${packets.slice(-15).join('\n').slice(-3000)}`)
        const file = path.join(SHOTS, `${slug}-${who}.png`)
        await page.screenshot({ path: file, fullPage: true }).catch(() => {})
        console.log(`screenshot: ${file}`)
      }
      for (const child of children) console.log(`--- ${child.label} log (tail) ---\n${tail(child.log)}`)
      throw err
    }
  })
}

// ---------------------------------------------------------------- setup

before(
  async () => {
    assert.ok(existsSync(BIN), `no switchboard binary at ${BIN} (cargo build --release, or set SWITCHBOARD_BIN)`)
    assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (apt-get install chromium)`)
    const sbPort = Number(process.env.E2E_SWITCHBOARD_PORT) || (await freePort())
    const appPort = await freePort()
    // The legacy /api/login redirects to `localhost` (Next.js builds req.url from it), so the
    // browser uses that name for the app; Chromium maps it to 127.0.0.1, where next listens.
    appUrl = `http://localhost:${appPort}`
    const appLoopback = `http://127.0.0.1:${appPort}`
    const switchboardUrl = `http://127.0.0.1:${sbPort}`
    const nextEnv = { NEXT_TELEMETRY_DISABLED: '1', SWITCHBOARD_URL: switchboardUrl }

    if (!builtFor(switchboardUrl)) {
      const t0 = Date.now()
      const build = run('next-build', process.execPath, [NEXT_BIN, 'build'], nextEnv, { oneShot: true })
      const code = await new Promise((resolve) => build.on('exit', resolve))
      assert.equal(code, 0, `next build failed:\n${tail(build.log)}`)
      console.log(`next build: ${((Date.now() - t0) / 1000).toFixed(1)} s`)
    }

    const sb = run('switchboard', BIN, [], {
      PORT: String(sbPort),
      HOST: '127.0.0.1',
      DATABASE_URL: `sqlite://${path.join(work, 'switchboard.db')}`,
      JWT_SECRET: 'e2e-jwt-secret-0123456789abcdef',
      ALLOWED_ORIGINS: appUrl,
      PUSHER_AUTH_ENDPOINT: `${appLoopback}/api/pusher/auth`,
      RUST_LOG: 'info',
      ...PUSHER,
    })
    const app = run('next-start', process.execPath, [NEXT_BIN, 'start', '-p', String(appPort), '-H', '127.0.0.1'], {
      ...nextEnv,
      ...PUSHER,
      PUSHER_HOST: '127.0.0.1',
      PUSHER_PORT: String(sbPort),
      PUSHER_USE_TLS: 'false',
    })
    for (const child of [sb, app]) {
      child.on('exit', (code, signal) => {
        if (!child.stopping) console.log(`${child.label} exited early (${code ?? signal}):\n${tail(child.log)}`)
      })
    }
    backend = new Pusher({
      appId: PUSHER.PUSHER_APP_ID,
      key: PUSHER.PUSHER_KEY,
      secret: PUSHER.PUSHER_SECRET,
      host: '127.0.0.1',
      port: String(sbPort),
      useTLS: false,
    })
    await waitHttp(`${switchboardUrl}/healthz`, 'switchboard', 20_000)
    await waitHttp(`${appLoopback}/`, 'next start', 30_000)

    // playwright-core gives every launch a fresh temporary profile (its own --user-data-dir;
    // it refuses one in `args`) and removes it on close.
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--host-resolver-rules=MAP localhost 127.0.0.1',
      ],
    })
  },
  { timeout: 300_000 },
)

after(async () => {
  await browser?.close().catch(() => {})
  for (const child of children) {
    child.stopping = true
    if (child.exitCode === null) child.kill('SIGTERM')
  }
  await Promise.all(
    children.map((c) => (c.exitCode === null ? new Promise((resolve) => c.once('exit', resolve)) : null)),
  )
  rmSync(work, { recursive: true, force: true })
  console.log(`browser e2e run time: ${((Date.now() - started) / 1000).toFixed(1)} s`)
})

// ---------------------------------------------------------------- the steps

step('both log in through /api/login and see each other online', async () => {
  await open('alice', ALICE, CAROL)
  await open('carol', CAROL, ALICE)
  await eventually('alice', 'carol online', (box) => box.online)
  await eventually('carol', 'alice online', (box) => box.online)
})

step('messages flow both ways, once each', async () => {
  await send('alice', 'hi carol, alice here')
  await seesOnce('carol', 'hi carol, alice here')
  await seesOnce('alice', 'hi carol, alice here')
  await send('carol', 'hello alice')
  await seesOnce('alice', 'hello alice')
  await seesOnce('carol', 'hello alice')
})

step('typing shows, and hides when the typist stops (before the 5 s fallback)', async () => {
  const input = users.alice.page.locator('input[placeholder^="Message @"]')
  await input.pressSequentially('still writ', { delay: 30 })
  await eventually('carol', 'the typing line', (box) => box.typing === `${ALICE.fullName} is typing…`, 5000)
  await input.fill('')
  const t0 = Date.now()
  await input.evaluate((el) => el.blur()) // stopTyping: isTyping false
  await eventually('carol', 'the typing line to clear', (box) => box.typing === '', 4000)
  assert.ok(Date.now() - t0 < 4000, 'hidden by the isTyping:false event, not the 5 s fallback')
})

step('the online dot follows the other user (closed, then back)', async () => {
  await close('carol')
  await eventually('alice', 'carol offline', (box) => !box.online)
  await open('carol', CAROL, ALICE)
  await eventually('alice', 'carol online again', (box) => box.online)
  await eventually('carol', 'alice online', (box) => box.online)
})

step('a reload shows the history, once', async () => {
  // carol's context is new since the last step: what she sees came from the history already.
  await users.carol.page.reload()
  await eventually('carol', 'connected after reload', (box) => box.connected)
  for (const text of sent) await seesOnce('carol', text)
  await users.alice.page.reload()
  await eventually('alice', 'connected after reload', (box) => box.connected)
  for (const text of sent) await seesOnce('alice', text)
})

step('a message sent while the other side is closed appears once when it comes back', async () => {
  await close('carol')
  await eventually('alice', 'carol offline', (box) => !box.online)
  await send('alice', 'sent while carol was away')
  await seesOnce('alice', 'sent while carol was away')
  await open('carol', CAROL, ALICE)
  await seesOnce('carol', 'sent while carol was away')
})

step('network cut (context offline) then back: the missed messages arrive once, replayed by recovery', async () => {
  const carol = users.carol
  await carol.context.setOffline(true)
  // The WebSocket stays open but silent, as for a sleeping laptop: both ends notice through the
  // heartbeat (25 s ping interval + 20 s timeout).
  await eventually('carol', 'the socket to notice the cut', (box) => !box.connected, 75_000)
  await eventually('alice', 'carol offline', (box) => !box.online, 75_000)
  carol.packets.length = 0
  await send('alice', 'sent during the outage 1')
  await send('alice', 'sent during the outage 2')
  await seesOnce('alice', 'sent during the outage 2')
  await carol.context.setOffline(false)
  await eventually('carol', 'reconnected', (box) => box.connected, 30_000)
  await seesOnce('carol', 'sent during the outage 1')
  await seesOnce('carol', 'sent during the outage 2')
  await eventually('alice', 'carol online again', (box) => box.online)
  // Connection state recovery: the CONNECT answer kept the session (pid) and the missed messages
  // came as new-message packets, not only inside a join-room ack's history.
  const replayed = carol.packets.filter((p) => p.startsWith('42["new-message"') && p.includes('sent during the outage'))
  assert.equal(replayed.length, 2, `expected the 2 missed messages replayed as new-message; packets: ${JSON.stringify(carol.packets)}`)
}, 200_000)

step('a server-side disconnect (terminate_connections): the hook reconnects by itself and catches up', async () => {
  const res = await backend.terminateUserConnections(String(CAROL.id))
  assert.equal(res.status, 200)
  await eventually('carol', 'the socket to be cut', (box) => !box.connected, 5000)
  await send('alice', 'sent while carol was cut off')
  await eventually('carol', 'reconnected (socket.io-client alone would not)', (box) => box.connected, 15_000)
  await seesOnce('carol', 'sent while carol was cut off')
  await eventually('alice', 'carol online', (box) => box.online)
})

step('no duplicates anywhere, and both sides hold the whole conversation', async () => {
  await users.carol.page.reload()
  await eventually('carol', 'connected after reload', (box) => box.connected)
  for (const who of ['alice', 'carol']) {
    await eventually(who, 'every message', (box) => sent.every((t) => count(box, t) >= 1))
    const box = await noDuplicates(who)
    assert.deepEqual(box.messages, sent, `${who}'s list is the conversation in order`)
    assert.equal(box.error, false, `${who} shows an error`)
  }
})
