// CONTRACT §3 (rooms), join-room / leave-room of §4 and §7 "Rooms".
import assert from 'node:assert/strict'
import { after, afterEach, before, describe, test } from 'node:test'
import {
  closeSockets,
  connect,
  connectAs,
  emitAck,
  ids,
  join,
  send,
  startServer,
  stopServers,
  token,
  uniqueRoom,
} from './helpers.mjs'

afterEach(closeSockets)
after(stopServers)

let srv
before(async () => {
  srv = await startServer()
})

async function joinAck(socket, roomId) {
  return emitAck(socket, 'join-room', { roomId })
}

function assertError(ack, code, msgRe) {
  assert.equal(ack?.ok, false, `expected ${code}, got ${JSON.stringify(ack)}`)
  assert.equal(ack.error?.code, code, `expected ${code}, got ${JSON.stringify(ack)}`)
  assert.equal(typeof ack.error.message, 'string')
  if (msgRe) assert.match(ack.error.message, msgRe)
}

describe('direct rooms chat-A-B', () => {
  test('user 5 joins chat-5-12; chat-12-5 is invalid_room naming chat-5-12', async () => {
    const s = await connectAs(srv.url, 5)
    const ok = await joinAck(s, 'chat-5-12')
    assert.equal(ok.ok, true, JSON.stringify(ok))
    assert.equal(ok.roomId, 'chat-5-12')
    assert.ok(Array.isArray(ok.members))
    assert.ok(Array.isArray(ok.history))
    assert.equal(typeof ok.hasMore, 'boolean')
    assertError(await joinAck(s, 'chat-12-5'), 'invalid_room', /chat-5-12/)
  })

  test('numeric parts compare as integers: chat-9-10 ok, chat-10-9 refused naming chat-9-10', async () => {
    const s = await connectAs(srv.url, 9)
    assert.equal((await joinAck(s, 'chat-9-10')).ok, true)
    assertError(await joinAck(s, 'chat-10-9'), 'invalid_room', /chat-9-10/)
  })

  test('string ids compare lexicographically: chat-alice-bob ok, chat-bob-alice refused', async () => {
    const s = await connectAs(srv.url, 'alice')
    assert.equal((await joinAck(s, 'chat-alice-bob')).ok, true)
    assertError(await joinAck(s, 'chat-bob-alice'), 'invalid_room', /chat-alice-bob/)
    const b = await connectAs(srv.url, 'bob')
    assert.equal((await joinAck(b, 'chat-alice-bob')).ok, true)
  })

  test('mixed numeric/string parts compare as strings: chat-10-9a ok, chat-9a-10 refused', async () => {
    const s = await connectAs(srv.url, '9a')
    assert.equal((await joinAck(s, 'chat-10-9a')).ok, true)
    assertError(await joinAck(s, 'chat-9a-10'), 'invalid_room', /chat-10-9a/)
  })

  test('a numeric id given as a string token is the same user: "12" joins chat-5-12', async () => {
    const s = await connect(srv.url, { token: token({ sub: '12' }) })
    assert.equal((await joinAck(s, 'chat-5-12')).ok, true)
  })

  test('a third user is forbidden', async () => {
    const s = await connectAs(srv.url, 7)
    assertError(await joinAck(s, 'chat-5-12'), 'forbidden')
  })

  test('chat-5-5 is user 5 own notes; others forbidden', async () => {
    const five = await connectAs(srv.url, 5)
    assert.equal((await joinAck(five, 'chat-5-5')).ok, true)
    const m = await send(five, 'chat-5-5', 'note to self')
    assert.equal(m.roomId, 'chat-5-5')
    const six = await connectAs(srv.url, 6)
    assertError(await joinAck(six, 'chat-5-5'), 'forbidden')
  })

  for (const bad of ['chat-1-2-3', 'chat-5', 'chat-', 'chat--5', 'chat-5-', 'chat-a--b']) {
    test(`malformed direct id ${bad} -> invalid_room`, async () => {
      const s = await connectAs(srv.url, 5)
      assertError(await joinAck(s, bad), 'invalid_room')
    })
  }
})

describe('public rooms', () => {
  test('any authenticated user may join; members lists both', async () => {
    const [a, b] = ids(2)
    const room = uniqueRoom('lobby')
    const sa = await connectAs(srv.url, a)
    const sb = await connectAs(srv.url, b)
    await join(sa, room)
    const ack = await join(sb, room)
    assert.deepEqual(ack.members.map((m) => m.userId).sort((x, y) => x - y), [a, b])
  })

  test('a bare string roomId is accepted by join-room', async () => {
    const [a] = ids(1)
    const room = uniqueRoom('bare')
    const s = await connectAs(srv.url, a)
    const ack = await emitAck(s, 'join-room', room)
    assert.equal(ack.ok, true, JSON.stringify(ack))
    assert.equal(ack.roomId, room)
  })

  test('every allowed character and the maximum length (164) are accepted', async () => {
    const [a] = ids(1)
    const s = await connectAs(srv.url, a)
    const chars = 'AZaz09_-=@,.;:'
    assert.equal((await joinAck(s, `x${chars}`)).ok, true)
    const long = 'r'.repeat(164)
    const ack = await joinAck(s, long)
    assert.equal(ack.ok, true, JSON.stringify(ack))
    assert.equal(ack.roomId, long)
  })

  const invalid = {
    empty: '',
    'too long (165)': 'r'.repeat(165),
    space: 'bad room',
    hash: 'a#b',
    slash: 'a/b',
    question: 'a?b',
    unicode: 'caf\u00e9',
    newline: 'a\nb',
    percent: 'a%20b',
  }
  for (const [what, roomId] of Object.entries(invalid)) {
    test(`room id with ${what} -> invalid_room`, async () => {
      const [a] = ids(1)
      const s = await connectAs(srv.url, a)
      assertError(await joinAck(s, roomId), 'invalid_room')
      assert.equal(s.connected, true)
    })
  }

  test('join-room without roomId -> invalid_payload', async () => {
    const [a] = ids(1)
    const s = await connectAs(srv.url, a)
    assertError(await emitAck(s, 'join-room', {}), 'invalid_payload')
    assertError(await emitAck(s, 'join-room', { roomId: 42 }), 'invalid_payload')
  })
})

describe('join / leave idempotence', () => {
  test('joining twice answers ok:true and still one member entry', async () => {
    const [a] = ids(1)
    const room = uniqueRoom('twice')
    const s = await connectAs(srv.url, a)
    await join(s, room)
    const again = await joinAck(s, room)
    assert.equal(again.ok, true, JSON.stringify(again))
    assert.equal(again.members.filter((m) => m.userId === a).length, 1)
  })

  test('leaving a room not joined answers { ok: true }', async () => {
    const [a] = ids(1)
    const s = await connectAs(srv.url, a)
    const ack = await emitAck(s, 'leave-room', { roomId: uniqueRoom('never') })
    assert.equal(ack.ok, true, JSON.stringify(ack))
  })

  test('leave after join answers ok, then sending is not_joined', async () => {
    const [a] = ids(1)
    const room = uniqueRoom('leave')
    const s = await connectAs(srv.url, a)
    await join(s, room)
    assert.equal((await emitAck(s, 'leave-room', { roomId: room })).ok, true)
    assertError(await emitAck(s, 'send-message', { roomId: room, message: 'x' }), 'not_joined')
  })
})

describe('rooms not open yet (no groups stored, no Pusher auth endpoint)', () => {
  for (const roomId of ['group-1', 'private-x', 'private-chat-5-12', 'presence-online']) {
    test(`${roomId} -> forbidden`, async () => {
      const s = await connectAs(srv.url, 5)
      assertError(await joinAck(s, roomId), 'forbidden')
      const send = await emitAck(s, 'send-message', { roomId, message: 'x' })
      assert.equal(send.ok, false)
      assert.ok(['not_joined', 'forbidden'].includes(send.error?.code), JSON.stringify(send))
    })
  }
})
