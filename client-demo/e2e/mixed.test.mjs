//! Old and new tabs in the same room, in a real browser: the UNMODIFIED legacy app
//! (../shared/legacy-pusher-app: pusher-js over Pusher protocol 7 at /app/{key}, the official
//! `pusher` SDK for its message/typing routes) and client-demo (socket.io-client), both pointed at
//! one switchboard (release binary, SQLite) by environment alone, as the first step of a
//! migration does. alice (5) uses the legacy app, carol (12) client-demo; they chat in
//! chat-5-12 (`private-chat-5-12` on the Pusher side) both ways, with typing and online state in
//! both UIs.
//!
//! The legacy app is copied to a temporary folder, `npm ci`'d and built there with its
//! NEXT_PUBLIC_PUSHER_* values (baked in at build time), while client-demo builds beside it (or
//! its .next is reused when built for a switchboard port that is free now). On a failure every
//! open page is saved to E2E_SCREENSHOTS and the server logs' tails are printed.
//!
//! Env: SWITCHBOARD_BIN, CHROMIUM, E2E_SCREENSHOTS as chat.test.mjs; LEGACY_APP (default
//! <repo>/../shared/legacy-pusher-app); E2E_LEGACY_BUILD (a folder kept between runs for the
//! legacy copy: rebuilt only when the sources or the switchboard port changed; default a
//! temporary folder, removed at the end); E2E_SWITCHBOARD_PORT (default: a free port).

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import {
  cpSync,
  createWriteStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { after, before, test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'

const APP_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const REPO = path.resolve(APP_DIR, '..')
const BIN = process.env.SWITCHBOARD_BIN || path.join(REPO, 'target', 'release', 'switchboard')
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'
const SHOTS = process.env.E2E_SCREENSHOTS || path.join(APP_DIR, 'e2e', 'screenshots')
const LEGACY_SRC = path.resolve(process.env.LEGACY_APP || path.join(REPO, '..', 'shared', 'legacy-pusher-app'))
const nextBin = (dir) => path.join(dir, 'node_modules', 'next', 'dist', 'bin', 'next')

const PUSHER = { PUSHER_APP_ID: '4243', PUSHER_KEY: 'mixed-key', PUSHER_SECRET: 'mixed-secret-0123456789abcdef' }
const ALICE = { id: 5, fullName: 'Alice Martin' }
const CAROL = { id: 12, fullName: 'Carol Ito' }

const SCRUBBED_ENV =
  /^(PORT|HOST|DATABASE_URL|JWT_SECRET|JWT_PUBLIC_KEY|REDIS_URL|REDIS_PREFIX|ALLOWED_ORIGINS|SWITCHBOARD_URL|PUSHER_.*|NEXT_PUBLIC_.*|RECOVERY_.*|RATE_LIMIT_.*)$/

const started = Date.now()
const work = mkdtempSync(path.join(tmpdir(), 'mixed-e2e-'))
const legacyDir = path.resolve(process.env.E2E_LEGACY_BUILD || path.join(work, 'legacy'))
const children = []
const urls = {} // 'legacy' | 'demo' -> the app's browser origin
let browser
const users = {} // 'alice' | 'carol' -> { context, page, consoleLines, frames }

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

function portIsFree(port) {
  return new Promise((resolve) => {
    const srv = createServer()
    srv.once('error', () => resolve(false))
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)))
  })
}

function run(name, cmd, args, env, opts = {}) {
  const log = path.join(work, `${name}.log`)
  const out = createWriteStream(log)
  // The developer's shell must not configure the servers (a REDIS_URL, another DATABASE_URL…).
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !SCRUBBED_ENV.test(k)))
  const child = spawn(cmd, args, {
    cwd: opts.cwd ?? APP_DIR,
    env: { ...inherited, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  child.stdout.pipe(out)
  child.stderr.pipe(out)
  child.log = log
  child.label = name
  if (!opts.oneShot) children.push(child)
  return child
}

async function runToEnd(name, cmd, args, env, cwd) {
  const t0 = Date.now()
  const child = run(name, cmd, args, env, { oneShot: true, cwd })
  const code = await new Promise((resolve) => child.on('exit', resolve))
  assert.equal(code, 0, `${name} failed:\n${tail(child.log)}`)
  console.log(`${name}: ${((Date.now() - t0) / 1000).toFixed(1)} s`)
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

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const newest = (p) =>
  statSync(p).isDirectory()
    ? Math.max(0, ...readdirSync(p).filter((n) => n !== 'node_modules' && n !== '.next').map((n) => newest(path.join(p, n))))
    : statSync(p).mtimeMs

// client-demo's .next, when it is a build of the current sources: the switchboard port it was
// built for (its rewrite target), else null. chat.test.mjs runs first and leaves one.
function demoBuiltPort() {
  const manifest = path.join(APP_DIR, '.next', 'routes-manifest.json')
  const buildId = path.join(APP_DIR, '.next', 'BUILD_ID')
  if (!existsSync(manifest) || !existsSync(buildId)) return null
  const m = readFileSync(manifest, 'utf8').match(/"http:\/\/127\.0\.0\.1:(\d+)\/socket\.io\//)
  if (!m) return null
  const sources = ['src', 'next.config.ts', 'package-lock.json', 'tsconfig.json'].map((p) => path.join(APP_DIR, p))
  if (Math.max(...sources.filter(existsSync).map(newest)) >= statSync(buildId).mtimeMs) return null
  return Number(m[1])
}

// The legacy app, copied as it is (no node_modules, no .next, no .env*: only our env configures
// it), installed from its own lockfile and built for this switchboard port.
async function buildLegacy(publicEnv) {
  const stampFile = path.join(legacyDir, '.e2e-build.json')
  const stamp = JSON.stringify({ publicEnv, sources: newest(LEGACY_SRC), src: LEGACY_SRC })
  if (existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp) return
  rmSync(legacyDir, { recursive: true, force: true })
  cpSync(LEGACY_SRC, legacyDir, {
    recursive: true,
    filter: (src) => !/(^|[\\/])(node_modules|\.next|\.env[^\\/]*)$/.test(path.relative(LEGACY_SRC, src)),
  })
  await runToEnd('legacy-npm-ci', 'npm', ['ci', '--no-audit', '--no-fund', '--loglevel=error'], {}, legacyDir)
  await runToEnd('legacy-next-build', process.execPath, [nextBin(legacyDir), 'build'], publicEnv, legacyDir)
  writeFileSync(stampFile, stamp)
}

// ---------------------------------------------------------------- the page

// What one chat box shows. Both apps render the legacy ChatBoxInstance.tsx (client-demo kept it
// untouched): header (dot, name, "connecting…"), message list, typing line, form.
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

async function open(who, app, user, other) {
  const context = await browser.newContext()
  const page = await context.newPage()
  const consoleLines = []
  const frames = [] // WebSocket frames both ways (Pusher or Engine.IO), for the failure report
  page.on('console', (msg) => consoleLines.push(`${new Date().toISOString()} ${msg.type()}: ${msg.text()}`))
  page.on('pageerror', (err) => consoleLines.push(`${new Date().toISOString()} page error: ${err.message}`))
  page.on('websocket', (ws) => {
    frames.push(`(open ${ws.url()})`)
    ws.on('framereceived', (f) => typeof f.payload === 'string' && frames.push(`< ${f.payload}`))
    ws.on('framesent', (f) => typeof f.payload === 'string' && frames.push(`> ${f.payload}`))
    ws.on('close', () => frames.push('(websocket closed)'))
  })
  users[who] = { context, page, consoleLines, frames }
  await page.goto(`${urls[app]}/api/login?uid=${user.id}&with=${other.id}`)
  await eventually(who, 'the chat box, connected', (box) => box.connected)
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
}

const count = (box, text) => box.messages.filter((m) => m === text).length

async function seesOnce(who, text, ms) {
  await eventually(who, `"${text}" in the list`, (box) => count(box, text) >= 1, ms)
  await sleep(300) // a duplicate would arrive right behind it
  const box = await readBox(users[who].page)
  assert.equal(count(box, text), 1, `${who} shows "${text}" ${count(box, text)} times: ${JSON.stringify(box.messages)}`)
}

// `typist` types a few keys; `watcher` must show the typing line, then see it cleared by the
// isTyping:false sent on blur, before the receiver's 5 s fallback would hide it.
async function typingShows(typist, watcher, name) {
  const input = users[typist].page.locator('input[placeholder^="Message @"]')
  await input.pressSequentially('still writ', { delay: 30 })
  await eventually(watcher, `${typist}'s typing line`, (box) => box.typing === `${name} is typing…`, 5000)
  await input.fill('')
  const t0 = Date.now()
  await input.evaluate((el) => el.blur())
  await eventually(watcher, 'the typing line to clear', (box) => box.typing === '', 4000)
  assert.ok(Date.now() - t0 < 4000, 'hidden by the isTyping:false event, not the 5 s fallback')
}

let failed = '' // the steps build on each other: after a failure the rest are skipped
function step(name, fn, timeout = 60_000) {
  test(name, { timeout }, async (t) => {
    if (failed) return t.skip(`an earlier step failed: ${failed}`)
    try {
      await fn()
    } catch (err) {
      failed = name
      mkdirSync(SHOTS, { recursive: true })
      const slug = `mixed-${name.replace(/[^a-z0-9]+/gi, '-').toLowerCase()}`
      for (const [who, { page, consoleLines, frames }] of Object.entries(users)) {
        if (consoleLines.length) console.log(`--- ${who}'s browser console ---\n${consoleLines.slice(-30).join('\n')}`)
        console.log(`--- ${who}'s last WebSocket frames ---\n${frames.slice(-20).join('\n').slice(-4000)}`)
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
    assert.ok(existsSync(path.join(LEGACY_SRC, 'package-lock.json')), `no legacy app at ${LEGACY_SRC} (set LEGACY_APP)`)
    // Both builds fix the switchboard URL: reuse client-demo's when its port is free now.
    const reusable = demoBuiltPort()
    const sbPort =
      Number(process.env.E2E_SWITCHBOARD_PORT) || (reusable && (await portIsFree(reusable)) ? reusable : await freePort())
    const switchboardUrl = `http://127.0.0.1:${sbPort}`
    const legacyPublic = {
      NEXT_TELEMETRY_DISABLED: '1',
      NEXT_PUBLIC_PUSHER_KEY: PUSHER.PUSHER_KEY,
      NEXT_PUBLIC_PUSHER_HOST: '127.0.0.1',
      NEXT_PUBLIC_PUSHER_PORT: String(sbPort),
      NEXT_PUBLIC_PUSHER_USE_TLS: 'false',
    }
    const demoEnv = { NEXT_TELEMETRY_DISABLED: '1', SWITCHBOARD_URL: switchboardUrl }

    // The two builds side by side.
    await Promise.all([
      buildLegacy(legacyPublic),
      demoBuiltPort() === sbPort
        ? null
        : runToEnd('demo-next-build', process.execPath, [nextBin(APP_DIR), 'build'], demoEnv, APP_DIR),
    ])

    // The apps' ports are not in the builds: taken now, a minute of building could lose them.
    const [legacyPort, demoPort] = [await freePort(), await freePort()]
    // The apps' /api/login redirects to `localhost` (Next.js builds req.url from it), so the
    // browser uses that name; Chromium maps it to 127.0.0.1, where next listens.
    urls.legacy = `http://localhost:${legacyPort}`
    urls.demo = `http://localhost:${demoPort}`

    const sb = run('switchboard', BIN, [], {
      PORT: String(sbPort),
      HOST: '127.0.0.1',
      DATABASE_URL: `sqlite://${path.join(work, 'switchboard.db')}`,
      JWT_SECRET: 'mixed-jwt-secret-0123456789abcdef',
      ALLOWED_ORIGINS: `${urls.demo},${urls.legacy}`,
      // Socket.IO connections learn their user from client-demo's auth route (its `uid` cookie);
      // pusher-js brings its own auth from the legacy route, checked with the app secret.
      PUSHER_AUTH_ENDPOINT: `http://127.0.0.1:${demoPort}/api/pusher/auth`,
      RUST_LOG: 'info',
      ...PUSHER,
    })
    // Each app's server SDK (the `pusher` package) triggers through switchboard's HTTP API.
    const sdkEnv = { ...PUSHER, PUSHER_HOST: '127.0.0.1', PUSHER_PORT: String(sbPort), PUSHER_USE_TLS: 'false' }
    const demo = run('demo-next-start', process.execPath, [nextBin(APP_DIR), 'start', '-p', String(demoPort), '-H', '127.0.0.1'], {
      ...demoEnv,
      ...sdkEnv,
    })
    const legacy = run(
      'legacy-next-start',
      process.execPath,
      [nextBin(legacyDir), 'start', '-p', String(legacyPort), '-H', '127.0.0.1'],
      { ...legacyPublic, ...sdkEnv },
      { cwd: legacyDir },
    )
    for (const child of [sb, demo, legacy]) {
      child.on('exit', (code, signal) => {
        if (!child.stopping) console.log(`${child.label} exited early (${code ?? signal}):\n${tail(child.log)}`)
      })
    }
    await waitHttp(`${switchboardUrl}/healthz`, 'switchboard', 20_000)
    await waitHttp(`http://127.0.0.1:${demoPort}/`, 'client-demo (next start)', 30_000)
    await waitHttp(`http://127.0.0.1:${legacyPort}/`, 'legacy app (next start)', 30_000)

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
  { timeout: 600_000 },
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
  console.log(`mixed browser e2e run time: ${((Date.now() - started) / 1000).toFixed(1)} s`)
})

// ---------------------------------------------------------------- the steps

step('alice on the legacy app (pusher-js) and carol on client-demo (socket.io) see each other online', async () => {
  await open('alice', 'legacy', ALICE, CAROL)
  await open('carol', 'demo', CAROL, ALICE)
  await eventually('alice', 'carol online', (box) => box.online)
  await eventually('carol', 'alice online', (box) => box.online)
  // alice really is on the Pusher protocol, carol on Socket.IO.
  assert.ok(users.alice.frames.some((f) => f.includes('/app/mixed-key')), 'alice opened /app/{key}')
  assert.ok(users.carol.frames.some((f) => f.includes('/socket.io/')), 'carol opened /socket.io/')
})

step('a message from pusher-js reaches socket.io, once', async () => {
  await send('alice', 'hi carol, from the old tab')
  await seesOnce('alice', 'hi carol, from the old tab')
  await seesOnce('carol', 'hi carol, from the old tab')
})

step('a message from socket.io reaches pusher-js, once', async () => {
  await send('carol', 'hello alice, from the new tab')
  await seesOnce('carol', 'hello alice, from the new tab')
  await seesOnce('alice', 'hello alice, from the new tab')
})

step('typing shows both ways, and hides when the typist stops', async () => {
  await typingShows('alice', 'carol', ALICE.fullName)
  await typingShows('carol', 'alice', CAROL.fullName)
})

step('the online dot follows the other user across protocols (closed, then back)', async () => {
  await close('carol')
  await eventually('alice', 'carol offline', (box) => !box.online)
  await open('carol', 'demo', CAROL, ALICE)
  await eventually('alice', 'carol online again', (box) => box.online)
  await close('alice')
  await eventually('carol', 'alice offline', (box) => !box.online)
  await open('alice', 'legacy', ALICE, CAROL)
  await eventually('carol', 'alice online again', (box) => box.online)
  await eventually('alice', 'carol online', (box) => box.online)
})

step('both ways again after the reconnects, and no error shown', async () => {
  await send('carol', 'still there?')
  await seesOnce('alice', 'still there?')
  await send('alice', 'yes')
  await seesOnce('carol', 'yes')
  for (const who of ['alice', 'carol']) {
    const box = await readBox(users[who].page)
    assert.equal(box.error, false, `${who} shows an error`)
  }
})
