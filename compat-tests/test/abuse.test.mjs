// CONTRACT §4 "Bad input never closes the connection and never loses stored data",
// rate limiting (design: RATE_LIMIT_PER_SEC / RATE_LIMIT_BURST, per user).
import assert from 'node:assert/strict'
import { after, afterEach, before, describe, test } from 'node:test'
import {
  ERROR_CODES,
  TRANSPORTS,
  closeSockets,
  connectAs,
  emitAck,
  emitAckArgs,
  http,
  ids,
  join,
  send,
  sleep,
  startServer,
  stopServers,
  uniqueRoom,
  userToken,
  withTimeout,
} from './helpers.mjs'

afterEach(closeSockets)
after(stopServers)

describe('rate limiting (RATE_LIMIT_PER_SEC=2, RATE_LIMIT_BURST=5)', () => {
  let srv
  before(async () => {
    srv = await startServer({ env: { RATE_LIMIT_PER_SEC: 2, RATE_LIMIT_BURST: 5 } })
  })

  test('a burst gets rate_limited acks; the connection survives and recovers', async () => {
    const [a] = ids(1)
    const room = uniqueRoom('rl')
    const s = await connectAs(srv.url, a, { transports: ['websocket'] })
    await join(s, room)
    const acks = await Promise.all(
      Array.from({ length: 12 }, (_, i) => emitAck(s, 'send-message', { roomId: room, message: `burst ${i}` })),
    )
    const ok = acks.filter((x) => x.ok === true)
    const limited = acks.filter((x) => x.ok === false && x.error?.code === 'rate_limited')
    assert.equal(ok.length + limited.length, 12, JSON.stringify(acks))
    assert.ok(ok.length >= 1 && ok.length <= 6, `ok ${ok.length}`)
    assert.ok(limited.length >= 6, `rate_limited ${limited.length}`)
    for (const l of limited) assert.equal(typeof l.error.message, 'string')
    assert.equal(s.connected, true)
    await sleep(2600)
    const after = await emitAck(s, 'send-message', { roomId: room, message: 'after the pause' })
    assert.equal(after.ok, true, JSON.stringify(after))
    assert.equal(s.connected, true)
    // only the acked messages were stored
    const r = await http(`${srv.url}/api/rooms/${room}/messages`, { token: userToken(a) })
    if (r.status === 200) assert.equal(r.body.messages.length, ok.length + 1)
  })

  test('the budget is per user: other tabs and REST share it (429 rate_limited)', async () => {
    const [a, b] = ids(2)
    const room = uniqueRoom('rl2')
    const t1 = await connectAs(srv.url, a, { transports: ['websocket'] })
    const t2 = await connectAs(srv.url, a, { transports: ['websocket'] })
    const other = await connectAs(srv.url, b, { transports: ['websocket'] })
    await join(t1, room)
    await join(other, room)
    await Promise.all(Array.from({ length: 8 }, () => emitAck(t1, 'typing', { roomId: room, isTyping: true })))
    const fromTab2 = await emitAck(t2, 'join-room', { roomId: room })
    assert.equal(fromTab2.ok, false, JSON.stringify(fromTab2))
    assert.equal(fromTab2.error?.code, 'rate_limited')
    const rest = await http(`${srv.url}/api/rooms/${room}/messages`, {
      method: 'POST',
      token: userToken(a),
      body: { message: 'over http' },
    })
    assert.equal(rest.status, 429, rest.text)
    assert.equal(rest.body?.ok, false)
    assert.equal(rest.body?.error?.code, 'rate_limited')
    // another user is not affected
    const m = await send(other, room, 'b is fine')
    assert.equal(m.message, 'b is fine')
    assert.ok(t1.connected && t2.connected)
  })
})

describe('garbage payloads never disconnect and never crash the server', () => {
  let srv
  before(async () => {
    srv = await startServer({ env: { RATE_LIMIT_PER_SEC: 100000, RATE_LIMIT_BURST: 100000 } })
  })

  let deep = { roomId: 'x', message: 'deep' }
  for (let i = 0; i < 100; i++) deep = { nested: deep }
  const payloads = {
    string: 'just a string',
    number: 42,
    float: 1.5,
    null: null,
    true: true,
    'empty array': [],
    array: [1, 2, 3],
    'empty object': {},
    'numeric roomId': { roomId: 5, message: 'x' },
    'null roomId': { roomId: null, message: 'x' },
    'object roomId': { roomId: { a: 1 }, message: 'x' },
    'array message': { roomId: 'lobby', message: ['x'] },
    'object data': { roomId: 'lobby', data: 'nope' },
    'null data': { roomId: 'lobby', data: null },
    'boolean isTyping string': { roomId: 'lobby', isTyping: 'yes' },
    'since garbage': { roomId: 'lobby', since: { x: 1 } },
    'negative since': { roomId: 'lobby', since: '-5' },
    'huge number': { roomId: 'lobby', message: 'x', clientId: 1e300 },
    'deeply nested': deep,
    'unicode garbage': { roomId: '\u0000\uffff', message: '\u0000' },
  }

  for (const { name, transports } of TRANSPORTS) {
    const opts = transports ? { transports } : {}
    for (const event of ['join-room', 'leave-room', 'send-message', 'typing']) {
      test(`[${name}] ${event} with garbage -> an error ack (or ok), connection stays`, async () => {
        const [a] = ids(1)
        const s = await connectAs(srv.url, a, opts)
        const room = uniqueRoom('garbage')
        await join(s, room)
        const keep = await send(s, room, 'precious')
        for (const [what, payload] of Object.entries(payloads)) {
          const ack = await emitAck(s, event, payload).catch((e) => {
            throw new Error(`${event} ${what}: ${e.message}\n${srv.output().slice(-2000)}`)
          })
          assert.equal(typeof ack, 'object', `${event} ${what}: ack ${JSON.stringify(ack)}`)
          assert.notEqual(ack, null, `${event} ${what}`)
          assert.equal(typeof ack.ok, 'boolean', `${event} ${what}: ${JSON.stringify(ack)}`)
          if (!ack.ok) assert.ok(ERROR_CODES.includes(ack.error?.code), `${event} ${what}: ${JSON.stringify(ack)}`)
          if (!ack.ok) assert.notEqual(ack.error.code, 'internal', `${event} ${what}: ${JSON.stringify(ack)}`)
          assert.equal(s.connected, true, `${event} ${what} disconnected the socket`)
        }
        // no payload at all, but an ack callback
        const bare = await emitAckArgs(s, event, [])
        assert.equal(bare.ok, false, JSON.stringify(bare))
        assert.equal(bare.error?.code, 'invalid_payload')
        assert.equal(s.connected, true)
        // stored data untouched, socket still works
        const h = await emitAck(s, 'join-room', { roomId: room, since: '0' }) // a re-join sends history only when asked
        assert.equal(h.ok, true)
        assert.deepEqual(h.history.at(0), keep)
        await send(s, room, 'still works')
      })
    }

    test(`[${name}] events without ack callbacks, extra args, binary and unknown events`, async () => {
      const [a] = ids(1)
      const s = await connectAs(srv.url, a, opts)
      const room = uniqueRoom('noack')
      await join(s, room)
      s.emit('send-message', { roomId: room, message: 'no ack callback' })
      s.emit('join-room', { roomId: uniqueRoom('noack2') })
      s.emit('typing', { roomId: room, isTyping: true })
      s.emit('leave-room', 'x')
      s.emit('send-message')
      s.emit('send-message', null)
      s.emit('no-such-event', { a: 1 })
      s.emit('no-such-event', { a: 1 }, () => {})
      s.emit('send-message', { roomId: room, message: 'two args' }, 'extra', () => {})
      s.emit('send-message', Buffer.from('binary payload'), () => {})
      s.emit('send-message', { roomId: room, message: 'with binary', media: Buffer.from([1, 2, 3]) }, () => {})
      await sleep(500)
      assert.equal(s.connected, true)
      const m = await send(s, room, 'after the noise')
      assert.equal(m.message, 'after the noise')
      const health = await http(`${srv.url}/healthz`)
      assert.equal(health.status, 200)
    })
  }

  test('raw Engine.IO/Socket.IO junk over polling does not crash the server', async () => {
    const base = `${srv.url}/socket.io/?EIO=4&transport=polling`
    const hs = await http(base)
    assert.equal(hs.status, 200, hs.text)
    const sid = JSON.parse(hs.text.slice(1)).sid
    const url = `${base}&sid=${encodeURIComponent(sid)}`
    const postRaw = (raw) =>
      http(url, { method: 'POST', raw, headers: { 'content-type': 'text/plain;charset=UTF-8' } }).catch((e) => ({
        status: 0,
        text: e.message,
      }))
    await postRaw(`40${JSON.stringify({ token: userToken(ids(1)[0]) })}`)
    await withTimeout(http(url), 3000, 'poll').catch(() => {})
    for (const junk of [
      '42["send-message",{bad json',
      '42',
      '42[]',
      '42[null]',
      '42[1,2,3]',
      '421["join-room"',
      '4zzz',
      '9',
      '\u001e\u001e',
      '451-["send-message",{"_placeholder":true,"num":7}]',
    ]) {
      await postRaw(junk)
    }
    await sleep(300)
    const health = await http(`${srv.url}/healthz`)
    assert.equal(health.status, 200)
    const s = await connectAs(srv.url, ids(1)[0])
    const room = uniqueRoom('afterjunk')
    await join(s, room)
    await send(s, room, 'server still fine')
  })
})
