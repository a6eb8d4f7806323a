// CONTRACT §8 "Recovery": socket.io-client's own connection state recovery,
// backed by the database. The CONNECT answer carries a `pid`; `new-message`
// carries its id as a last argument (the offset); a client that reconnects
// with `{ pid, offset }` gets `socket.recovered === true`, its rooms back
// without `join-room`, and every missed message once, in order: after a short
// drop, after a kill -9 and restart, and through another node.
import assert from 'node:assert/strict'
import { createServer, connect as netConnect } from 'node:net'
import { after, afterEach, describe, test } from 'node:test'
import { io } from 'socket.io-client'
import {
  CLUSTER_UNAVAILABLE,
  closeSockets,
  connectAs,
  emitAck,
  expectNone,
  freePort,
  ids,
  join,
  send,
  startCluster,
  startServer,
  stopServers,
  uniqueRoom,
  userToken,
  waitFor,
  withTimeout,
} from './helpers.mjs'

afterEach(closeSockets)
after(stopServers)

const ENV = { RATE_LIMIT_PER_SEC: 100000, RATE_LIMIT_BURST: 100000 }

const TRANSPORTS = [
  { name: 'websocket', transports: ['websocket'] },
  { name: 'polling', transports: ['polling'] },
]

/** Sockets made here with `open()`, closed after each test. */
const mine = new Set()
afterEach(() => {
  for (const s of mine) s.close()
  mine.clear()
})

/**
 * A socket that reconnects by itself, `delayMs` after a drop (no jitter), and
 * records every `new-message` with all its arguments. Not connected until
 * `ready` (so a test may set client fields first).
 */
function open(url, uid, { delayMs = 1000, transports, autoConnect = true } = {}) {
  const s = io(url, {
    forceNew: true,
    reconnectionDelay: delayMs,
    reconnectionDelayMax: delayMs,
    randomizationFactor: 0,
    timeout: 3000,
    auth: { token: userToken(uid) },
    autoConnect,
    ...(transports ? { transports } : {}),
  })
  mine.add(s)
  s.messages = []
  s.on('new-message', (...args) => s.messages.push(args))
  s.connectedOnce = () => withTimeout(new Promise((r) => s.once('connect', r)), 10000, 'connect')
  return s
}

/** Resolves at the socket's next `connect` (a reconnection, once dropped). */
const nextConnect = (s, ms = 15000) => withTimeout(new Promise((r) => s.once('connect', r)), ms, 'reconnect')
const nextDisconnect = (s) => withTimeout(new Promise((r) => s.once('disconnect', r)), 5000, 'disconnect')

/** Waits until the socket has recorded `n` new-messages in all. */
const until = (s, n, ms = 3000) =>
  withTimeout(
    (async () => {
      while (s.messages.length < n) await new Promise((r) => setTimeout(r, 20))
    })(),
    ms,
    `${n} new-messages (got ${s.messages.length})`,
  )

/** The messages a socket got from index `from` on: [id, text, offset argument, argument count]. */
const got = (s, from = 0) => s.messages.slice(from).map((a) => [a[0].id, a[0].message, a[1], a.length])
const expected = (msgs) => msgs.map((m) => [m.id, m.message, m.id, 2])

describe('the wire: pid on CONNECT, offset on new-message only', () => {
  test('every new-message carries its id last; other events carry no offset', async () => {
    const srv = await startServer({ env: ENV })
    const [a, b] = ids(2)
    const room = uniqueRoom('wire')
    const s = open(srv.url, a)
    await s.connectedOnce()
    assert.match(s._pid, /^[0-9a-f]{32}$/, 'the CONNECT answer carries a pid')
    assert.equal(s.recovered, false)
    await join(s, room)
    const other = await connectAs(srv.url, b)
    const online = waitFor(s, 'user-online', (e) => e.userId === b)
    await join(other, room)
    await online
    const m = await send(other, room, 'hello')
    await until(s, 1, 2000)
    assert.deepEqual(got(s), expected([m]))
    assert.equal(s._lastOffset, m.id, 'socket.io-client keeps it as its offset')
    const typing = new Promise((r) => s.once('typing', (...args) => r(args)))
    await emitAck(other, 'typing', { roomId: room, isTyping: true })
    assert.equal((await withTimeout(typing, 2000, 'typing')).length, 1)
    const pids = new Set([s._pid])
    for (let i = 0; i < 3; i++) {
      const t = open(srv.url, a)
      await t.connectedOnce()
      pids.add(t._pid)
    }
    assert.equal(pids.size, 4, 'a pid per connection')
  })
})

describe('a short drop', () => {
  for (const { name, transports } of TRANSPORTS) {
    test(`[${name}] recovered: rooms back without join-room, each missed message once, in order`, async () => {
      const srv = await startServer({ env: ENV })
      const [a, b] = ids(2)
      const [r1, r2] = [uniqueRoom('drop'), uniqueRoom('drop')]
      const s = open(srv.url, a, { transports })
      await s.connectedOnce()
      await join(s, r1)
      await join(s, r2)
      const other = await connectAs(srv.url, b)
      await join(other, r1)
      await join(other, r2)
      const seen = await send(other, r1, 'before the drop')
      await until(s, 1, 2000)
      const pid = s._pid

      const offline = waitFor(other, 'user-online', (e) => e.userId === a && e.online === false, 3000)
      const down = nextDisconnect(s)
      s.io.engine.close()
      await down
      await offline
      const from = s.messages.length
      const missed = []
      for (let i = 0; i < 6; i++) missed.push(await send(other, i % 2 ? r2 : r1, `missed ${i}`))

      const online = waitFor(other, 'user-online', (e) => e.userId === a && e.online === true, 5000)
      await nextConnect(s)
      assert.equal(s.recovered, true, 'socket.recovered')
      assert.equal(s._pid, pid, 'the same pid')
      await online
      await until(s, from + missed.length)
      await expectNone(s, 'new-message', 500)
      assert.deepEqual(got(s, from), expected(missed))

      // Back in both rooms without join-room: live messages arrive, sends are allowed.
      const live = await send(other, r2, 'live after recovery')
      await until(s, from + missed.length + 1, 2000)
      assert.deepEqual(got(s, from + missed.length), expected([live]))
      const ack = await emitAck(s, 'send-message', { roomId: r1, message: 'from the recovered socket' })
      assert.equal(ack.ok, true, JSON.stringify(ack))
      // and `since` keeps working beside it
      const hist = await emitAck(s, 'join-room', { roomId: r1, since: seen.id })
      assert.equal(hist.ok, true)
      assert.deepEqual(
        hist.history.map((m) => m.message),
        ['missed 0', 'missed 2', 'missed 4', 'from the recovered socket'],
      )
    })
  }

  test('a room left on purpose is not restored', async () => {
    const srv = await startServer({ env: ENV })
    const [a, b] = ids(2)
    const [kept, left] = [uniqueRoom('kept'), uniqueRoom('left')]
    const s = open(srv.url, a, { transports: ['websocket'] })
    await s.connectedOnce()
    await join(s, kept)
    await join(s, left)
    assert.equal((await emitAck(s, 'leave-room', { roomId: left })).ok, true)
    const other = await connectAs(srv.url, b)
    await join(other, kept)
    await join(other, left)
    const down = nextDisconnect(s)
    s.io.engine.close()
    await down
    const missed = await send(other, kept, 'in the kept room')
    await send(other, left, 'in the room it left')
    await nextConnect(s)
    assert.equal(s.recovered, true)
    await until(s, 1)
    await expectNone(s, 'new-message', 400)
    assert.deepEqual(got(s), expected([missed]))
    const ack = await emitAck(s, 'send-message', { roomId: left, message: 'x' })
    assert.equal(ack.ok, false)
    assert.equal(ack.error.code, 'not_joined')
  })

  test('more than 500 missed in a room: a fresh session, nothing restored', async () => {
    const srv = await startServer({ env: ENV })
    const [a, b] = ids(2)
    const room = uniqueRoom('flood')
    const s = open(srv.url, a, { transports: ['websocket'], delayMs: 2000 })
    await s.connectedOnce()
    await join(s, room)
    const other = await connectAs(srv.url, b)
    await join(other, room)
    const pid = s._pid
    const down = nextDisconnect(s)
    s.io.engine.close()
    await down
    await Promise.all(Array.from({ length: 501 }, (_, i) => send(other, room, `flood ${i}`)))
    await nextConnect(s)
    assert.equal(s.recovered, false)
    assert.notEqual(s._pid, pid)
    await expectNone(s, 'new-message', 400)
    assert.equal(s.messages.length, 0)
    const ack = await emitAck(s, 'send-message', { roomId: room, message: 'x' })
    assert.equal(ack.error?.code, 'not_joined', 'no room restored')
  })
})

describe('a session is its own user’s', () => {
  test("another user's pid is not recovered: new pid, no rooms, no replay", async () => {
    const srv = await startServer({ env: ENV })
    const [a, b, c] = ids(3)
    const room = uniqueRoom('foreign')
    const s = open(srv.url, a, { transports: ['websocket'] })
    await s.connectedOnce()
    await join(s, room)
    const other = await connectAs(srv.url, b)
    await join(other, room)
    await send(other, room, 'seen by a')
    await until(s, 1, 2000)
    s.close()
    await send(other, room, 'missed by a')

    // The real client sends whatever pid/offset it holds: give c the stolen ones.
    const thief = open(srv.url, c, { transports: ['websocket'], autoConnect: false })
    thief._pid = s._pid
    thief._lastOffset = s._lastOffset
    const connected = thief.connectedOnce()
    thief.connect()
    await connected
    assert.equal(thief.recovered, false)
    assert.notEqual(thief._pid, s._pid)
    await expectNone(thief, 'new-message', 400)
    const ack = await emitAck(thief, 'send-message', { roomId: room, message: 'x' })
    assert.equal(ack.error?.code, 'not_joined')

    // An unknown pid, or one that is not one of ours: the same.
    for (const pid of ['0'.repeat(32), 'not-a-pid']) {
      const t = open(srv.url, a, { transports: ['websocket'], autoConnect: false })
      t._pid = pid
      t._lastOffset = '1'
      const ready = t.connectedOnce()
      t.connect()
      await ready
      assert.equal(t.recovered, false, pid)
      assert.notEqual(t._pid, pid)
    }
  })
})

describe('recovery outlives the server process', () => {
  test('kill -9 and a restart on the same database (SQLite file kept): recovered, missed messages once', async () => {
    const port = await freePort()
    const srv = await startServer({ env: ENV, port, single: true })
    const [a, b] = ids(2)
    const room = uniqueRoom('restart')
    const s = open(srv.url, a, { transports: ['websocket'], delayMs: 2500 })
    await s.connectedOnce()
    await join(s, room)
    const pid = s._pid
    const before = await connectAs(srv.url, b)
    await join(before, room)
    await send(before, room, 'before the crash')
    await until(s, 1, 2000)
    const down = nextDisconnect(s)
    await srv.kill9()
    await down
    const again = await startServer({ env: ENV, port, dbUrl: srv.dbUrl, single: true })
    const other = await connectAs(again.url, b)
    await join(other, room)
    const missed = []
    for (let i = 0; i < 3; i++) missed.push(await send(other, room, `while a was away ${i}`))
    await nextConnect(s)
    assert.equal(s.recovered, true)
    assert.equal(s._pid, pid)
    await until(s, 1 + missed.length)
    await expectNone(s, 'new-message', 400)
    assert.deepEqual(got(s, 1), expected(missed))
    const ack = await emitAck(s, 'send-message', { roomId: room, message: 'back' })
    assert.equal(ack.ok, true, JSON.stringify(ack))
  })
})

/**
 * A TCP forwarder standing in for a load balancer: `target` can be switched,
 * and `cut()` drops every forwarded connection.
 */
async function balancer(target) {
  const conns = new Set()
  const lb = { target }
  const server = createServer((client) => {
    const upstream = netConnect(lb.target, '127.0.0.1')
    conns.add(client)
    conns.add(upstream)
    client.pipe(upstream).pipe(client)
    const end = () => {
      client.destroy()
      upstream.destroy()
      conns.delete(client)
      conns.delete(upstream)
    }
    client.on('error', end).on('close', end)
    upstream.on('error', end).on('close', end)
  })
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  lb.url = `http://127.0.0.1:${server.address().port}`
  lb.cut = () => {
    for (const c of conns) c.destroy()
  }
  lb.close = () => {
    lb.cut()
    server.close()
  }
  return lb
}

describe('through another node', { skip: CLUSTER_UNAVAILABLE ? `cluster ${CLUSTER_UNAVAILABLE}` : false }, () => {
  test('a client whose node goes away resumes on the other one', async () => {
    const cluster = await startCluster({ nodes: 2, env: ENV })
    const [n0, n1] = cluster.nodes
    const lb = await balancer(n0.port)
    try {
      const [a, b] = ids(2)
      const room = uniqueRoom('failover')
      const s = open(lb.url, a, { transports: ['websocket'], delayMs: 1500 })
      await s.connectedOnce()
      await join(s, room)
      const pid = s._pid
      const other = await connectAs(n1.url, b, { transports: ['websocket'] })
      await join(other, room)
      await send(other, room, 'seen on node 0')
      await until(s, 1, 3000)
      const down = nextDisconnect(s)
      lb.target = n1.port
      lb.cut()
      await down
      const missed = []
      for (let i = 0; i < 3; i++) missed.push(await send(other, room, `missed ${i}`))
      await nextConnect(s)
      assert.equal(s.recovered, true)
      assert.equal(s._pid, pid)
      await until(s, 1 + missed.length)
      await expectNone(s, 'new-message', 600)
      assert.deepEqual(got(s, 1), expected(missed))
      const live = await send(other, room, 'live on node 1')
      await until(s, 1 + missed.length + 1, 3000)
      assert.deepEqual(got(s, 1 + missed.length), expected([live]))
    } finally {
      lb.close()
    }
  })
})
