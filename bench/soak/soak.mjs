// Soak and fault run: a mixed chat load on two switchboard nodes sharing one
// Postgres and one Redis, with faults on a fixed timeline, then the checks.
// bench/soak.sh starts Postgres and runs this; read docs/reliability.md for
// what each printed figure means and its target.
//
// Load: PAIRS direct rooms (chat-A-B, one message per pair every
// DM_INTERVAL_MS, the two sides alternating), one busy presence room
// (ROOM_MEMBERS members, ROOM_RATE messages/s in all, CHURNERS of them leaving
// and re-joining it all the time). Clients are the real socket.io-client,
// spread over both nodes; they behave like the documented client
// (docs/protocol.md "Reconnect and catch-up"): after every reconnect they
// re-join with `since` = the newest id they hold and page on while `hasMore`.
//
// Faults, in order: a slow reader (raw WebSocket that joins the busy room,
// asks for history again and again and never reads), `kill -9` of node 1
// (half its clients fail over to node 0, half stay away), node 1 back, then a
// Redis restart (SIGKILL, back empty on the same port).
//
// Everything talks to 127.0.0.1 only; every wait and loop is bounded; the
// processes it starts are killed on exit and listed in $SOAK_PIDFILE so the
// shell wrapper can kill them too if this process dies.

import { spawn } from 'node:child_process'
import { createHmac, randomBytes } from 'node:crypto'
import { appendFileSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { connect as netConnect, createServer as netServer } from 'node:net'
import path from 'node:path'
import Pusher from 'pusher'
import { io } from 'socket.io-client'

// ------------------------------------------------------------------ knobs

const num = (name, def) => {
  const v = process.env[name]
  if (v === undefined || v === '') return def
  const n = Number(v)
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative number, got ${v}`)
  return n
}

const CFG = {
  bin: process.env.SWITCHBOARD_BIN,
  databaseUrl: process.env.SOAK_DATABASE_URL,
  work: process.env.SOAK_WORK,
  out: process.env.SOAK_OUT,
  pidfile: process.env.SOAK_PIDFILE,
  duration: num('DURATION', 300), // s, from the first connect to the end of the load
  warmup: num('WARMUP', 20), // s of steady load before the first memory figure
  pairs: num('PAIRS', 200),
  dmIntervalMs: num('DM_INTERVAL_MS', 2000), // per pair
  roomMembers: num('ROOM_MEMBERS', 30),
  roomRate: num('ROOM_RATE', 8), // msgs/s in the busy room, all senders together
  churners: num('CHURNERS', 8),
  churnMs: num('CHURN_MS', 5000), // mean time between a churner's leave and join
  pollingPct: num('POLLING_PCT', 10), // % of clients on polling-then-upgrade
  nodeTimeoutMs: num('NODE_TIMEOUT_MS', 15000),
  ghostLimitS: num('GHOST_LIMIT_S', 30),
  rssGrowthMaxPct: num('RSS_GROWTH_MAX_PCT', 20),
  slowReaderMaxS: num('SLOW_READER_MAX_S', 60),
  redisDownS: num('REDIS_DOWN_S', 3),
  faults: new Set((process.env.FAULTS ?? 'slow,kill,redis').split(',').map((f) => f.trim()).filter(Boolean)),
}
for (const f of CFG.faults) {
  if (!['slow', 'kill', 'redis'].includes(f)) throw new Error(`FAULTS: unknown fault ${f} (slow, kill, redis)`)
}
for (const k of ['bin', 'databaseUrl', 'work', 'out', 'pidfile']) {
  if (!CFG[k]) throw new Error(`missing ${k}: run this through bench/soak.sh`)
}
const JWT_SECRET = `soak-${randomBytes(16).toString('hex')}`
const APP_ID = '4242'
const APP_KEY = 'soak-key'
const APP_SECRET = `soak-secret-${randomBytes(8).toString('hex')}`
const BUSY = 'presence-soak-busy'
const PREFIX = `soak${randomBytes(4).toString('hex')}`

// ------------------------------------------------------------------ small helpers

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const now = () => Date.now()
let T0 = now()
const ts = () => `${((now() - T0) / 1000).toFixed(1).padStart(6)} s`
const log = (...a) => console.error(`[${ts()}]`, ...a)
const big = (id) => BigInt(id)
const maxId = (a, b) => (a === null ? b : b === null ? a : big(a) >= big(b) ? a : b)

async function waitUntil(fn, timeoutMs, intervalMs = 250) {
  const deadline = now() + timeoutMs
  for (;;) {
    let v
    try {
      v = await fn()
    } catch {}
    if (v) return v
    if (now() >= deadline) return false
    await sleep(intervalMs)
  }
}

function jwt(claims) {
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString('base64url')
  const head = `${enc({ alg: 'HS256', typ: 'JWT' })}.${enc(claims)}`
  return `${head}.${createHmac('sha256', JWT_SECRET).update(head).digest('base64url')}`
}
const tokenOf = (userId) => jwt({ sub: userId, username: `u${userId}`, exp: Math.floor(now() / 1000) + 6 * 3600 })

function verifyJwt(tok) {
  const p = String(tok || '').split('.')
  if (p.length !== 3) return undefined
  const sig = createHmac('sha256', JWT_SECRET).update(`${p[0]}.${p[1]}`).digest('base64url')
  if (sig !== p[2]) return undefined
  try {
    return JSON.parse(Buffer.from(p[1], 'base64url').toString('utf8'))
  } catch {
    return undefined
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = netServer()
    s.on('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

async function httpJson(url, { token, timeoutMs = 5000 } = {}) {
  const res = await fetch(url, {
    headers: token ? { authorization: `Bearer ${token}` } : {},
    signal: AbortSignal.timeout(timeoutMs),
  })
  const text = await res.text()
  let body
  try {
    body = JSON.parse(text)
  } catch {}
  return { status: res.status, body, text }
}

// ------------------------------------------------------------------ processes

const children = new Set()
process.on('exit', () => {
  for (const c of children) {
    try {
      c.kill('SIGKILL')
    } catch {}
  }
})
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130))

function spawnTracked(name, cmd, args, env, logFile) {
  const fd = openSync(logFile, 'a')
  const proc = spawn(cmd, args, { env, stdio: ['ignore', fd, fd] })
  children.add(proc)
  appendFileSync(CFG.pidfile, `${proc.pid} ${name}\n`)
  proc.exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })))
  proc.exited.then(() => children.delete(proc))
  return proc
}

async function redisPing(port) {
  return new Promise((resolve) => {
    const s = netConnect({ host: '127.0.0.1', port })
    const timer = setTimeout(() => done(false), 1000)
    let buf = ''
    function done(ok) {
      clearTimeout(timer)
      s.destroy()
      resolve(ok)
    }
    s.on('connect', () => s.write('PING\r\n'))
    s.on('data', (d) => {
      buf += d
      if (buf.includes('\r\n')) done(buf.startsWith('+PONG'))
    })
    s.on('error', () => done(false))
  })
}

const redis = { port: 0, proc: null }
async function startRedis() {
  redis.proc = spawnTracked(
    'redis-server',
    'redis-server',
    ['--port', String(redis.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', CFG.work],
    process.env,
    path.join(CFG.work, 'redis.log'),
  )
  if (!(await waitUntil(() => redisPing(redis.port), 10000, 100))) throw new Error('redis-server did not start')
}

/** Node i: fixed port, one process at a time (`proc`), RSS samples per process. */
const nodes = []
function nodeEnv(node) {
  const keep = ['PATH', 'HOME', 'LANG', 'TMPDIR']
  const env = Object.fromEntries(keep.filter((k) => process.env[k]).map((k) => [k, process.env[k]]))
  return {
    ...env,
    HOST: '127.0.0.1',
    PORT: String(node.port),
    DATABASE_URL: CFG.databaseUrl,
    JWT_SECRET,
    REDIS_URL: `redis://127.0.0.1:${redis.port}`,
    REDIS_PREFIX: PREFIX,
    NODE_TIMEOUT_MS: String(CFG.nodeTimeoutMs),
    PUSHER_APP_ID: APP_ID,
    PUSHER_KEY: APP_KEY,
    PUSHER_SECRET: APP_SECRET,
    PUSHER_AUTH_ENDPOINT: authApp.url,
    PUSHER_IDENTITY_CHANNEL: '',
    SHUTDOWN_TIMEOUT_SECS: '3',
    RUST_LOG: 'warn',
  }
}

async function startNode(node) {
  node.proc = spawnTracked('switchboard', CFG.bin, [], nodeEnv(node), path.join(CFG.work, `node${node.index}.log`))
  node.generation += 1
  const ready = await waitUntil(async () => (await fetch(`${node.http}/readyz`, { signal: AbortSignal.timeout(1000) })).status === 200, 30000, 100)
  if (!ready) throw new Error(`node ${node.index} not ready within 30 s (see ${CFG.work}/node${node.index}.log)`)
}

function rssKb(pid) {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) : null
  } catch {
    return null
  }
}
const mb = (kb) => (kb === null || kb === undefined ? null : Math.round(kb / 102.4) / 10)

async function metricsOf(node) {
  try {
    const r = await fetch(`${node.http}/metrics`, { signal: AbortSignal.timeout(3000) })
    const text = await r.text()
    const get = (name) => {
      const m = new RegExp(`^switchboard_${name}(?:\\{[^}]*\\})? (\\S+)`, 'm').exec(text)
      return m ? Number(m[1]) : null
    }
    return {
      slowConsumers: get('slow_consumer_disconnects_total'),
      connections: get('connections'),
      deadNodes: get('dead_nodes_total'),
      adapterErrors: get('adapter_errors_total'),
      messagesIn: get('messages_in_total'),
    }
  } catch {
    return null
  }
}

// ------------------------------------------------------------------ the app's auth route

const authApp = { url: '', server: null, requests: 0, refused: 0 }
const pusherSdk = (port) =>
  new Pusher({ appId: APP_ID, key: APP_KEY, secret: APP_SECRET, host: '127.0.0.1', port: String(port), useTLS: false, timeout: 5000 })

async function startAuthApp() {
  const sdk = pusherSdk(1) // only signs here
  authApp.server = createServer((req, res) => {
    let body = ''
    req.on('data', (d) => {
      body += d
      if (body.length > 10000) req.destroy()
    })
    req.on('end', () => {
      authApp.requests += 1
      const form = new URLSearchParams(body)
      const claims = verifyJwt(String(req.headers.authorization || '').replace(/^Bearer /, ''))
      const channel = form.get('channel_name') || ''
      if (!claims || !channel.startsWith('presence-')) {
        authApp.refused += 1
        res.writeHead(403, { 'content-type': 'application/json' }).end('{"error":"forbidden"}')
        return
      }
      const auth = sdk.authorizeChannel(form.get('socket_id'), channel, {
        user_id: String(claims.sub),
        user_info: { username: claims.username },
      })
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(auth))
    })
  })
  await new Promise((r) => authApp.server.listen(0, '127.0.0.1', r))
  authApp.url = `http://127.0.0.1:${authApp.server.address().port}/api/pusher/auth`
}

// ------------------------------------------------------------------ clients

const stats = {
  sent: 0,
  acked: 0,
  skipped: 0, // not sent: socket down or room not joined at that moment
  noAck: 0, // sent, no ack (timeout or disconnect): not counted as acked
  errors: {}, // ack error codes
  joinFailures: {},
  pagesFetched: 0,
}
const acked = new Map() // roomId -> Map(id -> { clientId, userId })
let clientSeq = 0
const clients = []
let stopping = false

class Client {
  constructor({ userId, home, rooms, polling }) {
    this.userId = userId
    this.token = tokenOf(userId)
    this.home = home
    this.node = home
    this.polling = polling
    this.socket = null
    this.connected = false
    this.hold = false // stay away: no reconnect until released
    this.failover = false // may reconnect to the other node
    this.attempts = 0
    this.reconnects = 0
    this.rooms = new Map() // roomId -> state
    for (const r of rooms) this.rooms.set(r, { want: true, state: 'out', floor: null, lastId: null, seen: new Set() })
    this.online = [] // user-online events: { t, roomId, userId, online }
  }

  connect(node = this.node) {
    if (this.socket) {
      this.socket.removeAllListeners()
      this.socket.io.removeAllListeners?.()
      this.socket.close()
    }
    this.node = node
    const s = io(node.http, {
      auth: { token: this.token },
      transports: this.polling ? ['polling', 'websocket'] : ['websocket'],
      reconnection: false,
      forceNew: true,
      timeout: 5000,
    })
    this.socket = s
    s.on('connect', () => {
      this.connected = true
      this.attempts = 0
      for (const [roomId, r] of this.rooms) if (r.want) void this.join(roomId)
    })
    s.on('disconnect', (reason) => {
      this.connected = false
      for (const r of this.rooms.values()) r.state = 'out'
      if (reason !== 'io client disconnect') this.retry()
    })
    s.on('connect_error', () => this.retry())
    s.on('new-message', (m) => {
      const r = this.rooms.get(m?.roomId)
      if (!r || typeof m.id !== 'string') return
      r.seen.add(m.id)
      r.lastId = maxId(r.lastId, m.id)
    })
    s.on('user-online', (e) => this.online.push({ t: now(), ...e }))
  }

  retry() {
    if (stopping || this.hold || this.retryTimer) return
    this.attempts += 1
    if (this.attempts > 600) return // bounded: ~10 minutes of retries
    const delay = Math.min(2000, 200 * this.attempts) + Math.random() * 300
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null
      if (stopping || this.hold) return
      this.reconnects += 1
      // like a load balancer: a failover client alternates between the nodes
      const other = nodes[1 - this.home.index]
      this.connect(this.failover ? (this.attempts % 2 === 0 ? other : this.home) : this.node)
    }, delay)
  }

  /** join-room with `since` = newest id held; pages on over REST while hasMore. */
  async join(roomId) {
    const r = this.rooms.get(roomId)
    if (!r || r.state === 'joining' || !this.connected) return
    r.state = 'joining'
    const s = this.socket
    const since = r.lastId
    r.joins = r.joins ?? []
    r.joins.push({ t: now() - T0, since, node: this.node.index })
    if (r.joins.length > 50) r.joins.shift()
    let ack
    try {
      ack = await s.timeout(10000).emitWithAck('join-room', since ? { roomId, since } : { roomId })
    } catch {
      ack = { ok: false, error: { code: 'timeout' } }
    }
    if (s !== this.socket || !this.connected) return // a newer socket took over
    if (!ack?.ok) {
      const code = ack?.error?.code || 'unknown'
      stats.joinFailures[code] = (stats.joinFailures[code] || 0) + 1
      r.state = 'out'
      if (!stopping) setTimeout(() => r.want && r.state === 'out' && this.join(roomId), 1000 + Math.random() * 1000)
      return
    }
    for (const m of ack.history) {
      r.seen.add(m.id)
      r.lastId = maxId(r.lastId, m.id)
    }
    // the first join: everything after the newest message it was shown must reach it
    if (r.floor === null) r.floor = ack.history.length ? ack.history.at(-1).id : '0'
    if (since && ack.hasMore) await this.pageOn(roomId)
    r.members = ack.members
    r.state = 'in'
  }

  async pageOn(roomId) {
    const r = this.rooms.get(roomId)
    for (let i = 0; i < 200; i++) {
      const res = await httpJson(
        `${this.node.http}/api/rooms/${encodeURIComponent(roomId)}/messages?after=${r.lastId}&limit=500`,
        { token: this.token },
      ).catch(() => null)
      stats.pagesFetched += 1
      if (!res || res.status !== 200) return
      for (const m of res.body.messages) {
        r.seen.add(m.id)
        r.lastId = maxId(r.lastId, m.id)
      }
      if (!res.body.hasMore) return
    }
  }

  async leave(roomId) {
    const r = this.rooms.get(roomId)
    if (!r || r.state !== 'in') return
    r.want = false
    r.state = 'leaving'
    try {
      await this.socket.timeout(10000).emitWithAck('leave-room', { roomId })
    } catch {}
    r.state = 'out'
  }

  async send(roomId, text) {
    const r = this.rooms.get(roomId)
    if (!this.connected || r?.state !== 'in') {
      stats.skipped += 1
      return
    }
    const clientId = `s${++clientSeq}`
    stats.sent += 1
    let ack
    try {
      ack = await this.socket.timeout(10000).emitWithAck('send-message', { roomId, clientId, message: text })
    } catch {
      stats.noAck += 1
      return
    }
    if (!ack?.ok) {
      const code = ack?.error?.code || 'unknown'
      stats.errors[code] = (stats.errors[code] || 0) + 1
      return
    }
    stats.acked += 1
    if (!acked.has(roomId)) acked.set(roomId, new Map())
    acked.get(roomId).set(ack.message.id, { clientId, userId: this.userId, at: now() })
  }

  close() {
    if (this.retryTimer) clearTimeout(this.retryTimer)
    this.retryTimer = null
    if (this.socket) {
      this.socket.removeAllListeners()
      this.socket.close()
    }
    this.connected = false
  }
}

const joinedAll = () => clients.every((c) => c.connected && [...c.rooms.values()].every((r) => !r.want || r.state === 'in'))

// ------------------------------------------------------------------ slow reader (raw WebSocket)

/**
 * A raw Engine.IO v4 / Socket.IO v5 client over a bare TCP socket: connects,
 * joins the busy room, stops reading, then asks for the whole history again
 * and again (each ack up to one 256 KiB page). Resolves with what it saw.
 */
function slowReader(node, userId, { ratePerSec = 15 } = {}) {
  const sock = netConnect({ host: '127.0.0.1', port: node.port })
  const key = randomBytes(16).toString('base64')
  const out = { bytesRead: 0, joinsSent: 0, closedAt: null, connected: false, stop: null }
  let buf = Buffer.alloc(0)
  let upgraded = false
  const frame = (text) => {
    const payload = Buffer.from(text)
    const mask = randomBytes(4)
    let head
    if (payload.length < 126) head = Buffer.from([0x81, 0x80 | payload.length])
    else {
      head = Buffer.alloc(4)
      head[0] = 0x81
      head[1] = 0x80 | 126
      head.writeUInt16BE(payload.length, 2)
    }
    for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i % 4]
    return Buffer.concat([head, mask, payload])
  }
  const send = (text) => {
    if (!sock.destroyed) sock.write(frame(text))
  }
  const ready = new Promise((resolve) => {
    let timer = null
    const texts = []
    sock.on('connect', () => {
      sock.write(
        `GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:${node.port}\r\n` +
          `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      )
    })
    sock.on('data', (d) => {
      out.bytesRead += d.length
      if (out.connected) return // after the join ack nothing is parsed (and soon nothing read)
      buf = Buffer.concat([buf, d])
      if (!upgraded) {
        const end = buf.indexOf('\r\n\r\n')
        if (end < 0) return
        upgraded = true
        buf = buf.subarray(end + 4)
      }
      // unmasked server frames; enough parsing for the handshake
      while (buf.length >= 2) {
        let len = buf[1] & 0x7f
        let off = 2
        if (len === 126) {
          if (buf.length < 4) return
          len = buf.readUInt16BE(2)
          off = 4
        } else if (len === 127) {
          if (buf.length < 10) return
          len = Number(buf.readBigUInt64BE(2))
          off = 10
        }
        if (buf.length < off + len) return
        texts.push(buf.subarray(off, off + len).toString('utf8'))
        buf = buf.subarray(off + len)
      }
      for (const t of texts.splice(0)) {
        if (t.startsWith('0{')) send(`40${JSON.stringify({ token: tokenOf(userId) })}`)
        else if (t.startsWith('40')) send(`420${JSON.stringify(['join-room', { roomId: BUSY }])}`)
        else if (t.startsWith('430')) {
          out.connected = true
          out.connectedAt = now()
          out.joinAck = t.slice(0, 200)
          sock.pause() // from here on it never reads
          resolve(true)
        } else if (t === '2') send('3')
      }
    })
    sock.on('close', () => {
      out.closedAt = now()
      clearInterval(timer)
      resolve(false)
    })
    sock.on('error', () => {})
    // ask again and again for the whole history, never reading the answers
    out.start = () => {
      timer = setInterval(() => {
        out.joinsSent += 1
        send(`42${out.joinsSent}${JSON.stringify(['join-room', { roomId: BUSY, since: '0' }])}`)
      }, 1000 / ratePerSec)
    }
    out.stop = () => clearInterval(timer)
  })
  out.ready = ready
  out.sock = sock
  return out
}

// ------------------------------------------------------------------ presence probes

async function usersListed(node, room) {
  const res = await pusherSdk(node.port).get({ path: `/channels/${room}/users`, params: {} })
  const body = await res.json()
  return body.users.map((u) => String(u.id))
}

async function subscriptionCount(node, room) {
  const res = await pusherSdk(node.port).get({ path: `/channels/${room}`, params: { info: 'subscription_count' } })
  return (await res.json()).subscription_count
}

/** The members a short-lived probe socket sees when joining `room` on `node`. */
async function membersSeen(node, probeId, room) {
  const s = io(node.http, { auth: { token: tokenOf(probeId) }, transports: ['websocket'], reconnection: false, forceNew: true, timeout: 5000 })
  try {
    await new Promise((resolve, reject) => {
      s.on('connect', resolve)
      s.on('connect_error', reject)
      setTimeout(() => reject(new Error('probe connect timeout')), 5000)
    })
    const ack = await s.timeout(5000).emitWithAck('join-room', { roomId: room })
    if (!ack?.ok) throw new Error(`probe join: ${JSON.stringify(ack)}`)
    await s.timeout(5000).emitWithAck('leave-room', { roomId: room })
    return ack.members.map((m) => String(m.userId))
  } finally {
    s.close()
  }
}

// ------------------------------------------------------------------ the run

const report = { knobs: { ...CFG, faults: [...CFG.faults], bin: undefined, databaseUrl: undefined, work: undefined, out: undefined, pidfile: undefined }, phases: [] }
const rssSeries = [] // { t, n0, n1 }
const failures = []
// fault windows, to place missing deliveries in time: from 5 s before the fault
// (events still in flight between the nodes go down with it) to 10 s after it is over
const windows = [] // { name, from, to }
const phase = (name, extra = {}) => {
  log(`== ${name}`)
  report.phases.push({ at_s: Math.round((now() - T0) / 100) / 10, name, ...extra })
}

async function main() {
  mkdirSync(CFG.out, { recursive: true })
  await startAuthApp()
  redis.port = await freePort()
  await startRedis()
  for (let i = 0; i < 2; i++) {
    const port = await freePort()
    nodes.push({ index: i, port, http: `http://127.0.0.1:${port}`, proc: null, generation: 0 })
  }
  // in parallel, as an orchestrator would (migrations take a lock)
  await Promise.all(nodes.map(startNode))
  T0 = now()
  phase('nodes up', { pids: nodes.map((n) => n.proc.pid) })

  // --- clients
  let nextUser = 1000
  const pct = (i) => (i * 37) % 100 < CFG.pollingPct
  const pairs = []
  for (let p = 0; p < CFG.pairs; p++) {
    const a = nextUser++
    const b = nextUser++
    const room = `chat-${a}-${b}`
    // most pairs cross Redis (sides on different nodes), a quarter stay on one node
    const homeA = nodes[p % 2]
    const homeB = p % 4 === 3 ? homeA : nodes[(p + 1) % 2]
    const ca = new Client({ userId: a, home: homeA, rooms: [room], polling: pct(a) })
    const cb = new Client({ userId: b, home: homeB, rooms: [room], polling: pct(b) })
    clients.push(ca, cb)
    pairs.push({ room, sides: [ca, cb], turn: 0 })
  }
  const busy = []
  nextUser = 5000
  for (let i = 0; i < CFG.roomMembers; i++) {
    const c = new Client({ userId: nextUser++, home: nodes[i % 2], rooms: [BUSY], polling: pct(i) })
    c.churner = i < CFG.churners
    clients.push(c)
    busy.push(c)
  }
  for (let i = 0; i < clients.length; i += 25) {
    for (const c of clients.slice(i, i + 25)) c.connect()
    await sleep(150)
  }
  if (!(await waitUntil(joinedAll, 60000))) {
    const out = clients.filter((c) => !c.connected).length
    throw new Error(`clients not all connected and joined within 60 s (${out} not connected)`)
  }
  phase('clients joined', { clients: clients.length, dmRooms: pairs.length, busyMembers: busy.length })

  // --- load
  const timers = []
  const inflight = new Set()
  const track = (p) => {
    inflight.add(p)
    p.finally(() => inflight.delete(p))
  }
  for (const pair of pairs) {
    const start = setTimeout(() => {
      timers.push(
        setInterval(() => {
          const side = pair.sides[pair.turn++ % 2]
          track(side.send(pair.room, `dm ${pair.turn} from ${side.userId}`))
        }, CFG.dmIntervalMs),
      )
    }, Math.random() * CFG.dmIntervalMs)
    timers.push(start)
  }
  if (CFG.roomRate > 0) {
    timers.push(
      setInterval(() => {
        const c = busy[Math.floor(Math.random() * busy.length)]
        // realistic spread of sizes, some long ones: the history pages get heavy
        const len = Math.random() < 0.2 ? 1000 + Math.floor(Math.random() * 3000) : 20 + Math.floor(Math.random() * 300)
        track(c.send(BUSY, `busy ${'x'.repeat(len)}`))
      }, 1000 / CFG.roomRate),
    )
  }
  const churning = new Set()
  let churnOps = 0
  for (const c of busy.filter((x) => x.churner)) {
    const loop = async () => {
      if (stopping || churning.has(c)) return
      churning.add(c)
      try {
        const r = c.rooms.get(BUSY)
        if (r.state === 'in') {
          await c.leave(BUSY)
          churnOps += 1
          await sleep(CFG.churnMs * (0.3 + Math.random() * 0.4))
        }
        r.want = true
        if (!stopping && c.connected) {
          await c.join(BUSY)
          churnOps += 1
        }
      } finally {
        churning.delete(c)
      }
    }
    timers.push(setInterval(loop, CFG.churnMs * (0.8 + Math.random() * 0.4)))
  }
  const sampler = setInterval(() => {
    rssSeries.push({ t: Math.round((now() - T0) / 1000), n0: rssKb(nodes[0].proc.pid), n1: rssKb(nodes[1].proc.pid), g1: nodes[1].generation })
  }, 5000)
  timers.push(sampler)
  const loadStart = now()
  const endAt = T0 + CFG.duration * 1000

  await sleep(CFG.warmup * 1000)
  const memStart = nodes.map((n) => rssKb(n.proc.pid))
  const metricsStart = await Promise.all(nodes.map(metricsOf))
  phase('steady load: memory at start', { rss_mb: memStart.map(mb) })

  let memStartNode1b = memStart[1]
  // --- fault 1: slow reader on node 0
  if (CFG.faults.has('slow')) {
  phase('slow reader joins the busy room on node 0 and stops reading')
  const slowBefore = (await metricsOf(nodes[0]))?.slowConsumers ?? 0
  const slow = slowReader(nodes[0], 9000)
  const slowOk = await Promise.race([slow.ready, sleep(10000).then(() => false)])
  let slowPeak = rssKb(nodes[0].proc.pid)
  let cutAt = null
  let slowCutBySlowConsumer = false
  if (slowOk) {
    const startedAt = now()
    slow.start()
    await waitUntil(async () => {
      slowPeak = Math.max(slowPeak, rssKb(nodes[0].proc.pid) ?? 0)
      const m = await metricsOf(nodes[0])
      if ((m?.slowConsumers ?? 0) > slowBefore) {
        slowCutBySlowConsumer = true
        cutAt = now()
        return true
      }
      if (slow.closedAt) {
        cutAt = slow.closedAt
        return true
      }
      return false
    }, CFG.slowReaderMaxS * 1000, 250)
    slow.stop()
    report.slowReader = {
      joinsSent: slow.joinsSent,
      cutOffAfter_s: cutAt ? Math.round((cutAt - startedAt) / 100) / 10 : null,
      cutAsSlowConsumer: slowCutBySlowConsumer,
    }
  } else {
    report.slowReader = { error: 'the raw client did not get its join ack within 10 s' }
  }
  // read what is left: the server must have closed it
  // still a member after the cut? (it stays one until its transport closes)
  report.slowReader.listedAfterCut = (await usersListed(nodes[0], BUSY).catch(() => [])).includes('9000')
  slow.sock.resume()
  const resumedAt = now()
  const closed = await waitUntil(() => slow.closedAt !== null, 60000, 100)
  if (!closed) slow.sock.destroy()
  report.slowReader.closedByServer = closed
  report.slowReader.closedAfterResume_s = closed ? Math.round((slow.closedAt - resumedAt) / 100) / 10 : null
  report.slowReader.closedAfterConnect_s = closed ? Math.round((slow.closedAt - slow.connectedAt) / 100) / 10 : null
  report.slowReader.listedAfterClose = (await usersListed(nodes[0], BUSY).catch(() => [])).includes('9000')
  report.slowReader.bytesReceived = slow.bytesRead
  report.slowReader.rssPeak_mb = mb(slowPeak)
  await sleep(10000)
  report.slowReader.rss10sAfter_mb = mb(rssKb(nodes[0].proc.pid))
  report.slowReader.rssBefore_mb = mb(memStart[0])
  phase('slow reader done', report.slowReader)
  if (!slowCutBySlowConsumer) failures.push('slow reader: not cut off as a slow consumer')
  }

  // --- fault 2: kill -9 node 1
  if (CFG.faults.has('kill')) {
  const deadNode = nodes[1]
  const onDead = clients.filter((c) => c.node === deadNode)
  const away = new Set()
  onDead.forEach((c, i) => {
    if (i % 2 === 0) {
      c.hold = true
      away.add(String(c.userId))
    } else c.failover = true
  })
  // offline notices are owed for the away users that were in the busy room at the kill
  const busyAway = busy.filter((c) => away.has(String(c.userId)) && c.rooms.get(BUSY).state === 'in').map((c) => String(c.userId))
  const dmWatch = pairs.filter((p) => p.sides.some((c) => c.node === deadNode))
  const listedBefore = (await usersListed(nodes[0], BUSY).catch(() => [])).filter((u) => away.has(u)).length
  report.memStartNode1 = mb(rssKb(deadNode.proc.pid))
  const killAt = now()
  process.kill(deadNode.proc.pid, 'SIGKILL')
  await deadNode.proc.exited
  phase('kill -9 node 1', {
    clientsOnIt: onDead.length,
    stayAway: away.size,
    failover: onDead.length - away.size,
    awayUsersListedBefore: listedBefore,
  })
  // Ghosts: users of the dead node who did not come back, still listed; or
  // direct rooms counting more sockets than are really joined.
  const probeIds = [9100, 9101, 9102, 9103, 9104, 9105, 9106, 9107, 9108, 9109, 9110, 9111, 9112, 9113, 9114, 9115, 9116, 9117, 9118, 9119]
  let probeTurn = 0
  const ghostPolls = []
  const ghostWatchEnd = killAt + (CFG.ghostLimitS + 15) * 1000
  let clearedAt = null
  while (now() < ghostWatchEnd) {
    const pollAt = now()
    const listed = await usersListed(nodes[0], BUSY).catch(() => null)
    const members = await membersSeen(nodes[0], probeIds[probeTurn++ % probeIds.length], BUSY).catch(() => null)
    let dmGhosts = 0
    let dmErrors = 0
    for (const p of dmWatch) {
      const count = await subscriptionCount(nodes[0], p.room).catch(() => null)
      if (count === null) {
        dmErrors += 1
        continue
      }
      // a side counts while joined or joining (the server counts it before the ack)
      const possible = p.sides.filter((c) => c.connected && ['in', 'joining'].includes(c.rooms.get(p.room).state)).length
      dmGhosts += Math.max(0, count - possible)
    }
    const poll = {
      at_s: Math.round((pollAt - killAt) / 100) / 10,
      listedGhosts: listed ? listed.filter((u) => away.has(u)).length : null,
      memberGhosts: members ? members.filter((u) => away.has(u)).length : null,
      dmGhosts,
      dmErrors,
    }
    ghostPolls.push(poll)
    const ghosts = (poll.listedGhosts ?? 1) + (poll.memberGhosts ?? 1) + dmGhosts + dmErrors
    if (ghosts === 0 && clearedAt === null) clearedAt = pollAt
    if (ghosts !== 0) clearedAt = null
    if (clearedAt !== null && pollAt - killAt >= CFG.ghostLimitS * 1000) break
    await sleep(Math.max(0, 2000 - (now() - pollAt)))
  }
  const atLimit = ghostPolls.find((p) => p.at_s >= CFG.ghostLimitS) ?? ghostPolls.at(-1)
  // user-online:false for each away busy-room user, at every busy member on node 0 that stayed
  const watchers = busy.filter((c) => !c.churner && c.home === nodes[0] && c.reconnects === 0)
  let noticesMissing = 0
  let noticesDuplicated = 0
  for (const u of busyAway) {
    for (const w of watchers) {
      const n = w.online.filter((e) => e.t >= killAt && e.t <= killAt + (CFG.ghostLimitS + 5) * 1000 && e.roomId === BUSY && String(e.userId) === u && e.online === false).length
      if (n === 0) noticesMissing += 1
      if (n > 1) noticesDuplicated += 1
    }
  }
  report.ghosts = {
    awayUsers: away.size,
    awayInBusyRoom: busyAway.length,
    awayUsersListedBeforeKill: listedBefore,
    dmRoomsWatched: dmWatch.length,
    clearedAfter_s: clearedAt ? Math.round((clearedAt - killAt) / 100) / 10 : null,
    atLimit,
    offlineNoticesExpected: busyAway.length * watchers.length,
    offlineNoticesMissing: noticesMissing,
    offlineNoticesDuplicated: noticesDuplicated,
    polls: ghostPolls,
  }
  phase('ghost watch done', { clearedAfter_s: report.ghosts.clearedAfter_s, atLimit })
  if (listedBefore === 0) failures.push('ghost check: the away users were not listed before the kill (check broken?)')
  // a poll that could not ask counts as a ghost: the check must not pass by failing to look
  const ghostsAtLimit = atLimit ? (atLimit.listedGhosts ?? 1) + (atLimit.memberGhosts ?? 1) + atLimit.dmGhosts + atLimit.dmErrors : 1
  report.ghosts.totalAtLimit = ghostsAtLimit
  if (ghostsAtLimit > 0 || clearedAt === null) failures.push(`presence ghosts ${ghostsAtLimit} at ${CFG.ghostLimitS} s after the kill`)
  if (noticesMissing > 0) failures.push(`${noticesMissing} user-online:false notices missing after the kill`)

  // --- node 1 back; its clients return to it (as a balancer spreads them again)
  await startNode(deadNode)
  const restartedAt = now()
  phase('node 1 restarted', { pid: deadNode.proc.pid })
  for (const c of onDead) {
    c.hold = false
    c.failover = false
    c.attempts = 0
    if (c.retryTimer) clearTimeout(c.retryTimer)
    c.retryTimer = null
    c.connect(c.home)
  }
  const back1 = await waitUntil(joinedAll, 60000)
  windows.push({ name: 'kill -9', from: killAt - 5000, to: Math.max(now(), restartedAt + 10000) })
  phase('clients back on their nodes', { allJoined: !!back1 })
  await sleep(20000)
  memStartNode1b = rssKb(deadNode.proc.pid)
  phase('node 1 (new process) at steady load: memory', { rss_mb: mb(memStartNode1b) })
  }

  // --- fault 3: Redis restart
  if (CFG.faults.has('redis')) {
  const reconnectsBefore = clients.reduce((a, c) => a + c.reconnects, 0)
  const redisDownAt = now()
  redis.proc.kill('SIGKILL')
  await redis.proc.exited
  phase('redis killed')
  await sleep(CFG.redisDownS * 1000)
  await startRedis()
  const redisBackAt = now()
  phase('redis back (empty)')
  // the nodes find they were forgotten and drop their sockets; the clients come back
  const sawDrop = await waitUntil(() => clients.some((c) => !c.connected), 30000, 100)
  const back2 = await waitUntil(joinedAll, 90000)
  const ready = await Promise.all(nodes.map((n) => fetch(`${n.http}/readyz`).then((r) => r.status).catch(() => 0)))
  report.redisRestart = {
    downFor_s: CFG.redisDownS,
    socketsDropped: !!sawDrop,
    clientReconnects: clients.reduce((a, c) => a + c.reconnects, 0) - reconnectsBefore,
    allBackAfter_s: back2 ? Math.round((now() - redisDownAt) / 100) / 10 : null,
    readyz: ready,
  }
  windows.push({ name: 'redis restart', from: redisDownAt - 5000, to: Math.max(now(), redisBackAt + 10000) })
  phase('after the redis restart', report.redisRestart)
  if (!back2) failures.push('clients not all back within 90 s of the redis restart')
  }

  // --- steady until the end
  // the faults run one after the other; the load goes on to DURATION, and at
  // least 30 s past the last fault so the end figures are of steady load
  const remaining = Math.max(endAt, now() + 30000) - now()
  if (remaining > 0) await sleep(remaining)
  const memEnd = nodes.map((n) => rssKb(n.proc.pid))
  const metricsEnd = await Promise.all(nodes.map(metricsOf))
  report.duration_s = Math.round((now() - T0) / 1000)
  phase('end of load: memory', { rss_mb: memEnd.map(mb) })

  // --- stop the load, let every client rejoin, drain
  for (const t of timers) {
    clearInterval(t)
    clearTimeout(t)
  }
  await waitUntil(() => inflight.size === 0 && churning.size === 0, 15000, 100)
  for (const c of busy) {
    const r = c.rooms.get(BUSY)
    r.want = true
    if (c.connected && r.state === 'out') void c.join(BUSY)
  }
  const finalJoined = await waitUntil(joinedAll, 30000)
  await sleep(5000) // deliveries in flight
  stopping = true
  phase('load stopped', { allJoined: !!finalJoined })

  // --- check 1: every acked message is stored (REST, paging with after=)
  let storeMissing = 0
  let storeMismatch = 0
  let storedTotal = 0
  let pageErrors = 0
  const memberOf = new Map(clients.flatMap((c) => [...c.rooms.keys()].map((r) => [r, c])))
  for (const [roomId, msgs] of acked) {
    const reader = memberOf.get(roomId)
    const stored = new Map()
    let after = '0'
    for (let i = 0; i < 1000; i++) {
      const res = await httpJson(`${nodes[i % 2].http}/api/rooms/${encodeURIComponent(roomId)}/messages?after=${after}&limit=500`, {
        token: reader.token,
      }).catch(() => null)
      if (!res || res.status !== 200) {
        pageErrors += 1
        break
      }
      for (const m of res.body.messages) stored.set(m.id, m)
      if (!res.body.hasMore || res.body.messages.length === 0) break
      after = res.body.messages.at(-1).id
    }
    storedTotal += stored.size
    for (const [id, a] of msgs) {
      const m = stored.get(id)
      if (!m) storeMissing += 1
      else if (m.clientId !== a.clientId || String(m.userId) !== String(a.userId)) storeMismatch += 1
    }
  }
  // --- check 2: every acked message reached every member (live, or by `since` on a rejoin)
  let deliveryMissing = 0
  let deliveryExpected = 0
  const missingByKind = { dm: 0, busy: 0 }
  const missingSamples = []
  const missingByAckSecond = {}
  const missingByWindow = {}
  for (const c of clients) {
    for (const [roomId, r] of c.rooms) {
      if (r.floor === null) continue
      for (const [id] of acked.get(roomId) ?? []) {
        if (big(id) <= big(r.floor)) continue
        deliveryExpected += 1
        if (!r.seen.has(id)) {
          deliveryMissing += 1
          missingByKind[roomId === BUSY ? 'busy' : 'dm'] += 1
          const a = acked.get(roomId).get(id)
          const sec = Math.floor((a.at - T0) / 1000)
          missingByAckSecond[sec] = (missingByAckSecond[sec] || 0) + 1
          const w = windows.find((x) => a.at >= x.from && a.at <= x.to)?.name ?? 'outside the fault windows'
          missingByWindow[w] = (missingByWindow[w] || 0) + 1
          if (missingSamples.length < 10) {
            const sender = clients.find((x) => x.userId === a.userId)
            missingSamples.push({
              user: c.userId,
              node: c.node.index,
              roomId,
              id,
              sender: a.userId,
              senderNode: sender?.node.index,
              ackedAt_ms: a.at - T0,
              rejoinsAround: (r.joins ?? []).filter((j) => Math.abs(j.t - (a.at - T0)) < 20000),
            })
          }
        }
      }
    }
  }
  report.messages = {
    sent: stats.sent,
    acked: stats.acked,
    ackErrors: stats.errors,
    noAck: stats.noAck,
    skippedWhileDown: stats.skipped,
    storedInCheckedRooms: storedTotal,
    ackedButMissing: storeMissing,
    ackedButDifferent: storeMismatch,
    pageErrors,
    deliveriesExpected: deliveryExpected,
    deliveriesMissing: deliveryMissing,
    deliveriesMissingByRoomKind: missingByKind,
    missingSamples,
    missingByAckSecond,
    missingByWindow,
    joinFailures: stats.joinFailures,
    restPagesOnRejoin: stats.pagesFetched,
    churnOps,
  }
  if (storeMissing + storeMismatch + pageErrors > 0) failures.push(`${storeMissing} acked messages missing from the store (${storeMismatch} different, ${pageErrors} page errors)`)
  if (deliveryMissing > 0) failures.push(`${deliveryMissing} deliveries missing (acked, never seen by a member, live or on rejoin)`)

  // --- memory
  const growth = (a, b) => (a ? Math.round(((b - a) / a) * 1000) / 10 : null)
  report.memory = {
    node0: { start_mb: mb(memStart[0]), end_mb: mb(memEnd[0]), growth_pct: growth(memStart[0], memEnd[0]), peak_mb: mb(Math.max(...rssSeries.map((s) => s.n0 ?? 0))) },
    node1_first: { start_mb: mb(memStart[1]), at_kill_mb: report.memStartNode1 },
    node1_restarted: { start_mb: mb(memStartNode1b), end_mb: mb(memEnd[1]), growth_pct: growth(memStartNode1b, memEnd[1]) },
    loadSteadyFrom_s: Math.round((loadStart - T0) / 1000) + CFG.warmup,
    series: rssSeries,
  }
  for (const [name, g] of [['node 0', report.memory.node0.growth_pct], ['node 1 (restarted)', report.memory.node1_restarted.growth_pct]]) {
    if (g === null || g > CFG.rssGrowthMaxPct) failures.push(`${name} RSS grew ${g}% (limit ${CFG.rssGrowthMaxPct}%)`)
  }
  report.metrics = {
    start: metricsStart,
    end: metricsEnd,
    slowConsumerDisconnects: metricsEnd.map((m) => m?.slowConsumers ?? null),
  }
  report.authRequests = authApp.requests
  report.failures = failures

  for (const c of clients) c.close()
  await Promise.all(
    nodes.map(async (n) => {
      n.proc.kill('SIGTERM')
      await Promise.race([n.proc.exited, sleep(10000)])
    }),
  )
  redis.proc.kill('SIGTERM')
  authApp.server.close()
  writeFileSync(path.join(CFG.out, 'soak.json'), JSON.stringify(report, null, 2))
  printSummary()
  return failures.length === 0 ? 0 : 1
}

function printSummary() {
  const r = report
  const rows = []
  const row = (what, value, target, ok) => rows.push(`| ${what} | ${value} | ${target} | ${ok ? 'ok' : 'FAIL'} |`)
  const m = r.messages
  row('messages acked', `${m.acked} (of ${m.sent} sent; ${m.noAck} without ack, ${m.skippedWhileDown} skipped while down)`, '', true)
  row('acked but missing from the store', `${m.ackedButMissing} (+${m.ackedButDifferent} different, ${m.pageErrors} page errors)`, '0', m.ackedButMissing + m.ackedButDifferent + m.pageErrors === 0)
  const where = Object.entries(m.missingByWindow).map(([w, n]) => `${n} ${w}`).join(', ')
  row('deliveries missing (live or on rejoin with since)', `${m.deliveriesMissing} of ${m.deliveriesExpected}${where ? ` (acked during: ${where})` : ''}`, '0', m.deliveriesMissing === 0)
  const g = r.ghosts
  if (g) {
    const at = g.atLimit ? `${g.atLimit.listedGhosts} listed, ${g.atLimit.memberGhosts} in members, ${g.atLimit.dmGhosts} dm sockets` : 'n/a'
    row(`presence ghosts ${r.knobs.ghostLimitS} s after kill -9`, at, '0', g.totalAtLimit === 0)
    row('ghosts cleared after', g.clearedAfter_s === null ? 'not cleared' : `${g.clearedAfter_s} s`, `<= ${r.knobs.ghostLimitS} s`, g.clearedAfter_s !== null && g.clearedAfter_s <= r.knobs.ghostLimitS)
    row('user-online:false notices missing', `${g.offlineNoticesMissing} of ${g.offlineNoticesExpected} (${g.offlineNoticesDuplicated} duplicated)`, '0', g.offlineNoticesMissing === 0)
  }
  const n0 = r.memory.node0
  row('node 0 RSS start -> end', `${n0.start_mb} -> ${n0.end_mb} MB (${n0.growth_pct}%, peak ${n0.peak_mb})`, `<= +${r.knobs.rssGrowthMaxPct}%`, n0.growth_pct !== null && n0.growth_pct <= r.knobs.rssGrowthMaxPct)
  const n1 = r.memory.node1_restarted
  row(g ? 'node 1 RSS start -> end (after its restart)' : 'node 1 RSS start -> end', `${n1.start_mb} -> ${n1.end_mb} MB (${n1.growth_pct}%)`, `<= +${r.knobs.rssGrowthMaxPct}%`, n1.growth_pct !== null && n1.growth_pct <= r.knobs.rssGrowthMaxPct)
  const sr = r.slowReader
  if (sr) {
    row('slow reader cut off as a slow consumer', sr.cutAsSlowConsumer ? `after ${sr.cutOffAfter_s} s, ${sr.joinsSent} history requests` : 'no', 'yes', !!sr.cutAsSlowConsumer)
    row('node 0 RSS around the slow reader', `${sr.rssBefore_mb} -> peak ${sr.rssPeak_mb} -> ${sr.rss10sAfter_mb} MB 10 s after it closed`, 'bounded', true)
    row('slow reader connection closed by the server', sr.closedByServer ? `${sr.closedAfterConnect_s} s after it connected` : 'not within 60 s of reading again', '', true)
    row('slow_consumer_disconnects_total (node 0, node 1)', r.metrics.slowConsumerDisconnects.join(', '), '>= 1 on node 0', (r.metrics.slowConsumerDisconnects[0] ?? 0) >= 1)
  }
  const rr = r.redisRestart
  if (rr) row('redis restart: all clients back after', rr.allBackAfter_s === null ? 'not all back' : `${rr.allBackAfter_s} s (${rr.clientReconnects} reconnects)`, '', rr.allBackAfter_s !== null)
  const k = r.knobs
  const lines = [
    `soak: ${r.duration_s} s, ${k.pairs} DM pairs (1 msg / ${k.dmIntervalMs} ms each), busy room of ${k.roomMembers} (${k.roomRate} msg/s, ${k.churners} churning), faults: ${[...k.faults].join(', ') || 'none'}; 2 nodes, Postgres, Redis`,
    '',
    '| figure | value | target | |',
    '|---|---|---|---|',
    ...rows,
    '',
    failures.length ? `FAILED: ${failures.join('; ')}` : 'all targets met',
  ]
  console.log(lines.join('\n'))
  writeFileSync(path.join(CFG.out, 'summary.md'), `${lines.join('\n')}\n`)
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`soak aborted: ${err.stack || err}`)
    try {
      writeFileSync(path.join(CFG.out, 'soak-partial.json'), JSON.stringify(report, null, 2))
    } catch {}
    process.exit(2)
  },
)
