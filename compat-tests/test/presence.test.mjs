// CONTRACT §4 user-online and join-room members, §7 "Events" / "Identity" (string form).
import assert from 'node:assert/strict'
import { after, afterEach, before, describe, test } from 'node:test'
import {
  TRANSPORTS,
  closeSockets,
  connect,
  connectAs,
  emitAck,
  expectNone,
  ids,
  join,
  startServer,
  stopServers,
  token,
  uniqueRoom,
  waitFor,
} from './helpers.mjs'

afterEach(closeSockets)
after(stopServers)

let srv
before(async () => {
  srv = await startServer()
})

const byUser = (members) => [...members].sort((x, y) => String(x.userId).localeCompare(String(y.userId)))

for (const { name, transports } of TRANSPORTS) {
  const opts = transports ? { transports } : {}
  describe(`user-online [${name}]`, () => {
    test('first socket of a user joining -> online:true to the other users, not to the joiner', async () => {
      const [a, b] = ids(2)
      const room = uniqueRoom('online')
      const sa = await connectAs(srv.url, a, opts)
      await join(sa, room)
      const sb = await connectAs(srv.url, b, opts)
      const outsider = await connectAs(srv.url, ids(1)[0], opts)
      await join(outsider, uniqueRoom('elsewhere'))
      const seen = waitFor(sa, 'user-online', (e) => e.userId === b)
      const selfNone = expectNone(sb, 'user-online', 700)
      const outsiderNone = expectNone(outsider, 'user-online', 700)
      await join(sb, room)
      assert.deepEqual(await seen, { roomId: room, userId: b, online: true })
      await selfNone
      await outsiderNone
    })

    test('a second tab of a present user emits nothing; last socket leaving -> online:false', async () => {
      const [a, b] = ids(2)
      const room = uniqueRoom('tabs')
      const sa = await connectAs(srv.url, a, opts)
      await join(sa, room)
      const b1 = await connectAs(srv.url, b, opts)
      const on = waitFor(sa, 'user-online', (e) => e.userId === b && e.online)
      await join(b1, room)
      await on
      const b2 = await connectAs(srv.url, b, opts)
      const quiet = expectNone(sa, 'user-online', 700)
      const quietB1 = expectNone(b1, 'user-online', 700)
      await join(b2, room)
      await quiet
      await quietB1
      // first tab leaves: b still present through b2
      const quiet2 = expectNone(sa, 'user-online', 700)
      assert.equal((await emitAck(b1, 'leave-room', { roomId: room })).ok, true)
      await quiet2
      const off = waitFor(sa, 'user-online', (e) => e.userId === b && e.online === false)
      const selfNone = expectNone(b2, 'user-online', 700)
      assert.equal((await emitAck(b2, 'leave-room', { roomId: room })).ok, true)
      assert.deepEqual(await off, { roomId: room, userId: b, online: false })
      await selfNone
    })

    test('last socket disconnecting -> online:false; one event per room', async () => {
      const [a, b] = ids(2)
      const room1 = uniqueRoom('disc1')
      const room2 = uniqueRoom('disc2')
      const sa = await connectAs(srv.url, a, opts)
      await join(sa, room1)
      await join(sa, room2)
      const b1 = await connectAs(srv.url, b, opts)
      const b2 = await connectAs(srv.url, b, opts)
      await join(b1, room1)
      await join(b2, room1)
      await join(b1, room2)
      const off2 = waitFor(sa, 'user-online', (e) => e.userId === b && e.online === false, 3000)
      b1.close() // b2 still in room1, but room2 loses b
      assert.deepEqual(await off2, { roomId: room2, userId: b, online: false })
      await expectNone(sa, 'user-online', 700)
      const off1 = waitFor(sa, 'user-online', (e) => e.userId === b && e.online === false, 3000)
      b2.close()
      assert.deepEqual(await off1, { roomId: room1, userId: b, online: false })
      await expectNone(sa, 'user-online', 500)
      const offs = sa.received.filter((r) => r.event === 'user-online' && r.args[0].online === false)
      assert.equal(offs.length, 2, `one offline per room: ${JSON.stringify(offs.map((r) => r.args[0]))}`)
    })

    test('members: one entry per user however many tabs, joiner included, with profile', async () => {
      const [a, b] = ids(2)
      const room = uniqueRoom('members')
      const pa = { username: 'aa', fullName: 'A A', avatar: 'https://x.example/a.png' }
      const pb = { username: 'bb', fullName: 'B B' }
      const a1 = await connectAs(srv.url, a, { ...opts, profile: pa })
      const a2 = await connectAs(srv.url, a, { ...opts, profile: pa })
      await join(a1, room)
      const ackA2 = await join(a2, room)
      assert.deepEqual(ackA2.members, [{ userId: a, ...pa }])
      const sb = await connectAs(srv.url, b, { ...opts, profile: pb })
      const ack = await join(sb, room)
      assert.deepEqual(byUser(ack.members), byUser([{ userId: a, ...pa }, { userId: b, ...pb }]))
      // after a leaves with both tabs, members shows only b
      await emitAck(a1, 'leave-room', { roomId: room })
      await emitAck(a2, 'leave-room', { roomId: room })
      const ackAgain = await emitAck(sb, 'join-room', { roomId: room })
      assert.deepEqual(ackAgain.members, [{ userId: b, ...pb }])
    })
  })
}

describe('users are compared by the string form of their id', () => {
  test('tokens with sub 5 and sub "5" are one user: no second online, one member entry', async () => {
    const [n, other] = ids(2)
    const room = uniqueRoom('strform')
    const obs = await connectAs(srv.url, other)
    await join(obs, room)
    const asNumber = await connect(srv.url, { token: token({ sub: n }) })
    const on = waitFor(obs, 'user-online', (e) => String(e.userId) === String(n))
    await join(asNumber, room)
    assert.strictEqual((await on).userId, n)
    const asString = await connect(srv.url, { token: token({ sub: String(n) }) })
    const quiet = expectNone(obs, 'user-online', 700)
    const ack = await join(asString, room)
    await quiet
    assert.equal(ack.members.filter((m) => String(m.userId) === String(n)).length, 1)
    assert.equal(ack.members.length, 2)
  })
})
