// CONTRACT §4 typing, §7 "Events" (typing).
import assert from 'node:assert/strict'
import { after, afterEach, before, describe, test } from 'node:test'
import {
  TRANSPORTS,
  closeSockets,
  connectAs,
  dmRoom,
  emitAck,
  expectNone,
  ids,
  join,
  sleep,
  startServer,
  stopServers,
  uniqueRoom,
  waitFor,
} from './helpers.mjs'

afterEach(closeSockets)
after(stopServers)

let srv
before(async () => {
  srv = await startServer()
})

async function setup(opts) {
  const [a, b] = ids(2)
  const room = dmRoom(a, b)
  const a1 = await connectAs(srv.url, a, opts)
  const a2 = await connectAs(srv.url, a, opts)
  const b1 = await connectAs(srv.url, b, opts)
  for (const s of [a1, a2, b1]) await join(s, room)
  return { a, b, room, a1, a2, b1 }
}

for (const { name, transports } of TRANSPORTS) {
  const opts = transports ? { transports } : {}
  describe(`typing [${name}]`, () => {
    test('goes to the other users only, never to the typist own sockets', async () => {
      const { a, room, a1, a2, b1 } = await setup(opts)
      const got = waitFor(b1, 'typing', (e) => e.isTyping === true)
      const notSelf1 = expectNone(a1, 'typing', 700)
      const notSelf2 = expectNone(a2, 'typing', 700)
      const ack = await emitAck(a1, 'typing', { roomId: room, isTyping: true })
      assert.deepEqual(ack, { ok: true })
      assert.deepEqual(await got, { roomId: room, userId: a, isTyping: true })
      await notSelf1
      await notSelf2
    })

    test('explicit isTyping:false is relayed', async () => {
      const { a, room, a1, b1 } = await setup(opts)
      await emitAck(a1, 'typing', { roomId: room, isTyping: true })
      const off = waitFor(b1, 'typing', (e) => e.isTyping === false)
      assert.equal((await emitAck(a1, 'typing', { roomId: room, isTyping: false })).ok, true)
      assert.deepEqual(await off, { roomId: room, userId: a, isTyping: false })
    })

    test('not joined -> not_joined and nothing relayed', async () => {
      const [a, b] = ids(2)
      const room = uniqueRoom('typing-nj')
      const sa = await connectAs(srv.url, a, opts)
      const sb = await connectAs(srv.url, b, opts)
      await join(sb, room)
      const none = expectNone(sb, 'typing', 500)
      const ack = await emitAck(sa, 'typing', { roomId: room, isTyping: true })
      assert.equal(ack.ok, false)
      assert.equal(ack.error?.code, 'not_joined')
      await none
    })

    test('a typist who leaves is followed by isTyping:false', async () => {
      const { a, room, a1, a2, b1 } = await setup(opts)
      a2.close()
      await sleep(300) // let the server finish the other tab's disconnect first
      const on = waitFor(b1, 'typing', (e) => e.isTyping === true)
      await emitAck(a1, 'typing', { roomId: room, isTyping: true })
      await on
      const off = waitFor(b1, 'typing', (e) => e.isTyping === false)
      assert.equal((await emitAck(a1, 'leave-room', { roomId: room })).ok, true)
      assert.deepEqual(await off, { roomId: room, userId: a, isTyping: false })
    })

    test('a typist who disconnects is followed by isTyping:false', async () => {
      const { a, room, a1, a2, b1 } = await setup(opts)
      a2.close()
      await sleep(300) // let the server finish the other tab's disconnect first
      const on = waitFor(b1, 'typing', (e) => e.isTyping === true)
      await emitAck(a1, 'typing', { roomId: room, isTyping: true })
      await on
      const off = waitFor(b1, 'typing', (e) => e.isTyping === false, 3000)
      a1.close()
      assert.deepEqual(await off, { roomId: room, userId: a, isTyping: false })
    })

    test('invalid typing payloads -> invalid_payload', async () => {
      const { room, a1 } = await setup(opts)
      for (const bad of [{ roomId: room }, { roomId: room, isTyping: 'yes' }, { isTyping: true }, 'typing']) {
        const ack = await emitAck(a1, 'typing', bad)
        assert.equal(ack.ok, false, JSON.stringify(bad))
        assert.equal(ack.error?.code, 'invalid_payload', `${JSON.stringify(bad)} -> ${JSON.stringify(ack)}`)
      }
    })
  })
}

describe('typing timeout', () => {
  test('typing:true not refreshed within 8 s is followed by isTyping:false from the server', async () => {
    const { a, room, a1, a2, b1 } = await setup({ transports: ['websocket'] })
    const on = waitFor(b1, 'typing', (e) => e.isTyping === true)
    await emitAck(a1, 'typing', { roomId: room, isTyping: true })
    const t0 = Date.now()
    await on
    const notEarly = expectNone(b1, 'typing', 6500, (e) => e.isTyping === false)
    const off = waitFor(b1, 'typing', (e) => e.isTyping === false, 10500)
    await notEarly
    const ev = await off
    const elapsed = Date.now() - t0
    assert.deepEqual(ev, { roomId: room, userId: a, isTyping: false })
    assert.ok(elapsed >= 7000 && elapsed <= 10500, `auto false after ${elapsed} ms`)
    assert.ok(a1.connected && a2.connected)
  })
})
