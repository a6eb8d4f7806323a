// CONTRACT §6 (messages routes) and §7 "REST".
import assert from 'node:assert/strict'
import { after, afterEach, before, describe, test } from 'node:test'
import {
  closeSockets,
  connectAs,
  dmRoom,
  emitAck,
  expectNone,
  http,
  ids,
  isDecimalId,
  join,
  send,
  startServer,
  stopServers,
  token,
  uniqueRoom,
  userToken,
  waitFor,
} from './helpers.mjs'

afterEach(closeSockets)
after(stopServers)

const ENV = { RATE_LIMIT_PER_SEC: 100000, RATE_LIMIT_BURST: 100000 }
let srv
before(async () => {
  srv = await startServer({ env: ENV })
})

const messagesUrl = (room) => `${srv.url}/api/rooms/${encodeURIComponent(room)}/messages`
const post = (room, tok, body) => http(messagesUrl(room), { method: 'POST', token: tok, body })
const get = (room, tok, query = '') => http(`${messagesUrl(room)}${query}`, { token: tok })

function assertHttpError(res, status, code) {
  assert.equal(res.status, status, `expected ${status} ${code}, got ${res.status} ${res.text.slice(0, 300)}`)
  assert.equal(res.body?.ok, false, res.text.slice(0, 300))
  assert.equal(res.body?.error?.code, code, res.text.slice(0, 300))
  assert.equal(typeof res.body.error.message, 'string')
}

async function seed(room, n, tok) {
  const out = []
  for (let i = 0; i < n; i++) {
    const r = await post(room, tok, { clientId: `seed-${i}`, message: `seed ${i}` })
    assert.equal(r.status, 201, r.text)
    out.push(r.body.message)
  }
  return out
}

describe('POST /api/rooms/{roomId}/messages', () => {
  test('201 { ok, message } without any socket; retry with same clientId -> 200 with the original', async () => {
    const [a] = ids(1)
    const tok = userToken(a, { username: 'poster', fullName: 'Post Er' })
    const room = uniqueRoom('post')
    const r = await post(room, tok, { clientId: 'p-1', message: 'over http' })
    assert.equal(r.status, 201, r.text)
    assert.equal(r.body.ok, true)
    const m = r.body.message
    assert.ok(isDecimalId(m.id))
    assert.equal(m.roomId, room)
    assert.strictEqual(m.userId, a)
    assert.equal(m.username, 'poster')
    assert.equal(m.fullName, 'Post Er')
    assert.equal(m.clientId, 'p-1')
    assert.equal(m.message, 'over http')
    assert.equal(m.type, 'message')
    assert.ok(Math.abs(m.timestamp - Date.now()) < 60000)
    const again = await post(room, tok, { clientId: 'p-1', message: 'changed body' })
    assert.equal(again.status, 200, again.text)
    assert.equal(again.body.ok, true)
    assert.deepEqual(again.body.message, m)
  })

  test('broadcast as new-message to the sockets in the room; a retry is not broadcast again', async () => {
    const [a, b] = ids(2)
    const room = dmRoom(a, b)
    const sa = await connectAs(srv.url, a)
    const sb = await connectAs(srv.url, b)
    await join(sa, room)
    await join(sb, room)
    const gotA = waitFor(sa, 'new-message', (m) => m.clientId === 'b-1')
    const gotB = waitFor(sb, 'new-message', (m) => m.clientId === 'b-1')
    const r = await post(room, userToken(a), { clientId: 'b-1', message: 'from backend' })
    assert.equal(r.status, 201, r.text)
    assert.deepEqual(await gotA, r.body.message)
    assert.deepEqual(await gotB, r.body.message)
    const none = expectNone(sb, 'new-message', 700)
    const again = await post(room, userToken(a), { clientId: 'b-1', message: 'from backend' })
    assert.equal(again.status, 200)
    await none
  })

  test('idempotency is shared with Socket.IO send-message', async () => {
    const [a] = ids(1)
    const room = uniqueRoom('shared')
    const s = await connectAs(srv.url, a)
    await join(s, room)
    const viaSocket = await send(s, room, 'socket first', { clientId: 'x-1' })
    const viaRest = await post(room, userToken(a), { clientId: 'x-1', message: 'rest second' })
    assert.equal(viaRest.status, 200, viaRest.text)
    assert.deepEqual(viaRest.body.message, viaSocket)
    const r2 = await post(room, userToken(a), { clientId: 'x-2', message: 'rest first' })
    assert.equal(r2.status, 201)
    const back = await emitAck(s, 'send-message', { roomId: room, clientId: 'x-2', message: 'socket second' })
    assert.deepEqual(back.message, r2.body.message)
  })

  test('legacy body shape { targetId, data: { id, … } } works over REST too', async () => {
    const [a, b] = ids(2)
    const room = dmRoom(a, b)
    const r = await post(room, userToken(a), {
      targetId: b,
      data: { id: 'temp-rest-1', userId: 1, message: 'legacy over http', type: 'sticker', media: 'https://cdn.example/s.png' },
    })
    assert.equal(r.status, 201, r.text)
    assert.equal(r.body.message.clientId, 'temp-rest-1')
    assert.strictEqual(r.body.message.userId, a)
    assert.equal(r.body.message.type, 'sticker')
  })

  test('room ids in paths are percent-decoded', async () => {
    const [a] = ids(1)
    const room = `${uniqueRoom('enc')}:x@y,z;w=v`
    const encoded = `${srv.url}/api/rooms/${room.replace(/[:@,;=]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)}/messages`
    assert.ok(encoded.includes('%3A'))
    const r = await http(encoded, { method: 'POST', token: userToken(a), body: { message: 'encoded' } })
    assert.equal(r.status, 201, r.text)
    assert.equal(r.body.message.roomId, room)
    // the same room via the socket and via an unencoded path
    const s = await connectAs(srv.url, a)
    const ack = await join(s, room)
    assert.equal(ack.history.at(-1).id, r.body.message.id)
    const plain = await http(`${srv.url}/api/rooms/${room}/messages`, { token: userToken(a) })
    assert.equal(plain.status, 200, plain.text)
    assert.equal(plain.body.messages.at(-1).id, r.body.message.id)
    // a percent-encoded non-canonical direct room is still checked after decoding
    const dm = await http(`${srv.url}/api/rooms/chat%2D12%2D5/messages`, { token: userToken(5) })
    assertHttpError(dm, 400, 'invalid_room')
    assert.match(dm.body.error.message, /chat-5-12/)
  })
})

describe('GET /api/rooms/{roomId}/messages', () => {
  let room
  let seeded
  let tok
  before(async () => {
    room = uniqueRoom('get')
    tok = userToken(ids(1)[0])
    seeded = await seed(room, 10, tok)
  })
  const idsOf = (r) => r.body.messages.map((m) => m.id)

  test('empty room -> { messages: [], hasMore: false }', async () => {
    const r = await get(uniqueRoom('none'), tok)
    assert.equal(r.status, 200, r.text)
    assert.deepEqual(r.body, { messages: [], hasMore: false })
  })

  test('no params: all (≤ 50) oldest first, identical to the POST answers', async () => {
    const r = await get(room, tok)
    assert.equal(r.status, 200, r.text)
    assert.deepEqual(r.body.messages, seeded)
    assert.equal(r.body.hasMore, false)
  })

  test('limit=N: the latest N, oldest first, hasMore true', async () => {
    const r = await get(room, tok, '?limit=3')
    assert.deepEqual(idsOf(r), seeded.slice(7).map((m) => m.id))
    assert.equal(r.body.hasMore, true)
  })

  test('before=X&limit=N: the N just before X', async () => {
    const r = await get(room, tok, `?before=${seeded[5].id}&limit=2`)
    assert.equal(r.status, 200, r.text)
    assert.deepEqual(idsOf(r), [seeded[3].id, seeded[4].id])
    assert.equal(r.body.hasMore, true)
    const start = await get(room, tok, `?before=${seeded[2].id}&limit=5`)
    assert.deepEqual(idsOf(start), [seeded[0].id, seeded[1].id])
    assert.equal(start.body.hasMore, false)
  })

  test('after=X&limit=N: the N just after X', async () => {
    const r = await get(room, tok, `?after=${seeded[5].id}&limit=2`)
    assert.equal(r.status, 200, r.text)
    assert.deepEqual(idsOf(r), [seeded[6].id, seeded[7].id])
    assert.equal(r.body.hasMore, true)
    const end = await get(room, tok, `?after=${seeded[7].id}`)
    assert.deepEqual(idsOf(end), [seeded[8].id, seeded[9].id])
    assert.equal(end.body.hasMore, false)
  })

  test('default limit is 50 (latest 50 with hasMore)', async () => {
    const big = uniqueRoom('get55')
    const all = await seed(big, 55, tok)
    const r = await get(big, tok)
    assert.deepEqual(idsOf(r), all.slice(5).map((m) => m.id))
    assert.equal(r.body.hasMore, true)
  })

  test('limit is capped at 500', async () => {
    const big = uniqueRoom('get510')
    const tok2 = userToken(ids(1)[0])
    const all = []
    for (let i = 0; i < 510; i += 30) {
      const batch = []
      for (let j = i; j < Math.min(510, i + 30); j++) batch.push(post(big, tok2, { clientId: `b${j}`, message: `b ${j}` }))
      all.push(...(await Promise.all(batch)).map((r) => r.body.message))
    }
    all.sort((x, y) => (BigInt(x.id) < BigInt(y.id) ? -1 : 1))
    const r = await get(big, tok2, '?limit=1000')
    if (r.status === 200) {
      assert.equal(r.body.messages.length, 500)
      assert.deepEqual(idsOf(r), all.slice(10).map((m) => m.id))
      assert.equal(r.body.hasMore, true)
    } else {
      assertHttpError(r, 400, 'invalid_payload')
    }
    const max = await get(big, tok2, `?after=${all[0].id}&limit=500`)
    assert.equal(max.status, 200, max.text)
    assert.equal(max.body.messages.length, 500)
    assert.equal(max.body.hasMore, true)
  })

  test('direct rooms follow the join rules: member 200, third user 403', async () => {
    const ok = await get('chat-5-12', userToken(12))
    assert.equal(ok.status, 200, ok.text)
    assertHttpError(await get('chat-5-12', userToken(7)), 403, 'forbidden')
    assertHttpError(await get('group-1', userToken(7)), 403, 'forbidden')
  })
})

describe('REST errors', () => {
  test('401 unauthorized: missing, malformed, wrongly signed, expired token', async () => {
    const room = uniqueRoom('auth')
    assertHttpError(await get(room, undefined), 401, 'unauthorized')
    assertHttpError(await get(room, 'garbage'), 401, 'unauthorized')
    assertHttpError(await get(room, token({ sub: 1 }, { secret: 'wrong' })), 401, 'unauthorized')
    assertHttpError(await get(room, token({ sub: 1, exp: Math.floor(Date.now() / 1000) - 60 })), 401, 'unauthorized')
    assertHttpError(await post(room, undefined, { message: 'x' }), 401, 'unauthorized')
  })

  test('403 forbidden: DM of others, group-N, private-', async () => {
    assertHttpError(await post('chat-5-12', userToken(7), { message: 'x' }), 403, 'forbidden')
    assertHttpError(await post('group-1', userToken(7), { message: 'x' }), 403, 'forbidden')
    assertHttpError(await post('private-x', userToken(7), { message: 'x' }), 403, 'forbidden')
  })

  test('400 invalid_room: non-canonical DM (naming the canonical id), bad characters', async () => {
    const r = await post('chat-12-5', userToken(5), { message: 'x' })
    assertHttpError(r, 400, 'invalid_room')
    assert.match(r.body.error.message, /chat-5-12/)
    assertHttpError(await get('a b', userToken(5)), 400, 'invalid_room')
    assertHttpError(await get('r'.repeat(165), userToken(5)), 400, 'invalid_room')
  })

  test('400 invalid_payload: empty text, bad type, bad media, long clientId, non-JSON body', async () => {
    const room = uniqueRoom('inval')
    const tok = userToken(ids(1)[0])
    for (const body of [
      { message: '' },
      { message: 'x', type: 'video' },
      { message: 'x', media: 'ftp://nope' },
      { message: 'x', clientId: 'c'.repeat(129) },
      'just a string',
      [1, 2],
    ]) {
      assertHttpError(await post(room, tok, body), 400, 'invalid_payload')
    }
    const raw = await http(messagesUrl(room), {
      method: 'POST',
      token: tok,
      raw: '{"message": ',
      headers: { 'content-type': 'application/json' },
    })
    assertHttpError(raw, 400, 'invalid_payload')
    const empty = await get(room, tok)
    assert.deepEqual(empty.body.messages, [])
  })

  test('413 too_large: text over 4000 characters', async () => {
    const room = uniqueRoom('large')
    assertHttpError(await post(room, userToken(ids(1)[0]), { message: 'z'.repeat(4001) }), 413, 'too_large')
  })
})
