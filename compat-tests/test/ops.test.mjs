// CONTRACT §1 (running it) and §7 "Running".
import assert from 'node:assert/strict'
import { existsSync, statSync } from 'node:fs'
import path from 'node:path'
import { after, afterEach, before, describe, test } from 'node:test'
import {
  closeSockets,
  connect,
  connectAs,
  connectError,
  dmRoom,
  emitAck,
  http,
  ids,
  join,
  makeTempDir,
  send,
  spawnServer,
  startServer,
  stopServers,
  uniqueRoom,
  userToken,
  waitFor,
  withTimeout,
} from './helpers.mjs'

afterEach(closeSockets)
after(stopServers)

/** Raw Engine.IO polling handshake, optionally with an Origin header. */
async function pollingHandshake(url, origin) {
  const headers = origin ? { origin } : {}
  return http(`${url}/socket.io/?EIO=4&transport=polling`, { headers })
}

describe('health, readiness and metrics', () => {
  let srv
  before(async () => {
    srv = await startServer()
  })

  test('GET /healthz -> 200', async () => {
    const r = await http(`${srv.url}/healthz`)
    assert.equal(r.status, 200)
    assert.equal(r.text.trim(), 'ok')
  })

  test('GET /readyz -> 200 while the database answers', async () => {
    const r = await http(`${srv.url}/readyz`)
    assert.equal(r.status, 200)
  })

  test('GET /metrics -> Prometheus text with the documented series', async () => {
    // Counters are per process: in cluster mode the traffic and the scrape are
    // pinned to one node (srv.nodes[0]) so the values read are the ones made.
    const one = srv.nodes?.[0] ?? srv
    // produce some traffic first so labelled series exist
    const [a] = ids(1)
    const room = uniqueRoom('metrics')
    const s = await connectAs(one.url, a)
    await join(s, room)
    await send(s, room, 'metrics please')
    const bad = await emitAck(s, 'send-message', { roomId: uniqueRoom('nj'), message: 'x' })
    assert.equal(bad.error?.code, 'not_joined')

    const r = await http(`${one.url}/metrics`)
    assert.equal(r.status, 200)
    assert.match(r.headers.get('content-type') ?? '', /^text\/plain|openmetrics/)
    const text = r.text
    for (const name of [
      'switchboard_connections',
      'switchboard_rooms',
      'switchboard_messages_in_total',
      'switchboard_messages_out_total',
      'switchboard_errors_total',
      'switchboard_store_seconds',
      'switchboard_slow_consumer_disconnects_total',
    ]) {
      assert.match(text, new RegExp(`^${name}`, 'm'), `metrics lack ${name}\n${text}`)
    }
    const value = (re) => {
      const m = text.match(re)
      return m ? Number(m[1]) : NaN
    }
    assert.ok(value(/^switchboard_connections(?:\{[^}]*\})? (\S+)/m) >= 1, 'connections gauge >= 1')
    assert.ok(value(/^switchboard_rooms(?:\{[^}]*\})? (\S+)/m) >= 1, 'rooms gauge >= 1')
    assert.ok(value(/^switchboard_messages_in_total(?:\{[^}]*\})? (\S+)/m) >= 1, 'messages_in >= 1')
    assert.ok(value(/^switchboard_messages_out_total(?:\{[^}]*\})? (\S+)/m) >= 1, 'messages_out >= 1')
    assert.match(text, /^switchboard_errors_total\{[^}]*code="not_joined"[^}]*\} [1-9]/m)
    assert.match(text, /^switchboard_store_seconds_(bucket|count)\{[^}]*op="/m)
  })
  test('with PUSHER_* unset every /apps/… route answers 404', async () => {
    for (const [method, path] of [
      ['POST', '/apps/123/events'],
      ['POST', '/apps/123/batch_events'],
      ['GET', '/apps/123/channels'],
      ['GET', '/apps/123/channels/private-x'],
      ['GET', '/apps/123/channels/presence-x/users'],
      ['POST', '/apps/123/users/5/terminate_connections'],
      ['PUT', '/apps/123/groups/1/members/5'],
    ]) {
      const r = await http(`${srv.url}${path}`, { method, body: method === 'GET' ? undefined : { name: 'x', channels: ['a'], data: '{}' } })
      assert.equal(r.status, 404, `${method} ${path} -> ${r.status} ${r.text.slice(0, 200)}`)
    }
  })
})

describe('startup configuration', () => {
  test('refuses to start without JWT_SECRET: non-zero exit at once, with a reason', async () => {
    const h = await spawnServer({ env: { JWT_SECRET: undefined, JWT_PUBLIC_KEY: undefined } })
    const info = await withTimeout(h.exited, 10000, 'exit without JWT_SECRET').catch((e) => {
      h.proc.kill('SIGKILL')
      throw new Error(`${e.message}\n${h.output()}`)
    })
    assert.notEqual(info.code, 0, h.output())
    assert.notEqual(info.code, null, `killed by signal? ${JSON.stringify(info)}\n${h.output()}`)
    assert.match(h.stdout() + h.stderr(), /JWT_SECRET/, 'the message names JWT_SECRET')
  })

  test('--dev starts with nothing configured and prints a token that connects', async () => {
    const cwd = makeTempDir('sb-dev-')
    // single: dev mode is an embedded SQLite file, which is single-node only (and
    // the test reads this one process's stdout).
    const srv = await startServer({
      single: true,
      args: ['--dev'],
      cwd,
      env: { JWT_SECRET: undefined, DATABASE_URL: undefined },
    })
    const m = srv.stdout().match(/dev token:\s*(eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+)/)
    assert.ok(m, `no "dev token: eyJ..." line on stdout\n${srv.output()}`)
    assert.match(srv.stdout(), /secret/i, 'the generated dev secret is printed')
    const s = await connect(srv.url, { token: m[1] })
    const session = await s.session
    assert.equal(session.userId, 1)
    // dev mode allows any Origin (ALLOWED_ORIGINS defaults to * there)
    const r = await pollingHandshake(srv.url, 'http://localhost:3000')
    assert.equal(r.status, 200, r.text)
    s.close()
    const info = await srv.stop()
    assert.equal(info.code, 0)
  })

  test('a sqlite:// database file and its folder are created when missing', async () => {
    const dir = makeTempDir('sb-db-')
    const file = path.join(dir, 'nested', 'deeper', 'chat.sqlite')
    assert.equal(existsSync(path.dirname(file)), false)
    // single: a SQLite database is single-node only
    const srv = await startServer({ single: true, dbUrl: `sqlite://${file}` })
    assert.ok(existsSync(file), `database file ${file} not created`)
    assert.ok(statSync(file).isFile())
    const r = await http(`${srv.url}/readyz`)
    assert.equal(r.status, 200)
    await srv.stop()
  })
})

// In cluster mode these stop (and restart) the whole cluster: every node gets
// SIGTERM, each client sees its own node go, and the restart is a new cluster
// on the same Postgres database.
describe('graceful shutdown', () => {
  test('SIGTERM: clients on both transports see a server disconnect, exit 0 well within 15 s', async () => {
    const srv = await startServer()
    const [a, b] = ids(2)
    const ws = await connectAs(srv.url, a, { transports: ['websocket'] })
    const poll = await connectAs(srv.url, b, { transports: ['polling'] })
    const room = dmRoom(a, b)
    await join(ws, room)
    await join(poll, room)
    const d1 = waitFor(ws, 'disconnect', () => true, 10000)
    const d2 = waitFor(poll, 'disconnect', () => true, 10000)
    const t0 = Date.now()
    const info = await srv.stop(16000)
    const elapsed = Date.now() - t0
    assert.equal(info.code, 0, `exit ${JSON.stringify(info)}\n${srv.output()}`)
    assert.ok(elapsed < 15000, `exit took ${elapsed} ms`)
    const reasons = await Promise.all([d1, d2])
    // The transport closes without a Socket.IO goodbye, so clients reconnect by
    // themselves (to the restarted server or another node): docs/protocol.md §1.
    for (const reason of reasons) {
      assert.ok(['transport close', 'transport error'].includes(reason), `disconnect reason ${reason}`)
    }
    assert.equal(ws.active, true, 'websocket client keeps reconnecting')
    assert.equal(poll.active, true, 'polling client keeps reconnecting')
  })

  test('SIGTERM with sends in flight: every acked message survives a restart', async () => {
    const srv = await startServer()
    const [a] = ids(1)
    const room = uniqueRoom('inflight')
    const s = await connectAs(srv.url, a, { transports: ['websocket'] })
    await join(s, room)
    const acks = []
    const pending = []
    for (let i = 0; i < 30; i++) {
      pending.push(
        emitAck(s, 'send-message', { roomId: room, clientId: `f${i}`, message: `in flight ${i}` }, 5000)
          .then((ack) => acks.push(ack))
          .catch(() => {}),
      )
    }
    const info = await srv.stop()
    await Promise.all(pending)
    assert.equal(info.code, 0)
    const stored = acks.filter((a) => a?.ok).map((a) => a.message.id)
    const again = await startServer({ dbUrl: srv.dbUrl })
    const s2 = await connectAs(again.url, a)
    const ack = await emitAck(s2, 'join-room', { roomId: room })
    assert.equal(ack.ok, true)
    const have = new Set(ack.history.map((m) => m.id))
    for (const id of stored) assert.ok(have.has(id), `acked message ${id} lost after SIGTERM`)
    await again.stop()
  })
})

describe('Origin allow-list', () => {
  let srv
  before(async () => {
    srv = await startServer({ env: { ALLOWED_ORIGINS: 'http://good.example,https://also-good.example:8443' } })
  })

  test('raw polling handshake: disallowed Origin 403, allowed 200, none 200', async () => {
    const bad = await pollingHandshake(srv.url, 'http://evil.example')
    assert.equal(bad.status, 403, bad.text)
    const good = await pollingHandshake(srv.url, 'http://good.example')
    assert.equal(good.status, 200, good.text)
    const good2 = await pollingHandshake(srv.url, 'https://also-good.example:8443')
    assert.equal(good2.status, 200, good2.text)
    const none = await pollingHandshake(srv.url)
    assert.equal(none.status, 200, none.text)
  })

  for (const transports of [['websocket'], ['polling']]) {
    test(`${transports[0]}: disallowed Origin refused, allowed and absent Origin accepted`, async () => {
      const [a] = ids(1)
      await connectError(srv.url, {
        token: userToken(a),
        transports,
        extraHeaders: { Origin: 'http://evil.example' },
        timeoutMs: 3000,
      })
      const ok = await connectAs(srv.url, a, { transports, extraHeaders: { Origin: 'http://good.example' } })
      assert.equal(ok.connected, true)
      const none = await connectAs(srv.url, a, { transports })
      assert.equal(none.connected, true)
    })
  }

  test('without ALLOWED_ORIGINS (not dev mode) a browser Origin is refused', async () => {
    const plain = await startServer()
    const bad = await pollingHandshake(plain.url, 'http://localhost:3000')
    assert.equal(bad.status, 403, bad.text)
    const none = await pollingHandshake(plain.url)
    assert.equal(none.status, 200, none.text)
    await plain.stop()
  })
})
