// CONTRACT §5 "Auth shim", §3 (private-/presence- rooms), §7 "Pusher" and
// "Events" (presence members), design3 "Auth shim": joining private-X /
// presence-X makes the server ask the app's legacy auth route, here the fake
// Next.js app (test/fake-next-app.mjs) signing with the real `pusher` SDK.
import assert from 'node:assert/strict'
import { after, afterEach, before, describe, test } from 'node:test'
import {
  closeSockets,
  connect,
  connectError,
  emitAck,
  expectNone,
  http,
  join,
  send,
  startServer,
  stopServers,
  uniqueRoom,
  userToken,
  waitFor,
} from './helpers.mjs'
import { ALICE, CAROL, startFakeApp } from './fake-next-app.mjs'
import { RELAXED_LIMITS, pusherEnv, pusherFor, sdkCall } from './pusher-helpers.mjs'

const DM = 'private-chat-5-12'
const SOCKET_ID_RE = /^\d+\.\d+$/
const JOIN_MS = 4000

let app
let srv

before(async () => {
  app = await startFakeApp()
  srv = await startServer({ env: pusherEnv({ authEndpoint: app.authUrl }) })
})
afterEach(() => {
  closeSockets()
  app.reset()
})
after(async () => {
  await stopServers()
  await app?.close()
})

/**
 * Connects as legacy user `uid` with the JWT (sub = uid, a number) and, unless
 * `cookie: null`, the legacy session cookie in the handshake. Node clients need
 * `extraHeaders` for that; the polling transport is the default here.
 */
function asUser(uid, { cookie = `uid=${uid}`, transports = ['polling'], url = srv.url, tok, headers = {}, ...opts } = {}) {
  const extraHeaders = { ...headers, ...(cookie ? { Cookie: cookie } : {}) }
  return connect(url, {
    token: tok ?? userToken(uid),
    transports,
    ...(Object.keys(extraHeaders).length ? { extraHeaders } : {}),
    ...opts,
  })
}

const joinAck = (s, roomId, ms = JOIN_MS) => emitAck(s, 'join-room', { roomId }, ms)
const byUserId = (members) => [...members].sort((x, y) => String(x.userId).localeCompare(String(y.userId)))
const onlineOf = (e) => ({ roomId: e.roomId, userId: e.userId, online: e.online })
// channel_data's user_id "5" is the number 5 again (PUSHER_USER_ID_TYPE=auto, the default)
const aliceMember = { userId: 5, username: ALICE.username, fullName: ALICE.fullName }
const carolMember = { userId: 12, username: CAROL.username, fullName: CAROL.fullName }

function assertError(ack, code, what) {
  assert.equal(ack?.ok, false, `${what}: expected ok:false, got ${JSON.stringify(ack)}`)
  assert.equal(ack.error?.code, code, `${what}: expected ${code}, got ${JSON.stringify(ack)}`)
  assert.equal(typeof ack.error.message, 'string', `${what}: error.message must be a string`)
}

/** A send into a room the socket was refused: it is not in the room (not_joined, or forbidden). */
async function assertNotIn(s, roomId, what) {
  const ack = await emitAck(s, 'send-message', { roomId, message: 'x' })
  assert.equal(ack?.ok, false, `${what}: ${JSON.stringify(ack)}`)
  assert.ok(['not_joined', 'forbidden'].includes(ack.error?.code), `${what}: ${JSON.stringify(ack)}`)
}

describe('auth shim: private rooms', () => {
  for (const transports of [['polling'], ['websocket']]) {
    test(`uid=5 joins ${DM}; the app gets one form post with the session socket id, the cookie and a Bearer JWT [${transports}]`, async () => {
      const tok = userToken(5)
      const s = await asUser(5, { transports, tok, cookie: 'theme=dark; uid=5' })
      const { socketId } = await s.session
      assert.match(socketId, SOCKET_ID_RE)
      const ack = await joinAck(s, DM)
      assert.equal(ack.ok, true, JSON.stringify(ack))
      assert.equal(ack.roomId, DM)
      assert.ok(Array.isArray(ack.members) && Array.isArray(ack.history), JSON.stringify(ack))

      const mine = app.requestsFor((f) => f.socket_id === socketId)
      assert.equal(mine.length, 1, `one auth request per join, got ${JSON.stringify(app.requests)}`)
      const r = mine[0]
      assert.equal(r.method, 'POST')
      assert.equal(r.url, '/api/pusher/auth')
      assert.match(String(r.headers['content-type']), /^application\/x-www-form-urlencoded/i)
      assert.deepEqual(Object.keys(r.form).sort(), ['channel_name', 'socket_id'], `body: ${r.body}`)
      assert.deepEqual(r.form, { socket_id: socketId, channel_name: DM })
      // the handshake's Cookie is forwarded as is; no Authorization in the
      // handshake -> the connection's JWT as a Bearer token
      assert.equal(r.headers.cookie, 'theme=dark; uid=5')
      assert.equal(r.headers.authorization, `Bearer ${tok}`)
      // admitted for real: messages flow in the room
      const m = await send(s, DM, 'hello carol')
      assert.equal(m.roomId, DM)
      assert.equal(m.userId, 5)
    })
  }

  test(`uid=7 (bob) is refused ${DM} -> forbidden; the connection stays`, async () => {
    const s = await asUser(7)
    const { socketId } = await s.session
    const ack = await joinAck(s, DM)
    assertError(ack, 'forbidden', `bob joining ${DM}`)
    assert.equal(app.requestsFor((f) => f.socket_id === socketId && f.channel_name === DM).length, 1)
    await assertNotIn(s, DM, 'send after refusal')
    assert.equal(s.connected, true)
    await join(s, uniqueRoom('after_forbidden'))
  })

  test('no cookie: the shim sends Authorization: Bearer <the connection JWT> and no Cookie', async () => {
    const tok = userToken(12)
    const s = await asUser(12, { cookie: null, tok })
    const { socketId } = await s.session
    const ack = await joinAck(s, DM)
    assert.equal(ack.ok, true, JSON.stringify(ack))
    const [r] = await app.waitForRequests(1, 1000, (f) => f.socket_id === socketId)
    assert.equal(r.headers.authorization, `Bearer ${tok}`)
    assert.equal(r.headers.cookie, undefined)
    assert.deepEqual(r.form, { socket_id: socketId, channel_name: DM })
  })

  test('no cookie, bob by Bearer JWT -> forbidden (the app decides with the forwarded token)', async () => {
    const s = await asUser(7, { cookie: null })
    assertError(await joinAck(s, DM), 'forbidden', 'bob by bearer')
  })

  test("a handshake Authorization header (the client's token) is forwarded", async () => {
    const tok = userToken(5)
    // token only in the header (CONTRACT §2), no auth payload
    const s = await connect(srv.url, { transports: ['polling'], extraHeaders: { Authorization: `Bearer ${tok}` } })
    const { socketId, userId } = await s.session
    assert.equal(userId, 5)
    const ack = await joinAck(s, DM)
    assert.equal(ack.ok, true, JSON.stringify(ack))
    const [r] = await app.waitForRequests(1, 1000, (f) => f.socket_id === socketId)
    assert.equal(r.headers.authorization, `Bearer ${tok}`)
  })

  test('a second tab asks again with its own socket id; both tabs get the room traffic', async () => {
    const carol = await asUser(12)
    await join(carol, DM)
    const a1 = await asUser(5)
    const a2 = await asUser(5)
    const id1 = (await a1.session).socketId
    const id2 = (await a2.session).socketId
    assert.notEqual(id1, id2)
    assert.equal((await joinAck(a1, DM)).ok, true)
    assert.equal((await joinAck(a2, DM)).ok, true)
    const forDm = app.requestsFor((f) => f.channel_name === DM && (f.socket_id === id1 || f.socket_id === id2))
    assert.deepEqual(forDm.map((r) => r.form.socket_id).sort(), [id1, id2].sort())
    // joining again a room already joined answers ok (CONTRACT §7); it may or may not ask again
    const got1 = waitFor(a1, 'new-message', (m) => m.message === 'to both tabs')
    const got2 = waitFor(a2, 'new-message', (m) => m.message === 'to both tabs')
    await send(carol, DM, 'to both tabs')
    assert.equal((await got1).userId, 12)
    assert.equal((await got2).userId, 12)
  })

  test('a signature made with another secret -> forbidden; another key -> forbidden; then a good one -> ok', async () => {
    const s = await asUser(5)
    app.mode = 'wrong-signature'
    assertError(await joinAck(s, DM), 'forbidden', 'wrong secret')
    app.mode = 'wrong-key'
    assertError(await joinAck(s, DM), 'forbidden', 'wrong key')
    await assertNotIn(s, DM, 'send after refusal')
    app.mode = 'ok'
    assert.equal((await joinAck(s, DM)).ok, true)
  })

  test('a wrongly signed presence answer -> forbidden', async () => {
    const s = await asUser(5)
    app.mode = 'wrong-signature'
    assertError(await joinAck(s, uniqueRoom('presence-badsig')), 'forbidden', 'presence wrong secret')
  })

  for (const status of [401, 404]) {
    test(`a ${status} from the app -> forbidden`, async () => {
      const s = await asUser(5)
      app.mode = 'status'
      app.status = status
      assertError(await joinAck(s, DM), 'forbidden', `status ${status}`)
    })
  }

  test('a 500 from the app -> internal, message starting "auth endpoint failed"; the connection stays', async () => {
    const s = await asUser(5)
    app.mode = 'error500'
    const ack = await joinAck(s, DM)
    assertError(ack, 'internal', '500')
    assert.ok(ack.error.message.startsWith('auth endpoint failed'), `message: ${JSON.stringify(ack.error.message)}`)
    assert.equal(s.connected, true)
    app.mode = 'ok'
    assert.equal((await joinAck(s, DM)).ok, true)
  })

  test('a slow app (> 5 s) -> internal within ~6 s; the socket stays usable and is not admitted later', async () => {
    const carol = await asUser(12)
    await join(carol, DM)
    const s = await asUser(5)
    app.mode = 'slow'
    app.delayMs = 7000
    const t0 = Date.now()
    const ack = await joinAck(s, DM, 6500)
    const elapsed = Date.now() - t0
    assertError(ack, 'internal', 'slow endpoint')
    assert.ok(ack.error.message.startsWith('auth endpoint failed'), `message: ${JSON.stringify(ack.error.message)}`)
    assert.ok(elapsed >= 4000, `timed out after only ${elapsed} ms (contract: 5 s)`)
    assert.equal(s.connected, true)
    const room = uniqueRoom('after_timeout')
    await join(s, room)
    await send(s, room, 'still here')
    // the late answer (at 7 s) must not admit the socket afterwards
    const quiet = expectNone(s, 'new-message', 2000, (m) => m.roomId === DM)
    await new Promise((r) => setTimeout(r, 1200))
    await send(carol, DM, 'after the late answer')
    await quiet
    await assertNotIn(s, DM, 'timed-out join')
  })

  test('one auth request per join, nothing cached: join, leave, join asks twice with the same socket id', async () => {
    const s = await asUser(5)
    const { socketId } = await s.session
    assert.equal((await joinAck(s, DM)).ok, true)
    assert.equal((await emitAck(s, 'leave-room', { roomId: DM })).ok, true)
    assert.equal((await joinAck(s, DM)).ok, true)
    assert.equal(app.requestsFor((f) => f.socket_id === socketId && f.channel_name === DM).length, 2)
    // the app changes its mind (e.g. the user was blocked): the next join is refused
    assert.equal((await emitAck(s, 'leave-room', { roomId: DM })).ok, true)
    app.mode = 'status'
    app.status = 403
    assertError(await joinAck(s, DM), 'forbidden', 'no cached admission')
  })

  // 2xx answers that are not a valid authorization for THIS socket and channel
  const badAnswers = {
    'an empty JSON object': () => [200, {}],
    'a non-JSON body': () => [200, 'ok'],
    'auth without the key prefix': ({ form, sdk }) => [200, { auth: sdk.authorizeChannel(form.socket_id, form.channel_name).auth.split(':')[1] }],
    'a signature for another socket id': ({ form, sdk }) => [200, sdk.authorizeChannel('1234.5678', form.channel_name)],
    'a signature for another channel': ({ form, sdk }) => [200, sdk.authorizeChannel(form.socket_id, 'private-chat-5-7')],
  }
  for (const [what, answer] of Object.entries(badAnswers)) {
    test(`a 2xx with ${what} -> forbidden`, async () => {
      const s = await asUser(5)
      app.mode = 'custom'
      app.custom = answer
      assertError(await joinAck(s, DM), 'forbidden', what)
      await assertNotIn(s, DM, what)
    })
  }

  test('presence: channel_data changed after signing -> forbidden; a presence answer without channel_data -> forbidden', async () => {
    const s = await asUser(5)
    const room = uniqueRoom('presence-tamper')
    app.mode = 'custom'
    app.custom = ({ form, sdk }) => {
      const signed = sdk.authorizeChannel(form.socket_id, form.channel_name, { user_id: '5', user_info: { username: 'alice' } })
      return [200, { ...signed, channel_data: JSON.stringify({ user_id: '1', user_info: { username: 'admin' } }) }]
    }
    assertError(await joinAck(s, room), 'forbidden', 'tampered channel_data')
    app.custom = ({ form, sdk }) => [200, sdk.authorizeChannel(form.socket_id, form.channel_name)]
    assertError(await joinAck(s, room), 'forbidden', 'presence without channel_data')
  })

  test('REST on a private room runs the shim with a fresh socket id and the request Cookie/Authorization', async () => {
    const carol = await asUser(12)
    await join(carol, DM)
    const tok = userToken(5)
    const url = `${srv.url}/api/rooms/${encodeURIComponent(DM)}/messages`
    const got = await http(url, { token: tok, headers: { cookie: 'uid=5' } })
    assert.equal(got.status, 200, got.text)
    assert.ok(Array.isArray(got.body?.messages), got.text)
    const r = app.requests.at(-1)
    assert.equal(r?.form.channel_name, DM, JSON.stringify(app.requests))
    assert.match(r.form.socket_id, SOCKET_ID_RE)
    assert.equal(r.headers.cookie, 'uid=5')
    assert.equal(r.headers.authorization, `Bearer ${tok}`)

    const seen = waitFor(carol, 'new-message', (m) => m.message === 'over http')
    const post = await http(url, { method: 'POST', token: tok, headers: { cookie: 'uid=5' }, body: { message: 'over http' } })
    assert.equal(post.status, 201, post.text)
    assert.equal((await seen).userId, 5)

    const bob = await http(url, { token: userToken(7), headers: { cookie: 'uid=7' } })
    assert.equal(bob.status, 403, bob.text)
    assert.equal(bob.body?.error?.code, 'forbidden')
    const bobPost = await http(url, { method: 'POST', token: userToken(7), headers: { cookie: 'uid=7' }, body: { message: 'no' } })
    assert.equal(bobPost.status, 403, bobPost.text)
  })
})

describe('auth shim: presence rooms', () => {
  test('presence-online: members are { userId: channel_data.user_id (typed), ...user_info }; user-online uses that id', async () => {
    const room = 'presence-online'
    const carol = await asUser(12)
    const cAck = await joinAck(carol, room)
    assert.equal(cAck.ok, true, JSON.stringify(cAck))
    assert.deepEqual(cAck.members, [carolMember])

    const alice = await asUser(5)
    const { socketId } = await alice.session
    const online = waitFor(carol, 'user-online', (e) => e.roomId === room && e.online === true)
    const selfNone = expectNone(alice, 'user-online', 600, (e) => e.roomId === room)
    const aAck = await joinAck(alice, room)
    assert.equal(aAck.ok, true, JSON.stringify(aAck))
    assert.deepEqual(byUserId(aAck.members), byUserId([carolMember, aliceMember]))
    assert.deepEqual(onlineOf(await online), { roomId: room, userId: 5, online: true })
    await selfNone
    const mine = app.requestsFor((f) => f.socket_id === socketId)
    assert.deepEqual(
      mine.map((r) => r.form),
      [{ socket_id: socketId, channel_name: room }],
    )
    assert.match(String(mine[0].headers['content-type']), /^application\/x-www-form-urlencoded/i)

    // the last socket going away -> online:false with the same id
    const offline = waitFor(carol, 'user-online', (e) => e.roomId === room && e.online === false, 3000)
    alice.close()
    assert.deepEqual(onlineOf(await offline), { roomId: room, userId: 5, online: false })
  })

  test('user_id comes from channel_data (not the token); new-message/typing still carry the token user id', async () => {
    app.presenceUserId = (u) => `user-${u.id}`
    const room = uniqueRoom('presence-ids')
    const carol = await asUser(12)
    await join(carol, room)
    const alice = await asUser(5)
    const online = waitFor(carol, 'user-online', (e) => e.roomId === room && e.online === true)
    const aAck = await joinAck(alice, room)
    assert.equal(aAck.ok, true, JSON.stringify(aAck))
    assert.deepEqual(
      byUserId(aAck.members),
      byUserId([
        { ...carolMember, userId: 'user-12' },
        { ...aliceMember, userId: 'user-5' },
      ]),
    )
    assert.deepEqual(onlineOf(await online), { roomId: room, userId: 'user-5', online: true })

    const msg = waitFor(carol, 'new-message', (m) => m.roomId === room)
    const sent = await send(alice, room, 'hi presence')
    assert.equal(sent.userId, 5)
    assert.equal((await msg).userId, 5)
    const typing = waitFor(carol, 'typing', (e) => e.roomId === room)
    assert.equal((await emitAck(alice, 'typing', { roomId: room, isTyping: true })).ok, true)
    const t = await typing
    assert.equal(t.userId, 5)
    assert.equal(t.isTyping, true)
  })

  test('two tabs in a presence room: two auth requests, one member entry, one online/offline pair', async () => {
    const room = uniqueRoom('presence-tabs')
    const carol = await asUser(12)
    await join(carol, room)
    const a1 = await asUser(5)
    const a2 = await asUser(5)
    const id1 = (await a1.session).socketId
    const id2 = (await a2.session).socketId
    const on = waitFor(carol, 'user-online', (e) => e.roomId === room && e.online)
    await join(a1, room)
    await on
    const quiet = expectNone(carol, 'user-online', 700, (e) => e.roomId === room)
    const ack2 = await joinAck(a2, room)
    assert.equal(ack2.ok, true, JSON.stringify(ack2))
    assert.deepEqual(byUserId(ack2.members), byUserId([carolMember, aliceMember]))
    await quiet
    assert.deepEqual(
      app
        .requestsFor((f) => f.channel_name === room && f.socket_id !== undefined)
        .map((r) => r.form.socket_id)
        .filter((id) => id === id1 || id === id2)
        .sort(),
      [id1, id2].sort(),
    )
    const quiet2 = expectNone(carol, 'user-online', 700, (e) => e.roomId === room)
    assert.equal((await emitAck(a1, 'leave-room', { roomId: room })).ok, true)
    await quiet2
    const off = waitFor(carol, 'user-online', (e) => e.roomId === room && e.online === false)
    assert.equal((await emitAck(a2, 'leave-room', { roomId: room })).ok, true)
    assert.deepEqual(onlineOf(await off), { roomId: room, userId: 5, online: false })
  })
})

describe('auth shim off', () => {
  test('PUSHER_AUTH_ENDPOINT unset (Pusher API on) -> private-/presence- joins are forbidden, nobody is asked', async () => {
    const other = await startServer({ env: pusherEnv() })
    const s = await asUser(5, { url: other.url })
    assertError(await joinAck(s, DM), 'forbidden', 'private without endpoint')
    assertError(await joinAck(s, 'presence-online'), 'forbidden', 'presence without endpoint')
    assert.equal(app.requests.length, 0, JSON.stringify(app.requests))
    await join(s, uniqueRoom('public_still_ok'))
    await other.stop()
  })

  test('no PUSHER_* at all -> private-/presence- joins are forbidden', async () => {
    const other = await startServer({ env: RELAXED_LIMITS })
    const s = await asUser(5, { url: other.url })
    assertError(await joinAck(s, DM), 'forbidden', 'private without pusher')
    assertError(await joinAck(s, uniqueRoom('presence-x')), 'forbidden', 'presence without pusher')
    assert.equal(app.requests.length, 0, JSON.stringify(app.requests))
    await other.stop()
  })
})

/**
 * A connection with NO token, only the legacy app's session cookie, as the
 * migrated hook makes it (`io({ withCredentials: true })` behind the app's rewrite).
 */
function bySession(cookie, { url = srv.url, transports = ['polling'], ...opts } = {}) {
  return connect(url, { transports, ...(cookie ? { extraHeaders: { Cookie: cookie } } : {}), ...opts })
}

describe('identity from the app session (no token)', () => {
  for (const transports of [['polling'], ['websocket']]) {
    test(`Cookie uid=5 and no token -> user 5 (a number), asked about presence-online with this socket id [${transports}]`, async () => {
      const s = await bySession('theme=dark; uid=5', { transports })
      const { socketId, userId } = await s.session
      assert.equal(userId, 5)
      assert.match(socketId, SOCKET_ID_RE)
      const [r] = app.requestsFor((f) => f.socket_id === socketId)
      assert.ok(r, JSON.stringify(app.requests))
      assert.deepEqual(r.form, { socket_id: socketId, channel_name: 'presence-online' })
      assert.equal(r.headers.cookie, 'theme=dark; uid=5')
      assert.equal(r.headers.authorization, undefined, 'no token: no Bearer stands in')
      // the connection is alice everywhere: DM access, sender and profile of her messages
      assert.equal((await joinAck(s, DM)).ok, true)
      const m = await send(s, DM, 'from the session')
      assert.equal(m.userId, 5)
      assert.equal(m.username, ALICE.username)
      assert.equal(m.fullName, ALICE.fullName)
      assert.equal((await joinAck(s, 'chat-5-12')).ok, true)
      assertError(await joinAck(s, 'chat-7-12'), 'forbidden', "someone else's DM")
    })
  }

  test('a token wins over the cookie: the endpoint is not asked at connect time', async () => {
    const s = await asUser(12, { cookie: 'uid=5' })
    const { socketId, userId } = await s.session
    assert.equal(userId, 12)
    assert.equal(app.requestsFor((f) => f.socket_id === socketId).length, 0)
  })

  test('refusals are connect_error "unauthorized: …"; an endpoint failure says "auth endpoint failed"', async () => {
    for (const [cookie, mode] of [
      [null, 'ok'],
      ['uid=99', 'ok'],
      ['uid=5', 'wrong-signature'],
      ['uid=5', 'status'],
    ]) {
      app.mode = mode
      const err = await connectError(srv.url, { transports: ['polling'], ...(cookie ? { extraHeaders: { Cookie: cookie } } : {}) })
      assert.match(err.message, /^unauthorized: /, `${cookie} ${mode}: ${err.message}`)
      assert.doesNotMatch(err.message, /auth endpoint failed/, `${cookie} ${mode}: ${err.message}`)
    }
    app.mode = 'error500'
    const err = await connectError(srv.url, { transports: ['polling'], extraHeaders: { Cookie: 'uid=5' } })
    assert.match(err.message, /^unauthorized: auth endpoint failed/)
    app.mode = 'custom'
    app.custom = ({ form, sdk }) => [200, sdk.authorizeChannel(form.socket_id, form.channel_name)]
    const none = await connectError(srv.url, { transports: ['polling'], extraHeaders: { Cookie: 'uid=5' } })
    assert.match(none.message, /^unauthorized: .*channel_data/, 'no channel_data names nobody')
  })

  test('ids that are not canonical decimals stay strings; PUSHER_USER_ID_TYPE=string keeps "5"', async () => {
    app.presenceUserId = (u) => `user-${u.id}`
    assert.equal((await (await bySession('uid=5')).session).userId, 'user-5')
    app.presenceUserId = (u) => `0${u.id}`
    assert.equal((await (await bySession('uid=5')).session).userId, '05')
    app.reset()
    const strings = await startServer({ env: { ...pusherEnv({ authEndpoint: app.authUrl }), PUSHER_USER_ID_TYPE: 'string' } })
    const s = await bySession('uid=5', { url: strings.url })
    assert.equal((await s.session).userId, '5')
    const off = await startServer({ env: { ...pusherEnv({ authEndpoint: app.authUrl }), PUSHER_IDENTITY_CHANNEL: '' } })
    const err = await connectError(off.url, { transports: ['polling'], extraHeaders: { Cookie: 'uid=5' } })
    assert.equal(err.message, 'unauthorized: missing token')
    await strings.stop()
    await off.stop()
  })
})

describe('presence in Pusher\'s member shape', () => {
  test('join ack carries presence { count, ids, hash }; pusher:member_added / member_removed beside user-online', async () => {
    const room = uniqueRoom('presence-shape')
    const carol = await bySession('uid=12')
    const cAck = await joinAck(carol, room)
    assert.deepEqual(cAck.presence, {
      count: 1,
      ids: ['12'],
      hash: { 12: { username: CAROL.username, fullName: CAROL.fullName } },
    })
    const alice = await bySession('uid=5')
    const added = waitFor(carol, 'pusher:member_added', (e) => e.roomId === room)
    const online = waitFor(carol, 'user-online', (e) => e.roomId === room && e.online)
    const selfNone = expectNone(alice, 'pusher:member_added', 600, (e) => e.roomId === room)
    const aAck = await joinAck(alice, room)
    assert.equal(aAck.presence.count, 2)
    assert.deepEqual([...aAck.presence.ids].sort(), ['12', '5'])
    assert.deepEqual(aAck.presence.hash['5'], { username: ALICE.username, fullName: ALICE.fullName })
    assert.deepEqual(await added, { roomId: room, id: '5', info: { username: ALICE.username, fullName: ALICE.fullName } })
    assert.equal((await online).userId, 5)
    await selfNone

    // a second tab adds nobody; the last socket out removes alice
    const tab = await bySession('uid=5')
    const quiet = expectNone(carol, 'pusher:member_added', 600, (e) => e.roomId === room)
    await join(tab, room)
    await quiet
    const stillThere = expectNone(carol, 'pusher:member_removed', 600, (e) => e.roomId === room)
    alice.close()
    await stillThere
    const removed = waitFor(carol, 'pusher:member_removed', (e) => e.roomId === room, 3000)
    tab.close()
    assert.deepEqual(await removed, { roomId: room, id: '5', info: { username: ALICE.username, fullName: ALICE.fullName } })
  })

  test('ordinary and private rooms have no presence field and no pusher:member_* events', async () => {
    const carol = await bySession('uid=12')
    const alice = await bySession('uid=5')
    assert.equal('presence' in (await joinAck(carol, DM)), false)
    const none = expectNone(carol, 'pusher:member_added', 600)
    const ack = await joinAck(alice, DM)
    assert.equal(ack.ok, true)
    assert.equal('presence' in ack, false)
    await none
  })
})

describe('stored triggers from the legacy backend (real pusher SDK)', () => {
  /** What the legacy /api/pusher/message route triggers for alice: her browser's message plus session fields. */
  const legacyMessage = (text) => ({
    id: `temp-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`,
    message: text,
    type: 'message',
    timestamp: Date.now(),
    userId: ALICE.id,
    username: ALICE.username,
    fullName: ALICE.fullName,
  })

  test('pusher.trigger(new-message, {socket_id}) is stored, reaches the others but not the excluded socket, once', async () => {
    const alice = await bySession('uid=5')
    const carol = await bySession('uid=12')
    const { socketId } = await alice.session
    await join(alice, DM)
    await join(carol, DM)
    const data = legacyMessage('stored by the backend')
    const got = waitFor(carol, 'new-message', (m) => m.clientId === data.id)
    const notMe = expectNone(alice, 'new-message', 800, (m) => m.clientId === data.id)
    const pusher = pusherFor(srv)
    const res = await sdkCall(pusher.trigger(DM, 'new-message', data, { socket_id: socketId }))
    assert.equal(res.status, 200, res.text)
    const m = await got
    assert.ok(/^[1-9]\d*$/.test(m.id), `server id, got ${JSON.stringify(m)}`)
    assert.equal(m.clientId, data.id)
    assert.equal(m.roomId, DM)
    assert.equal(m.userId, 5)
    assert.equal(m.username, ALICE.username)
    assert.equal(m.fullName, ALICE.fullName)
    assert.equal(m.message, 'stored by the backend')
    assert.equal(m.type, 'message')
    assert.equal(typeof m.timestamp, 'number')
    await notMe

    // the backend retries the same trigger: nothing new is stored or sent
    const again = expectNone(carol, 'new-message', 800, (x) => x.clientId === data.id)
    assert.equal((await sdkCall(pusher.trigger(DM, 'new-message', data, { socket_id: socketId }))).status, 200)
    await again

    // stored: in join-room history and GET …/messages, once, with the server id
    const later = await bySession('uid=12')
    const hist = (await joinAck(later, DM)).history.filter((x) => x.clientId === data.id)
    assert.deepEqual(hist.map((x) => x.id), [m.id])
    const url = `${srv.url}/api/rooms/${encodeURIComponent(DM)}/messages`
    const page = await http(url, { token: userToken(12), headers: { cookie: 'uid=12' } })
    assert.equal(page.status, 200, page.text)
    const rows = page.body.messages.filter((x) => x.clientId === data.id)
    assert.equal(rows.length, 1, page.text)
    assert.equal(rows[0].id, m.id)
    assert.equal(rows[0].userId, 5)
  })

  test('invalid stored data -> 400 and nothing delivered; other event names are relayed unstored', async () => {
    const carol = await bySession('uid=12')
    await join(carol, DM)
    const pusher = pusherFor(srv)
    const none = expectNone(carol, 'new-message', 800)
    const noSender = { ...legacyMessage('x'), userId: undefined }
    for (const bad of [noSender, { ...legacyMessage(''), message: '' }, { ...legacyMessage('x'), type: 'video' }, 'plain text']) {
      const res = await sdkCall(pusher.trigger(DM, 'new-message', bad))
      assert.equal(res.status, 400, `${JSON.stringify(bad)}: ${res.status} ${res.text}`)
    }
    await none
    const typing = waitFor(carol, 'typing', (e) => e.userId === 5)
    assert.equal((await sdkCall(pusher.trigger(DM, 'typing', { userId: 5, isTyping: true }))).status, 200)
    assert.deepEqual(await typing, { userId: 5, isTyping: true })
  })
})

describe('cross-site: join-room with the auth answer the browser fetched itself', () => {
  /** What pusher-js's authorizer does in the browser: POST the app's own route with its cookie. */
  async function fetchAuth(cookie, socketId, channel) {
    const r = await http(app.authUrl, {
      method: 'POST',
      headers: { cookie, 'content-type': 'application/x-www-form-urlencoded' },
      raw: new URLSearchParams({ socket_id: socketId, channel_name: channel }).toString(),
    })
    return r
  }

  test('no PUSHER_AUTH_ENDPOINT: { roomId, auth, channel_data } from the real SDK admits, checked against this socket id', async () => {
    const cross = await startServer({ env: pusherEnv() })
    const alice = await asUser(5, { url: cross.url, cookie: null })
    const carol = await asUser(12, { url: cross.url, cookie: null })
    const { socketId } = await alice.session
    const room = uniqueRoom('presence-cross')

    const answer = await fetchAuth('uid=5', socketId, room)
    assert.equal(answer.status, 200, answer.text)
    const cSid = (await carol.session).socketId
    const cAnswer = (await fetchAuth('uid=12', cSid, room)).body
    assert.equal((await emitAck(carol, 'join-room', { roomId: room, ...cAnswer }, JOIN_MS)).ok, true)
    const added = waitFor(carol, 'pusher:member_added', (e) => e.roomId === room)
    const ack = await emitAck(alice, 'join-room', { roomId: room, ...answer.body }, JOIN_MS)
    assert.equal(ack.ok, true, JSON.stringify(ack))
    assert.deepEqual(byUserId(ack.members), byUserId([carolMember, aliceMember]))
    assert.equal((await added).id, '5')

    const dm = (await fetchAuth('uid=5', socketId, DM)).body
    assert.equal((await emitAck(alice, 'join-room', { roomId: DM, ...dm }, JOIN_MS)).ok, true)
    // replayed by another socket, or for another room: refused
    assertError(await emitAck(carol, 'join-room', { roomId: DM, ...dm }, JOIN_MS), 'forbidden', 'another socket id')
    assertError(await emitAck(alice, 'join-room', { roomId: 'private-chat-5-7', ...dm }, JOIN_MS), 'forbidden', 'another channel')
    assertError(await joinAck(alice, 'private-chat-5-7'), 'forbidden', 'no auth, no endpoint')
    assertError(await emitAck(alice, 'join-room', { roomId: DM, auth: 42 }), 'invalid_payload', 'auth not a string')
    assert.equal(app.requests.length, 3, 'only the browser asked the app, never the server')
    await cross.stop()
  })
})
