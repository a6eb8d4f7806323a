// Shared helpers for the switchboard compatibility suite.
//
// Everything here has a timeout: no helper waits forever. Sockets made by
// `connect()` and servers made by `startServer()` are tracked so that the
// `closeSockets()` / `stopServers()` hooks (and a last-resort process 'exit'
// handler) always release them and the runner can exit.
//
// Cluster mode (CONTRACT "Many nodes"): with SB_TEST_CLUSTER=N (N >= 2),
// SB_TEST_REDIS (redis://host:port) and SB_TEST_POSTGRES (admin URL) set,
// `startServer()` starts N nodes sharing one fresh Postgres database and one
// fresh REDIS_PREFIX, and returns a handle shaped like a single server's whose
// `url` is "spread": every `connect()` to it picks the next node round-robin,
// and `http()` / the Pusher helpers rotate through the nodes too. So the whole
// suite runs with its clients spread over the cluster, unchanged.
// `startServer({ single: true })` keeps one process (a one-node cluster in
// cluster mode) for the tests that need one; `startCluster()` always starts a
// cluster, with node handles whose URLs are pinned to one node each.

import { execFileSync, spawn } from 'node:child_process'
import { createHmac, randomBytes } from 'node:crypto'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, connect as netConnect } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { io } from 'socket.io-client'

const here = path.dirname(fileURLToPath(import.meta.url))
export const REPO_ROOT = path.resolve(here, '..', '..')
export const BIN = process.env.SWITCHBOARD_BIN || path.join(REPO_ROOT, 'target', 'release', 'switchboard')

export const SECRET = 'compat-test-secret-0123456789abcdef'
export const TRANSPORTS = [
  { name: 'websocket', transports: ['websocket'] },
  { name: 'polling+upgrade', transports: undefined },
]
export const ERROR_CODES = [
  'unauthorized',
  'forbidden',
  'invalid_payload',
  'invalid_room',
  'not_joined',
  'rate_limited',
  'too_large',
  'internal',
]

// Variables that must not leak from the developer's shell into the server.
const SCRUBBED_ENV = [
  'PORT',
  'HOST',
  'DATABASE_URL',
  'JWT_SECRET',
  'JWT_PUBLIC_KEY',
  'REDIS_URL',
  'ALLOWED_ORIGINS',
  'PUSHER_APP_ID',
  'PUSHER_KEY',
  'PUSHER_SECRET',
  'PUSHER_AUTH_ENDPOINT',
  'RATE_LIMIT_PER_SEC',
  'RATE_LIMIT_BURST',
  'MAX_EVENT_BYTES',
  'TYPING_TIMEOUT_MS',
  'SHUTDOWN_TIMEOUT_SECS',
  'REDIS_PREFIX',
  'NODE_TIMEOUT_MS',
  'MAX_FRAME_BYTES',
  'PUSHER_AUTH_TIMEOUT_MS',
  'SOCKET_BUFFER_PACKETS',
  'RECOVERY_WINDOW_SECS',
]

/** SB_TEST_CLUSTER=N (N >= 2): `startServer()` starts an N-node cluster (see the top of this file). */
export const CLUSTER_SIZE = Number.parseInt(process.env.SB_TEST_CLUSTER || '0', 10) || 0
export const CLUSTER_MODE = CLUSTER_SIZE >= 2
/** Why a cluster cannot be started here, or '' when SB_TEST_REDIS and SB_TEST_POSTGRES are set. */
export const CLUSTER_UNAVAILABLE =
  process.env.SB_TEST_REDIS && process.env.SB_TEST_POSTGRES
    ? ''
    : 'needs SB_TEST_REDIS (redis://…) and SB_TEST_POSTGRES (a Postgres admin URL); scripts/test.sh sets both'

const liveServers = new Set()
const liveSockets = new Set()
const liveRedis = new Set()
const tempDirs = new Set()
/** Spread URLs of cluster handles made by startServer() -> the handle (see spreadHandle). */
const spreads = new Map()

process.on('exit', () => {
  for (const s of liveServers) {
    try {
      s.proc.kill('SIGKILL')
    } catch {}
  }
  for (const r of liveRedis) {
    try {
      r.proc.kill('SIGKILL')
    } catch {}
  }
  for (const d of tempDirs) {
    try {
      rmSync(d, { recursive: true, force: true })
    } catch {}
  }
})

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

export function makeTempDir(prefix = 'sb-compat-') {
  const d = mkdtempSync(path.join(tmpdir(), prefix))
  tempDirs.add(d)
  return d
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

/** Races a promise against a timer; rejects with `what` on timeout. */
export function withTimeout(promise, ms, what = 'operation') {
  let timer
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${what}`)), ms)
    }),
  ])
}

/**
 * Builds the environment for a server process: scrubbed parent env + defaults
 * + `env` (a value of `undefined`/`null` removes the variable).
 */
function buildEnv({ port, host, dbUrl, env = {} }) {
  const out = { ...process.env }
  for (const k of SCRUBBED_ENV) delete out[k]
  Object.assign(out, {
    PORT: String(port),
    HOST: host,
    DATABASE_URL: dbUrl,
    JWT_SECRET: SECRET,
    RUST_LOG: process.env.RUST_LOG || 'info',
  })
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined || v === null) delete out[k]
    else out[k] = String(v)
  }
  return out
}

/**
 * A fresh database for one server: SQLite in its temp folder, or, when
 * SB_TEST_POSTGRES names a Postgres server (admin URL), a new database there,
 * so the whole suite can run against either store.
 */
function defaultDatabase(dir) {
  const admin = process.env.SB_TEST_POSTGRES
  if (!admin) return `sqlite://${path.join(dir, 'db.sqlite')}`
  return newPostgresDatabase(admin)
}

/** Creates an empty database on the Postgres server `admin` names; returns its URL. */
export function newPostgresDatabase(admin = process.env.SB_TEST_POSTGRES) {
  if (!admin) throw new Error('newPostgresDatabase: SB_TEST_POSTGRES is not set')
  const name = `sb_compat_${randomBytes(6).toString('hex')}`
  execFileSync('psql', [admin, '-qc', `CREATE DATABASE ${name}`], { stdio: 'ignore', timeout: 10000 })
  return `${admin.slice(0, admin.lastIndexOf('/'))}/${name}`
}

/**
 * Spawns the switchboard binary without waiting for readiness.
 * Returns { proc, output(), exited (promise of {code, signal}), port, url, env, cwd }.
 */
export async function spawnServer({ env = {}, args = [], port, cwd, dbUrl, label } = {}) {
  port ??= await freePort()
  const dir = makeTempDir()
  cwd ??= dir
  dbUrl ??= defaultDatabase(dir)
  const fullEnv = buildEnv({ port, host: '127.0.0.1', dbUrl, env })
  const proc = spawn(BIN, args, { env: fullEnv, cwd, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  proc.stdout.setEncoding('utf8')
  proc.stderr.setEncoding('utf8')
  proc.stdout.on('data', (d) => (stdout += d))
  proc.stderr.on('data', (d) => (stderr += d))
  const exited = new Promise((resolve) => {
    proc.on('error', (err) => {
      stderr += `\n[spawn error] ${err.message}\n`
      resolve({ code: null, signal: null, error: err })
    })
    proc.on('exit', (code, signal) => resolve({ code, signal }))
  })
  const handle = {
    proc,
    port,
    url: `http://127.0.0.1:${port}`,
    env: fullEnv,
    cwd,
    dir,
    dbUrl: fullEnv.DATABASE_URL,
    exited,
    exitInfo: null,
    output: () => `--- stdout ---\n${stdout}\n--- stderr ---\n${stderr}`,
    stdout: () => stdout,
    stderr: () => stderr,
    label,
  }
  exited.then((info) => {
    handle.exitInfo = info
    liveServers.delete(handle)
    // SB_LOG_DIR=/some/dir keeps every server's output for debugging
    if (process.env.SB_LOG_DIR) {
      try {
        mkdirSync(process.env.SB_LOG_DIR, { recursive: true })
        const name = label ? `server-${port}-${label}.log` : `server-${port}.log`
        writeFileSync(path.join(process.env.SB_LOG_DIR, name), handle.output())
      } catch {}
    }
  })
  liveServers.add(handle)
  return handle
}

/**
 * Starts the server and waits until GET /healthz answers 200 (20 s max).
 * `env` entries override the defaults (PORT, HOST, DATABASE_URL, JWT_SECRET);
 * pass `dbUrl` to reuse a database (e.g. after a restart).
 *
 * In cluster mode (SB_TEST_CLUSTER=N) this starts N nodes (see startCluster)
 * and returns a spread handle: same fields as a single server's (`url`,
 * `port`, `dbUrl`, `env`, `output()`, `stop()`, `kill9()`, …), plus `nodes`
 * (pinned node handles) and `cluster`; `stop()` / `kill9()` act on every
 * node. `single: true` starts one process instead (still with Redis in
 * cluster mode: a one-node cluster); a SQLite database (an explicit
 * `sqlite://` dbUrl, or `--dev`) is always one plain node, as SQLite is
 * single-node only.
 */
export async function startServer({ single = false, ...opts } = {}) {
  if (!CLUSTER_MODE || usesSqlite(opts)) return startNode(opts)
  if (CLUSTER_UNAVAILABLE) throw new Error(`SB_TEST_CLUSTER=${CLUSTER_SIZE} ${CLUSTER_UNAVAILABLE}`)
  const { env, args, dbUrl, port, cwd, readyTimeoutMs } = opts
  const cluster = await startCluster({ nodes: single ? 1 : CLUSTER_SIZE, env, args, dbUrl, port, cwd, readyTimeoutMs })
  if (single) {
    const h = cluster.nodes[0]
    h.cluster = cluster
    return h
  }
  return spreadHandle(cluster)
}

function usesSqlite({ args = [], dbUrl, env = {} }) {
  if (args.includes('--dev')) return true
  const db = dbUrl ?? env.DATABASE_URL
  return typeof db === 'string' && db.startsWith('sqlite')
}

/** One server process, ready (GET /healthz 200). */
async function startNode({ env = {}, args = [], dbUrl, port, cwd, label, readyTimeoutMs = 20000 } = {}) {
  const h = await spawnServer({ env, args, dbUrl, port, cwd, label })
  const deadline = Date.now() + readyTimeoutMs
  let lastErr = 'no answer'
  for (;;) {
    if (h.exitInfo) {
      throw new Error(`server exited before ready (${JSON.stringify(h.exitInfo)})\n${h.output()}`)
    }
    try {
      const res = await fetch(`${h.url}/healthz`, { signal: AbortSignal.timeout(1000) })
      await res.text()
      if (res.status === 200) break
      lastErr = `status ${res.status}`
    } catch (e) {
      lastErr = e.message
    }
    if (Date.now() > deadline) {
      h.proc.kill('SIGKILL')
      throw new Error(`server not healthy within ${readyTimeoutMs} ms (${lastErr})\n${h.output()}`)
    }
    await sleep(100)
  }
  h.stop = (timeoutMs = 20000) => stopProc(h, 'SIGTERM', timeoutMs)
  h.kill9 = () => stopProc(h, 'SIGKILL', 5000)
  return h
}

/** Exit infos of several nodes as one: code 0 only when every node exited 0. */
function combineExits(infos) {
  const bad = infos.find((i) => i.code !== 0)
  return { code: bad ? bad.code : 0, signal: (bad ?? infos[0])?.signal ?? null, nodes: infos }
}

/**
 * Starts a cluster: `nodes` server processes sharing one Postgres database
 * (a fresh one unless `dbUrl` is given) and one Redis prefix (fresh unless
 * `prefix` is given), with `env` on every node. Needs SB_TEST_REDIS (or
 * `redisUrl`) and SB_TEST_POSTGRES (or `dbUrl`).
 *
 * Returns { nodes: [handle…], prefix, dbUrl, redisUrl, env,
 *           addNode({ env }) -> handle  (one more node in the same cluster),
 *           stop(ms), kill9(), output() }.
 * Node handles are what startServer() returns for one server; their `url`
 * always reaches that node (never spread).
 */
export async function startCluster({
  nodes = 2,
  env = {},
  args = [],
  dbUrl,
  prefix,
  redisUrl = process.env.SB_TEST_REDIS,
  port,
  cwd,
  readyTimeoutMs = 30000,
} = {}) {
  if (!redisUrl) throw new Error('startCluster: SB_TEST_REDIS is not set (a redis:// URL)')
  dbUrl ??= newPostgresDatabase()
  prefix ??= `sbt_${randomBytes(6).toString('hex')}`
  const clusterEnv = { ...env, REDIS_URL: redisUrl, REDIS_PREFIX: prefix }
  const cluster = {
    nodes: [],
    prefix,
    dbUrl,
    redisUrl,
    env: clusterEnv,
    async addNode({ env: extra = {}, port: nodePort } = {}) {
      const index = cluster.nodes.length
      const h = await startNode({
        env: { ...clusterEnv, ...extra },
        args,
        dbUrl,
        port: nodePort,
        cwd,
        label: `${prefix}-n${index}`,
        readyTimeoutMs,
      })
      h.index = index
      h.cluster = cluster
      cluster.nodes.push(h)
      return h
    },
    async stop(timeoutMs = 20000) {
      const results = await Promise.allSettled(cluster.nodes.map((h) => h.stop(timeoutMs)))
      const failed = results.find((r) => r.status === 'rejected')
      if (failed) throw failed.reason
      return combineExits(results.map((r) => r.value))
    },
    async kill9() {
      return combineExits(await Promise.all(cluster.nodes.map((h) => h.kill9())))
    },
    output: () => cluster.nodes.map((h) => `=== node ${h.index} ${h.url} (${prefix}) ===\n${h.output()}`).join('\n'),
  }
  // In parallel, as an orchestrator would (sqlx migrations take a Postgres advisory lock).
  const started = await Promise.allSettled(
    Array.from({ length: nodes }, (_, i) =>
      startNode({
        env: clusterEnv,
        args,
        dbUrl,
        port: i === 0 ? port : undefined,
        cwd,
        label: `${prefix}-n${i}`,
        readyTimeoutMs,
      }),
    ),
  )
  const failed = started.find((r) => r.status === 'rejected')
  if (failed) {
    await Promise.all(started.filter((r) => r.status === 'fulfilled').map((r) => r.value.kill9().catch(() => {})))
    throw failed.reason
  }
  started.forEach((r, i) => {
    r.value.index = i
    r.value.cluster = cluster
    cluster.nodes.push(r.value)
  })
  return cluster
}

/**
 * A cluster behind one single-server-shaped handle. Its `url` is
 * http://localhost:PORT0 (node 0 reached by name, while the node handles use
 * 127.0.0.1): `connect()`, `http()` and `pusherFor()` recognise it and send
 * each new client or request to the next live node round-robin. Engine.IO
 * requests (`/socket.io/…` over http()) stay on node 0: a polling session
 * lives on the node that made it (sticky sessions, as behind a balancer).
 */
function spreadHandle(cluster) {
  const n0 = cluster.nodes[0]
  const url = `http://localhost:${n0.port}`
  let turn = 0
  const h = {
    cluster,
    nodes: cluster.nodes,
    port: n0.port,
    url,
    env: n0.env,
    cwd: n0.cwd,
    dir: n0.dir,
    dbUrl: cluster.dbUrl,
    get proc() {
      return n0.proc
    },
    exited: Promise.all(cluster.nodes.map((n) => n.exited)).then(combineExits),
    get exitInfo() {
      return cluster.nodes.every((n) => n.exitInfo) ? combineExits(cluster.nodes.map((n) => n.exitInfo)) : null
    },
    output: () => cluster.output(),
    stdout: () => cluster.nodes.map((n) => n.stdout()).join('\n'),
    stderr: () => cluster.nodes.map((n) => n.stderr()).join('\n'),
    stop: (timeoutMs) => cluster.stop(timeoutMs),
    kill9: () => cluster.kill9(),
    /** The next live node (round-robin). */
    nextNode() {
      const all = cluster.nodes
      for (let i = 0; i < all.length; i++) {
        const n = all[turn++ % all.length]
        if (!n.exitInfo) return n
      }
      return n0
    },
  }
  spreads.set(url, h)
  h.exited.then(() => spreads.delete(url))
  return h
}

/** The spread handle whose URL `url` starts with, and the rest of `url`. */
function spreadOf(url) {
  if (typeof url !== 'string' || spreads.size === 0) return undefined
  for (const [base, h] of spreads) {
    if (url === base || url.startsWith(`${base}/`) || url.startsWith(`${base}?`)) return { h, rest: url.slice(base.length) }
  }
  return undefined
}

/**
 * Where a client or request for `url` goes: a spread cluster URL becomes the
 * next node's URL (round-robin); anything else is returned unchanged.
 * `sticky: true` keeps node 0 (Engine.IO polling sessions).
 */
export function resolveUrl(url, { sticky = false } = {}) {
  const s = spreadOf(url)
  if (!s) return url
  const node = sticky ? s.h.nodes[0] : s.h.nextNode()
  return node.url + s.rest
}

/** The next node of a spread handle (round-robin), or the handle itself for one server. */
export function nextNode(srv) {
  return srv.nextNode ? srv.nextNode() : srv
}

async function stopProc(h, signal, timeoutMs) {
  if (h.exitInfo) return h.exitInfo
  try {
    h.proc.kill(signal)
  } catch {}
  try {
    return await withTimeout(h.exited, timeoutMs, `server exit after ${signal}`)
  } catch (e) {
    try {
      h.proc.kill('SIGKILL')
    } catch {}
    await withTimeout(h.exited, 5000, 'server exit after SIGKILL').catch(() => {})
    throw e
  }
}

/** Stops every server still running (SIGTERM, then SIGKILL). For after() hooks. */
export async function stopServers() {
  await Promise.all(
    [...liveServers].map(async (h) => {
      if (h.stop) await h.stop(15000).catch(() => {})
      else {
        try {
          h.proc.kill('SIGKILL')
        } catch {}
        await withTimeout(h.exited, 5000, 'exit').catch(() => {})
      }
    }),
  )
}

// ---------------------------------------------------------------- JWT

const b64url = (buf) => Buffer.from(buf).toString('base64url')

/**
 * Signs `claims` as a JWT. Default HS256 with the suite's SECRET.
 * `alg: 'none'` makes an unsigned token; `header` overrides header fields.
 */
export function token(claims, { secret = SECRET, alg = 'HS256', header = {} } = {}) {
  const head = b64url(JSON.stringify({ alg, typ: 'JWT', ...header }))
  const body = b64url(JSON.stringify(claims))
  const input = `${head}.${body}`
  if (alg === 'none') return `${input}.`
  const hashes = { HS256: 'sha256', HS384: 'sha384', HS512: 'sha512' }
  const hash = hashes[alg]
  if (!hash) throw new Error(`unsupported alg ${alg}`)
  const sig = createHmac(hash, secret).update(input).digest('base64url')
  return `${input}.${sig}`
}

/** A fresh token for user `id` with optional profile claims. */
export const userToken = (id, profile = {}) => token({ sub: id, ...profile })

let idCounter = 1000 + Math.floor(Math.random() * 1000) * 1000
/** Unique numeric user ids (never reused within one test process). */
export function ids(n = 1) {
  return Array.from({ length: n }, () => ++idCounter)
}
export function uniqueRoom(prefix = 'room') {
  return `${prefix}_${Date.now().toString(36)}_${randomBytes(4).toString('hex')}`
}
export const dmRoom = (a, b) => `chat-${Math.min(a, b)}-${Math.max(a, b)}`

// ---------------------------------------------------------------- sockets

/**
 * Connects a Socket.IO client and resolves once connected (rejects on
 * connect_error with the error, whose `.message` is the server's message).
 * The socket records every incoming event in `socket.received` and exposes
 * `socket.session` (a promise of the `session` payload, 2 s max).
 */
export function connect(url, { token: tok, transports, timeoutMs = 5000, auth, ...opts } = {}) {
  url = resolveUrl(url)
  const socket = io(url, {
    forceNew: true,
    reconnection: false,
    timeout: timeoutMs,
    ...(transports ? { transports } : {}),
    ...(auth ? { auth } : tok !== undefined ? { auth: { token: tok } } : {}),
    ...opts,
  })
  liveSockets.add(socket)
  socket.nodeUrl = url // the node it went to (a spread cluster URL is resolved above)
  socket.received = []
  socket.onAny((event, ...args) => socket.received.push({ event, args, at: Date.now() }))
  const sessionP = new Promise((resolve) => socket.once('session', resolve))
  socket.session = withTimeout(sessionP, 2000, 'session event')
  socket.session.catch(() => {}) // not awaited by every test
  return withTimeout(
    new Promise((resolve, reject) => {
      socket.once('connect', () => resolve(socket))
      socket.once('connect_error', (err) => {
        socket.close()
        liveSockets.delete(socket)
        reject(err)
      })
    }),
    timeoutMs + 1000,
    'socket connect',
  ).catch((e) => {
    socket.close()
    liveSockets.delete(socket)
    throw e
  })
}

/**
 * Attempts a connection that is expected to fail; resolves with the
 * connect_error (rejects if it connects instead).
 */
export async function connectError(url, opts) {
  let s
  try {
    s = await connect(url, opts)
  } catch (err) {
    return err
  }
  s.close()
  throw new Error('connection unexpectedly succeeded')
}

/** Connect as numeric/string user `id` (with optional profile claims). */
export function connectAs(url, id, { profile = {}, ...opts } = {}) {
  return connect(url, { token: userToken(id, profile), ...opts })
}

export function closeSockets() {
  for (const s of liveSockets) {
    try {
      s.close()
    } catch {}
  }
  liveSockets.clear()
}

/** Emits `event` with `payload` and resolves with the ack (2 s default). */
export function emitAck(socket, event, payload, timeoutMs = 2000) {
  return emitAckArgs(socket, event, [payload], timeoutMs)
}

/** Like emitAck but with an explicit argument list (may be empty). */
export function emitAckArgs(socket, event, args, timeoutMs = 2000) {
  return withTimeout(
    new Promise((resolve) => socket.emit(event, ...args, (...ack) => resolve(ack[0]))),
    timeoutMs,
    `ack for ${event} ${JSON.stringify(args).slice(0, 200)} (socket ${socket.id}, ${socket.io?.engine?.transport?.name})`,
  )
}

/** Resolves with the first payload of `event` that matches `predicate`. */
export function waitFor(socket, event, predicate = () => true, timeoutMs = 2000) {
  let handler
  return withTimeout(
    new Promise((resolve) => {
      handler = (...args) => {
        let ok = false
        try {
          ok = predicate(...args)
        } catch {}
        if (ok) resolve(args[0])
      }
      socket.on(event, handler)
    }),
    timeoutMs,
    `event ${event}`,
  ).finally(() => socket.off(event, handler))
}

/**
 * Resolves after `ms` if no `event` (matching `predicate`) arrived; rejects
 * with the payload otherwise.
 */
export function expectNone(socket, event, ms = 500, predicate = () => true) {
  return new Promise((resolve, reject) => {
    const handler = (...args) => {
      let hit = false
      try {
        hit = predicate(...args)
      } catch {}
      if (hit) {
        clearTimeout(timer)
        socket.off(event, handler)
        reject(new Error(`unexpected ${event}: ${JSON.stringify(args)}`))
      }
    }
    const timer = setTimeout(() => {
      socket.off(event, handler)
      resolve()
    }, ms)
    socket.on(event, handler)
  })
}

/** Payloads of `event` this socket received so far (matching `predicate`). */
export function receivedOf(socket, event, predicate = () => true) {
  return socket.received.filter((r) => r.event === event && predicate(r.args[0])).map((r) => r.args[0])
}

/** Joins and asserts ok; returns the ack. */
export async function join(socket, roomId, extra = {}) {
  const ack = await emitAck(socket, 'join-room', { roomId, ...extra })
  if (!ack || ack.ok !== true) throw new Error(`join-room ${roomId} failed: ${JSON.stringify(ack)}`)
  return ack
}

/** Sends a message and asserts ok; returns the stored message. */
export async function send(socket, roomId, message, extra = {}) {
  const ack = await emitAck(socket, 'send-message', { roomId, message, ...extra })
  if (!ack || ack.ok !== true) throw new Error(`send-message failed: ${JSON.stringify(ack)}`)
  return ack.message
}

// ---------------------------------------------------------------- HTTP

/**
 * Small fetch wrapper: { status, headers, body (parsed JSON when possible), text }.
 */
export async function http(url, { method = 'GET', token: tok, body, headers = {}, raw, timeoutMs = 5000 } = {}) {
  // a spread cluster URL goes to the next node; Engine.IO requests stay on one node (sticky)
  url = resolveUrl(url, { sticky: /^https?:\/\/[^/]+\/socket\.io\//.test(url) })
  const h = { ...headers }
  if (tok) h.authorization = `Bearer ${tok}`
  let payload
  if (raw !== undefined) payload = raw
  else if (body !== undefined) {
    payload = JSON.stringify(body)
    h['content-type'] ??= 'application/json'
  }
  const res = await fetch(url, { method, headers: h, body: payload, signal: AbortSignal.timeout(timeoutMs) })
  const text = await res.text()
  let json
  try {
    json = JSON.parse(text)
  } catch {}
  return { status: res.status, headers: res.headers, body: json, text }
}

export const isDecimalId = (id) => typeof id === 'string' && /^[1-9]\d*$/.test(id)
export const cmpId = (a, b) => (BigInt(a) < BigInt(b) ? -1 : BigInt(a) > BigInt(b) ? 1 : 0)

/**
 * Polls `fn` (sync or async) every `intervalMs` until it returns a truthy
 * value, which is returned; rejects after `timeoutMs` with `what` and the
 * last value or error seen.
 */
export async function waitUntil(fn, { timeoutMs = 5000, intervalMs = 100, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs
  let last
  for (;;) {
    try {
      last = await fn()
      if (last) return last
    } catch (e) {
      last = e
    }
    if (Date.now() >= deadline) {
      const seen = last instanceof Error ? last.message : JSON.stringify(last)
      throw new Error(`timeout after ${timeoutMs} ms waiting for ${what} (last: ${seen?.slice?.(0, 500)})`)
    }
    await sleep(intervalMs)
  }
}

// ---------------------------------------------------------------- Redis

/** Resolves true when a Redis server on 127.0.0.1:`port` answers PING with PONG (1 s max). */
export function redisPing(port, timeoutMs = 1000) {
  return new Promise((resolve) => {
    const sock = netConnect({ host: '127.0.0.1', port })
    let buf = ''
    const done = (ok) => {
      clearTimeout(timer)
      sock.destroy()
      resolve(ok)
    }
    const timer = setTimeout(() => done(false), timeoutMs)
    sock.on('connect', () => sock.write('PING\r\n'))
    sock.on('data', (d) => {
      buf += d.toString('utf8')
      if (buf.includes('\r\n')) done(buf.startsWith('+PONG'))
    })
    sock.on('error', () => done(false))
  })
}

/**
 * A private, throwaway redis-server on loopback (no persistence), for tests
 * that take Redis away from a cluster. Returns { port, url, proc, stop(),
 * start() } — `start()` brings it back on the same port after `stop()`.
 */
export async function startRedis({ port } = {}) {
  port ??= await freePort()
  const dir = makeTempDir('sb-redis-')
  const r = { port, url: `redis://127.0.0.1:${port}`, proc: null, output: '' }
  r.start = async () => {
    if (r.proc && r.proc.exitCode === null && r.proc.signalCode === null) return r // running
    const proc = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--daemonize', 'no'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    )
    r.proc = proc
    proc.stdout.setEncoding('utf8')
    proc.stderr.setEncoding('utf8')
    proc.stdout.on('data', (d) => (r.output += d))
    proc.stderr.on('data', (d) => (r.output += d))
    r.exited = new Promise((resolve) => {
      proc.on('error', (err) => resolve({ error: err }))
      proc.on('exit', (code, signal) => resolve({ code, signal }))
    })
    liveRedis.add(r)
    r.exited.then(() => liveRedis.delete(r))
    const deadline = Date.now() + 10000
    while (!(await redisPing(port))) {
      if (Date.now() > deadline) {
        proc.kill('SIGKILL')
        throw new Error(`redis-server on ${port} did not answer PING within 10 s\n${r.output}`)
      }
      await sleep(50)
    }
    return r
  }
  r.stop = async () => {
    if (!r.proc || r.proc.exitCode !== null || r.proc.signalCode !== null) return
    r.proc.kill('SIGKILL')
    await withTimeout(r.exited, 5000, 'redis-server exit')
  }
  return r.start()
}
