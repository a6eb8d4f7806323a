// CONTRACT §3 (group-N rooms), §6 (group membership written by the app's
// backend, signed like the Pusher HTTP API), design3 "Groups":
// PUT / DELETE /apps/{app_id}/groups/{N}/members/{userId} -> 200 { ok, member }.
import assert from 'node:assert/strict'
import { after, afterEach, before, describe, test } from 'node:test'
import {
  closeSockets,
  connect,
  connectAs,
  emitAck,
  expectNone,
  http,
  ids,
  join,
  send,
  startServer,
  stopServers,
  userToken,
  waitFor,
} from './helpers.mjs'
import { APP_ID, groupMember, nowSecs, pusherEnv, uniqueGroup } from './pusher-helpers.mjs'

let srv
before(async () => {
  srv = await startServer({ env: pusherEnv() })
})
afterEach(closeSockets)
after(stopServers)

const restUrl = (room) => `${srv.url}/api/rooms/${encodeURIComponent(room)}/messages`

async function put(n, userId, opts) {
  const r = await groupMember(srv, 'PUT', n, userId, opts)
  assert.equal(r.status, 200, `PUT group ${n} member ${userId}: ${r.status} ${r.text}`)
  assert.deepEqual(r.body, { ok: true, member: true })
  return r
}
async function del(n, userId, opts) {
  const r = await groupMember(srv, 'DELETE', n, userId, opts)
  assert.equal(r.status, 200, `DELETE group ${n} member ${userId}: ${r.status} ${r.text}`)
  assert.deepEqual(r.body, { ok: true, member: false })
  return r
}
function assertAckError(ack, codes, what) {
  codes = [].concat(codes)
  assert.equal(ack?.ok, false, `${what}: ${JSON.stringify(ack)}`)
  assert.ok(codes.includes(ack.error?.code), `${what}: expected ${codes.join('|')}, got ${JSON.stringify(ack)}`)
}
async function assertRestForbidden(room, tok, what) {
  const get = await http(restUrl(room), { token: tok })
  assert.equal(get.status, 403, `${what} GET: ${get.status} ${get.text}`)
  assert.equal(get.body?.ok, false)
  assert.equal(get.body?.error?.code, 'forbidden', `${what} GET: ${get.text}`)
  const post = await http(restUrl(room), { method: 'POST', token: tok, body: { message: 'let me in' } })
  assert.equal(post.status, 403, `${what} POST: ${post.status} ${post.text}`)
  assert.equal(post.body?.error?.code, 'forbidden', `${what} POST: ${post.text}`)
}

describe('group membership', () => {
  test('non-members are forbidden on join-room, REST POST and REST GET of group-N', async () => {
    const n = uniqueGroup()
    const room = `group-${n}`
    const [u] = ids(1)
    const s = await connectAs(srv.url, u)
    assertAckError(await emitAck(s, 'join-room', { roomId: room }), 'forbidden', 'join as non-member')
    assertAckError(await emitAck(s, 'send-message', { roomId: room, message: 'x' }), ['not_joined', 'forbidden'], 'send as non-member')
    await assertRestForbidden(room, userToken(u), 'non-member')
  })

  test('PUT (signed with PUT) makes a member: join, send, REST POST and GET work; others stay out', async () => {
    const n = uniqueGroup()
    const room = `group-${n}`
    const [a, outsider] = ids(2)
    await put(n, a)
    await put(n, a) // idempotent
    const s = await connectAs(srv.url, a)
    const ack = await join(s, room)
    assert.equal(ack.roomId, room)
    assert.deepEqual(
      ack.members.map((m) => m.userId),
      [a],
    )
    const m1 = await send(s, room, 'hello group')
    assert.equal(m1.roomId, room)
    const tok = userToken(a)
    const echoed = waitFor(s, 'new-message', (m) => m.message === 'over rest')
    const post = await http(restUrl(room), { method: 'POST', token: tok, body: { message: 'over rest' } })
    assert.equal(post.status, 201, post.text)
    await echoed
    const get = await http(restUrl(room), { token: tok })
    assert.equal(get.status, 200, get.text)
    assert.deepEqual(
      get.body.messages.map((m) => m.message),
      ['hello group', 'over rest'],
    )
    const o = await connectAs(srv.url, outsider)
    assertAckError(await emitAck(o, 'join-room', { roomId: room }), 'forbidden', 'outsider join')
    await assertRestForbidden(room, userToken(outsider), 'outsider')
  })

  test('membership matches the string form of the user id; a PUT with a {} body (body_md5) works too', async () => {
    const n = uniqueGroup()
    const room = `group-${n}`
    const [u] = ids(1)
    await put(n, String(u), { body: {} })
    const asString = await connect(srv.url, { token: userToken(String(u)) })
    const asNumber = await connect(srv.url, { token: userToken(u) })
    await join(asString, room)
    await join(asNumber, room)
    // a non-numeric user id (e.g. a UUID) works the same way
    const uuid = `user-${Date.now().toString(36)}`
    await put(n, uuid)
    const su = await connect(srv.url, { token: userToken(uuid) })
    await join(su, room)
  })

  test('unsigned, wrongly signed, stale, or signed-as-another-method writes -> 401 and change nothing', async () => {
    const n = uniqueGroup()
    const room = `group-${n}`
    const [u] = ids(1)
    const bare = await http(`${srv.url}/apps/${APP_ID}/groups/${n}/members/${u}`, {
      method: 'PUT',
    })
    assert.equal(bare.status, 401, `unsigned: ${bare.status} ${bare.text}`)
    const cases = {
      'wrong secret': { secret: 'not-the-secret' },
      'unknown key': { key: 'unknown-key' },
      'stale timestamp': { timestamp: nowSecs() - 1000 },
      'signed as POST': { signMethod: 'POST' },
      'signed as DELETE': { signMethod: 'DELETE' },
    }
    for (const [what, opts] of Object.entries(cases)) {
      const r = await groupMember(srv, 'PUT', n, u, opts)
      assert.equal(r.status, 401, `${what}: ${r.status} ${r.text}`)
    }
    const s = await connectAs(srv.url, u)
    assertAckError(await emitAck(s, 'join-room', { roomId: room }), 'forbidden', 'after refused PUTs')

    // and a refused DELETE leaves a real member in place
    await put(n, u)
    const r = await groupMember(srv, 'DELETE', n, u, { signMethod: 'PUT' })
    assert.equal(r.status, 401, `DELETE signed as PUT: ${r.status} ${r.text}`)
    await join(s, room)
  })

  test('an unknown app id -> 404', async () => {
    const r = await groupMember(srv, 'PUT', uniqueGroup(), ids(1)[0], { appId: '999999' })
    assert.equal(r.status, 404, `${r.status} ${r.text}`)
  })

  test('DELETE of a non-member answers 200 { ok: true, member: false }', async () => {
    await del(uniqueGroup(), ids(1)[0])
  })

  test('DELETE takes the member out at once: others get user-online false; the removed tabs get nothing and are refused', async () => {
    const n = uniqueGroup()
    const room = `group-${n}`
    const [a, b] = ids(2)
    await put(n, a)
    await put(n, b)
    const sa = await connectAs(srv.url, a)
    const b1 = await connectAs(srv.url, b)
    const b2 = await connectAs(srv.url, b)
    await join(sa, room)
    const on = waitFor(sa, 'user-online', (e) => e.roomId === room && e.userId === b && e.online)
    await join(b1, room)
    await join(b2, room)
    await on

    const off = waitFor(sa, 'user-online', (e) => e.roomId === room && e.userId === b && e.online === false)
    await del(n, b)
    assert.deepEqual(await off, { roomId: room, userId: b, online: false })

    // right after the 200: the removed user's sockets no longer get the room's messages
    const none1 = expectNone(b1, 'new-message', 800, (m) => m.roomId === room)
    const none2 = expectNone(b2, 'new-message', 800, (m) => m.roomId === room)
    const m = await send(sa, room, 'after removal')
    assert.equal(m.roomId, room)
    await none1
    await none2

    for (const [s, what] of [
      [b1, 'tab 1'],
      [b2, 'tab 2'],
    ]) {
      assertAckError(
        await emitAck(s, 'send-message', { roomId: room, message: 'still here?' }),
        ['not_joined', 'forbidden'],
        `removed ${what} send`,
      )
      assertAckError(await emitAck(s, 'join-room', { roomId: room }), 'forbidden', `removed ${what} re-join`)
      assert.equal(s.connected, true)
    }
    await assertRestForbidden(room, userToken(b), 'removed member')

    // the remaining member is unaffected
    const get = await http(restUrl(room), { token: userToken(a) })
    assert.equal(get.status, 200, get.text)
    assert.ok(get.body.messages.some((x) => x.message === 'after removal'))

    // and a PUT lets the user back in
    await put(n, b)
    const back = waitFor(sa, 'user-online', (e) => e.roomId === room && e.userId === b && e.online)
    await join(b1, room)
    await back
  })
})
