// CONTRACT §5 "HTTP API", §7 "Pusher" (statuses, terminate_connections,
// PUSHER_* unset -> 404), design3 "Pusher HTTP API": the official `pusher`
// server SDK (5.3.4) pointed at switchboard, plus hand-signed requests (same
// algorithm as the SDK's lib/requests.js) for what the SDK refuses to send.
import assert from 'node:assert/strict'
import { after, afterEach, before, describe, test } from 'node:test'
import {
  closeSockets,
  connect,
  connectAs,
  emitAck,
  expectNone,
  ids,
  join,
  receivedOf,
  sleep,
  startServer,
  stopServers,
  uniqueRoom,
  userToken,
  waitFor,
} from './helpers.mjs'
import { startFakeApp } from './fake-next-app.mjs'
import {
  RELAXED_LIMITS,
  groupMember,
  md5,
  nowSecs,
  pusherEnv,
  pusherFor,
  sdkCall,
  signedRequest,
} from './pusher-helpers.mjs'

let app
let srv
let pusher

before(async () => {
  app = await startFakeApp()
  srv = await startServer({ env: pusherEnv({ authEndpoint: app.authUrl }) })
  pusher = pusherFor(srv)
})
afterEach(() => {
  closeSockets()
  app.reset()
})
after(async () => {
  await stopServers()
  await app?.close()
})

/** Legacy user (5 alice, 7 bob, 12 carol) with the `uid` cookie, for private-/presence- rooms. */
function asUser(uid, { tok, ...opts } = {}) {
  return connect(srv.url, {
    token: tok ?? userToken(uid),
    transports: ['polling'],
    extraHeaders: { Cookie: `uid=${uid}` },
    ...opts,
  })
}
/** A fresh user joined to `rooms` (public rooms: no auth endpoint involved). */
async function member(...rooms) {
  const s = await connectAs(srv.url, ids(1)[0])
  for (const r of rooms) await join(s, r)
  return s
}
async function joinOk(s, roomId) {
  const ack = await emitAck(s, 'join-room', { roomId }, 4000)
  assert.equal(ack?.ok, true, `join ${roomId}: ${JSON.stringify(ack)}`)
  return ack
}
const ok200 = (r, what) => assert.equal(r.status, 200, `${what}: ${r.status} ${r.text}`)
const getJson = async (path, params) => {
  const r = await sdkCall(() => pusher.get({ path, params }))
  ok200(r, `GET ${path} ${JSON.stringify(params)}`)
  return r.body
}
const sortById = (users) => [...users].sort((a, b) => String(a.id).localeCompare(String(b.id)))

describe('trigger', () => {
  test('one channel: every socket in the room gets an event of that name, object data parsed; 200 {}', async () => {
    const room = uniqueRoom('trig')
    const a = await member(room)
    const b = await member(room)
    const outsider = await member(uniqueRoom('other'))
    const data = { id: 7, items: ['x', 'y'], nested: { ok: true }, text: 'héllo ✓' }
    const ga = waitFor(a, 'order-shipped')
    const gb = waitFor(b, 'order-shipped')
    const none = expectNone(outsider, 'order-shipped', 700)
    const r = await sdkCall(pusher.trigger(room, 'order-shipped', data))
    ok200(r, 'trigger')
    assert.deepEqual(r.body, {})
    assert.deepEqual(await ga, data)
    assert.deepEqual(await gb, data)
    await none
    await sleep(200)
    assert.equal(receivedOf(a, 'order-shipped').length, 1, 'delivered exactly once')
  })

  test('a plain non-JSON string stays a string; a JSON string arrives parsed', async () => {
    const room = uniqueRoom('strings')
    const s = await member(room)
    const plain = waitFor(s, 'note')
    ok200(await sdkCall(pusher.trigger(room, 'note', 'hello there, not json')), 'plain')
    assert.equal(await plain, 'hello there, not json')
    const parsed = waitFor(s, 'obj')
    ok200(await sdkCall(pusher.trigger(room, 'obj', '{"a":[1,2],"b":"c"}')), 'json string')
    assert.deepEqual(await parsed, { a: [1, 2], b: 'c' })
  })

  test('several channels: each room gets the event; an untargeted room does not', async () => {
    const [r1, r2, r3] = [uniqueRoom('m1'), uniqueRoom('m2'), uniqueRoom('m3')]
    const s1 = await member(r1)
    const s2 = await member(r2)
    const s3 = await member(r3)
    const g1 = waitFor(s1, 'multi')
    const g2 = waitFor(s2, 'multi')
    const none = expectNone(s3, 'multi', 700)
    ok200(await sdkCall(pusher.trigger([r1, r2], 'multi', { n: 1 })), 'multi trigger')
    assert.deepEqual(await g1, { n: 1 })
    assert.deepEqual(await g2, { n: 1 })
    await none
  })

  test('channel names with = @ , . ; work end to end (trigger and GET /channels/{name})', async () => {
    const room = `odd=a@b,c.d;e_${Date.now().toString(36)}`
    const s = await member(room)
    const got = waitFor(s, 'odd-event')
    ok200(await sdkCall(pusher.trigger(room, 'odd-event', { odd: true })), 'trigger odd name')
    assert.deepEqual(await got, { odd: true })
    assert.deepEqual(await getJson(`/channels/${room}`, { info: 'subscription_count' }), {
      occupied: true,
      subscription_count: 1,
    })
  })

  test('a hand-signed event with `channel` (singular) instead of `channels`', async () => {
    const room = uniqueRoom('single')
    const s = await member(room)
    const got = waitFor(s, 'single-event')
    ok200(await signedRequest(srv, { subPath: '/events', body: { name: 'single-event', channel: room, data: '{"s":1}' } }), 'channel')
    assert.deepEqual(await got, { s: 1 })
  })

  test('socket_id (the session socketId) excludes that socket only, not the same user\'s other tab', async () => {
    const room = uniqueRoom('excl')
    const [uid] = ids(1)
    const a1 = await connectAs(srv.url, uid)
    const a2 = await connectAs(srv.url, uid)
    await join(a1, room)
    await join(a2, room)
    const b = await member(room)
    const { socketId } = await a1.session
    const g2 = waitFor(a2, 'excl-event')
    const gb = waitFor(b, 'excl-event')
    const none = expectNone(a1, 'excl-event', 800)
    ok200(await sdkCall(pusher.trigger(room, 'excl-event', { x: 1 }, { socket_id: socketId })), 'trigger socket_id')
    assert.deepEqual(await g2, { x: 1 })
    assert.deepEqual(await gb, { x: 1 })
    await none
  })

  test("the legacy app's call: trigger('private-chat-5-12', 'new-message', message, { socket_id }) is stored, then sent as stored", async () => {
    const DM = 'private-chat-5-12'
    const a1 = await asUser(5)
    const a2 = await asUser(5)
    const carol = await asUser(12)
    for (const s of [a1, a2, carol]) await joinOk(s, DM)
    const { socketId } = await a1.session
    // what src/app/api/pusher/message/route.ts builds
    const message = {
      id: `temp-${Date.now()}-abc123`,
      message: 'hi carol',
      timestamp: Date.now(),
      type: 'message',
      userId: 5,
      username: 'alice',
      fullName: 'Alice Martin',
    }
    // PUSHER_STORED_EVENTS defaults to new-message: what goes out is the stored message
    const gc = waitFor(carol, 'new-message', (m) => m.clientId === message.id)
    const g2 = waitFor(a2, 'new-message', (m) => m.clientId === message.id)
    const none = expectNone(a1, 'new-message', 800)
    const r = await sdkCall(pusher.trigger(DM, 'new-message', message, socketId ? { socket_id: socketId } : undefined))
    ok200(r, 'legacy trigger')
    const stored = await gc
    const { id, timestamp, ...rest } = stored
    assert.match(id, /^[1-9]\d*$/)
    assert.equal(typeof timestamp, 'number')
    assert.deepEqual(rest, {
      roomId: DM,
      userId: 5,
      username: 'alice',
      fullName: 'Alice Martin',
      clientId: message.id,
      message: 'hi carol',
      type: 'message',
    })
    assert.deepEqual(await g2, stored)
    await none
  })

  test('trigger with info=subscription_count answers the channel attributes', async () => {
    const room = uniqueRoom('info')
    await member(room)
    await member(room)
    const r = await sdkCall(pusher.trigger(room, 'with-info', {}, { info: 'subscription_count' }))
    ok200(r, 'trigger info')
    assert.deepEqual(r.body, { channels: { [room]: { subscription_count: 2 } } })
  })

  test('triggerBatch: each event to its channel with its name and data; socket_id per event', async () => {
    const [r1, r2] = [uniqueRoom('b1'), uniqueRoom('b2')]
    const s1 = await member(r1)
    const s1b = await member(r1)
    const s2 = await member(r2)
    const { socketId } = await s1.session
    const waits = [
      waitFor(s1, 'batch-one'),
      waitFor(s1b, 'batch-one'),
      waitFor(s1b, 'batch-three'),
      waitFor(s2, 'batch-two'),
    ]
    const r = await sdkCall(
      pusher.triggerBatch([
        { channel: r1, name: 'batch-one', data: { k: 1 } },
        { channel: r2, name: 'batch-two', data: 'plain text' },
        { channel: r1, name: 'batch-three', data: { k: 3 }, socket_id: socketId },
      ]),
    )
    ok200(r, 'triggerBatch')
    assert.deepEqual(r.body, {})
    const [one, oneB, threeB, two] = await Promise.all(waits)
    assert.deepEqual(one, { k: 1 })
    assert.deepEqual(oneB, { k: 1 })
    assert.deepEqual(threeB, { k: 3 })
    assert.equal(two, 'plain text')
    await sleep(500)
    assert.equal(receivedOf(s1, 'batch-three').length, 0, 'socket_id excluded in a batch')
    assert.equal(receivedOf(s2, 'batch-one').length, 0)
    assert.equal(receivedOf(s1, 'batch-two').length, 0)
  })

  test('10 batch events -> 200, all delivered; 11 -> 400, none delivered', async () => {
    const room = uniqueRoom('ten')
    const s = await member(room)
    const ten = Array.from({ length: 10 }, (_, i) => ({ channel: room, name: 'tenth', data: { i } }))
    ok200(await sdkCall(pusher.triggerBatch(ten)), '10 batch events')
    const deadline = Date.now() + 3000
    while (receivedOf(s, 'tenth').length < 10 && Date.now() < deadline) await sleep(50)
    assert.deepEqual(
      receivedOf(s, 'tenth').map((d) => d.i),
      [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    )
    const eleven = Array.from({ length: 11 }, (_, i) => ({ channel: room, name: 'eleventh', data: { i } }))
    const none = expectNone(s, 'eleventh', 700)
    const r = await sdkCall(pusher.triggerBatch(eleven))
    assert.equal(r.status, 400, `11 batch events: ${r.status} ${r.text}`)
    await none
  })
})

describe('channel queries', () => {
  test('GET /channels?filter_by_prefix=presence-&info=user_count counts users, not sockets', async () => {
    const p1 = uniqueRoom('presence-q1')
    const p2 = uniqueRoom('presence-q2')
    const pub = uniqueRoom('pubq')
    for (const s of [await asUser(5), await asUser(5), await asUser(12)]) await joinOk(s, p1)
    await joinOk(await asUser(7), p2)
    await member(pub)
    const body = await getJson('/channels', { filter_by_prefix: 'presence-', info: 'user_count' })
    assert.deepEqual(body.channels[p1], { user_count: 2 }, JSON.stringify(body))
    assert.deepEqual(body.channels[p2], { user_count: 1 }, JSON.stringify(body))
    for (const name of Object.keys(body.channels)) assert.ok(name.startsWith('presence-'), `unexpected ${name}`)
  })

  test('GET /channels lists occupied channels only ({} each); a left room disappears', async () => {
    const room = uniqueRoom('occ')
    const s = await member(room)
    let body = await getJson('/channels', {})
    assert.deepEqual(body.channels[room], {}, JSON.stringify(body))
    body = await getJson('/channels', { filter_by_prefix: 'occ_' })
    assert.deepEqual(body.channels[room], {})
    for (const name of Object.keys(body.channels)) assert.ok(name.startsWith('occ_'), `unexpected ${name}`)
    assert.equal((await emitAck(s, 'leave-room', { roomId: room })).ok, true)
    body = await getJson('/channels', {})
    assert.equal(body.channels[room], undefined, `left room still listed: ${JSON.stringify(body)}`)
  })

  test('GET /channels?info=user_count without the presence- prefix -> 400', async () => {
    const r = await sdkCall(() => pusher.get({ path: '/channels', params: { info: 'user_count' } }))
    assert.equal(r.status, 400, `${r.status} ${r.text}`)
  })

  test('GET /channels/{name} with info=user_count,subscription_count; public subscription_count; unoccupied', async () => {
    const p = uniqueRoom('presence-one')
    const a1 = await asUser(5)
    const a2 = await asUser(5)
    const c = await asUser(12)
    for (const s of [a1, a2, c]) await joinOk(s, p)
    assert.deepEqual(await getJson(`/channels/${p}`, { info: 'user_count,subscription_count' }), {
      occupied: true,
      user_count: 2,
      subscription_count: 3,
    })
    const pub = uniqueRoom('pubone')
    await member(pub)
    await member(pub)
    assert.deepEqual(await getJson(`/channels/${pub}`, { info: 'subscription_count' }), {
      occupied: true,
      subscription_count: 2,
    })
    assert.deepEqual(await getJson(`/channels/${pub}`, {}), { occupied: true })
    assert.deepEqual(await getJson(`/channels/${uniqueRoom('nobody')}`, {}), { occupied: false })
    for (const s of [a1, a2, c]) assert.equal((await emitAck(s, 'leave-room', { roomId: p })).ok, true)
    assert.deepEqual(await getJson(`/channels/${p}`, {}), { occupied: false })
  })

  test('GET /channels/{presence}/users: one entry per user (channel_data user_id); 400 for a non-presence channel', async () => {
    const p = uniqueRoom('presence-users')
    for (const s of [await asUser(5), await asUser(5), await asUser(12)]) await joinOk(s, p)
    const body = await getJson(`/channels/${p}/users`, {})
    assert.deepEqual(sortById(body.users), sortById([{ id: '5' }, { id: '12' }]))
    const pub = uniqueRoom('pubusers')
    await member(pub)
    const r = await sdkCall(() => pusher.get({ path: `/channels/${pub}/users` }))
    assert.equal(r.status, 400, `${r.status} ${r.text}`)
  })
  test('presence users and user_count follow channel_data.user_id (not the token id)', async () => {
    app.presenceUserId = (u) => `user-${u.id}`
    const p = uniqueRoom('presence-cd')
    for (const s of [await asUser(5), await asUser(5), await asUser(12)]) await joinOk(s, p)
    const body = await getJson(`/channels/${p}/users`, {})
    assert.deepEqual(sortById(body.users), sortById([{ id: 'user-5' }, { id: 'user-12' }]))
    assert.deepEqual(await getJson(`/channels/${p}`, { info: 'user_count' }), { occupied: true, user_count: 2 })
  })
})

describe('terminate_connections', () => {
  test("terminateUserConnections('5') disconnects every socket of user 5 (both tabs) and nobody else", async () => {
    const room = uniqueRoom('term')
    const a1 = await connect(srv.url, { token: userToken(5) }) // numeric sub
    const a2 = await connect(srv.url, { token: userToken('5') }) // string sub: the same user
    const bob = await connect(srv.url, { token: userToken(7) })
    const carol = await connect(srv.url, { token: userToken(12) })
    const u55 = await connect(srv.url, { token: userToken(55) })
    const u50 = await connect(srv.url, { token: userToken('50') })
    await join(a1, room)
    await join(carol, room)
    const d1 = waitFor(a1, 'disconnect', () => true, 3000)
    const d2 = waitFor(a2, 'disconnect', () => true, 3000)
    const offline = waitFor(carol, 'user-online', (e) => e.roomId === room && e.online === false, 3000)
    const others = [bob, carol, u55, u50].map((s) => expectNone(s, 'disconnect', 1200))
    const r = await sdkCall(pusher.terminateUserConnections('5'))
    ok200(r, 'terminate_connections')
    await d1
    await d2
    assert.equal(a1.connected, false)
    assert.equal(a2.connected, false)
    assert.deepEqual(await offline, { roomId: room, userId: 5, online: false })
    await Promise.all(others)
    for (const s of [bob, carol, u55, u50]) {
      assert.equal(s.connected, true)
      await join(s, uniqueRoom('still'))
    }
  })

  test('terminate_connections for a user with no sockets -> 200, nobody disconnected', async () => {
    const s = await member()
    const none = expectNone(s, 'disconnect', 700)
    ok200(await sdkCall(pusher.terminateUserConnections(`nobody-${Date.now()}`)), 'terminate nobody')
    await none
    assert.equal(s.connected, true)
  })
})

describe('request checks', () => {
  test('a client with the wrong secret -> 401 and nothing delivered; an unknown key -> 401', async () => {
    const room = uniqueRoom('badsig')
    const s = await member(room)
    const none = expectNone(s, 'should-not', 800)
    const bad = pusherFor(srv, { secret: 'not-the-secret' })
    const r = await sdkCall(bad.trigger(room, 'should-not', { x: 1 }))
    assert.equal(r.status, 401, `${r.status} ${r.text}`)
    const g = await sdkCall(() => bad.get({ path: '/channels' }))
    assert.equal(g.status, 401, `${g.status} ${g.text}`)
    const t = await sdkCall(() => bad.terminateUserConnections('5'))
    assert.equal(t.status, 401, `${t.status} ${t.text}`)
    const unknown = pusherFor(srv, { key: 'unknown-key' })
    const u = await sdkCall(unknown.trigger(room, 'should-not', { x: 2 }))
    assert.equal(u.status, 401, `${u.status} ${u.text}`)
    await none
  })

  test('an unknown app id -> 404', async () => {
    const other = pusherFor(srv, { appId: '999999' })
    const r = await sdkCall(other.trigger(uniqueRoom('noapp'), 'e', {}))
    assert.equal(r.status, 404, `${r.status} ${r.text}`)
  })

  test('hand-signed like lib/requests.js: fresh -> 200; timestamp 1000 s old or ahead -> 401', async () => {
    const room = uniqueRoom('stamp')
    const s = await member(room)
    const body = { name: 'by-hand', channels: [room], data: JSON.stringify({ v: 1 }) }
    const got = waitFor(s, 'by-hand')
    const fresh = await signedRequest(srv, { subPath: '/events', body })
    ok200(fresh, 'hand-signed fresh')
    assert.deepEqual(await got, { v: 1 })
    const none = expectNone(s, 'by-hand', 700)
    const stale = await signedRequest(srv, { subPath: '/events', body, timestamp: nowSecs() - 1000 })
    assert.equal(stale.status, 401, `stale: ${stale.status} ${stale.text}`)
    const ahead = await signedRequest(srv, { subPath: '/events', body, timestamp: nowSecs() + 1000 })
    assert.equal(ahead.status, 401, `ahead: ${ahead.status} ${ahead.text}`)
    const staleGet = await signedRequest(srv, { method: 'GET', subPath: '/channels', timestamp: nowSecs() - 1000 })
    assert.equal(staleGet.status, 401, `stale GET: ${staleGet.status} ${staleGet.text}`)
    await none
  })

  test('a body_md5 that does not match the body -> 401 (even with a valid signature over it)', async () => {
    const room = uniqueRoom('md5')
    const s = await member(room)
    const none = expectNone(s, 'md5-event', 700)
    const body = JSON.stringify({ name: 'md5-event', channels: [room], data: '{"a":1}' })
    const other = JSON.stringify({ name: 'md5-event', channels: [room], data: '{"a":2}' })
    const r = await signedRequest(srv, { subPath: '/events', body, bodyMd5: md5(other) })
    assert.equal(r.status, 401, `${r.status} ${r.text}`)
    await none
  })

  test('event data over 10 KB -> 413 (a 9 KB one passes); a body over 1 MiB -> 413', async () => {
    const room = uniqueRoom('size')
    const s = await member(room)
    const small = waitFor(s, 'sized', (d) => d.length === 9 * 1024)
    ok200(await sdkCall(pusher.trigger(room, 'sized', 'x'.repeat(9 * 1024))), '9 KB data')
    await small
    const none = expectNone(s, 'sized', 700, (d) => d.length > 10 * 1024)
    const big = await sdkCall(pusher.trigger(room, 'sized', 'x'.repeat(12 * 1024)))
    assert.equal(big.status, 413, `12 KB data: ${big.status} ${big.text}`)
    const bigBatch = await sdkCall(pusher.triggerBatch([{ channel: room, name: 'sized', data: 'y'.repeat(12 * 1024) }]))
    assert.equal(bigBatch.status, 413, `12 KB batch data: ${bigBatch.status} ${bigBatch.text}`)
    const huge = await signedRequest(srv, {
      subPath: '/events',
      body: { name: 'sized', channels: [room], data: 'z', padding: 'p'.repeat(1024 * 1024 + 10) },
    })
    assert.equal(huge.status, 413, `> 1 MiB body: ${huge.status} ${huge.text.slice(0, 200)}`)
    await none
  })

  test('100 channels -> 200; 101 channels (built by hand, the SDK refuses) -> 400', async () => {
    const base = uniqueRoom('many')
    const channels = Array.from({ length: 100 }, (_, i) => `${base}_${i}`)
    const s = await member(channels[99])
    const got = waitFor(s, 'hundred')
    ok200(await sdkCall(pusher.trigger(channels, 'hundred', { n: 100 })), '100 channels')
    assert.deepEqual(await got, { n: 100 })
    const none = expectNone(s, 'hundred-one', 700)
    const r = await signedRequest(srv, {
      subPath: '/events',
      body: { name: 'hundred-one', channels: [...channels, `${base}_100`], data: '{}' },
    })
    assert.equal(r.status, 400, `${r.status} ${r.text}`)
    await none
  })

  test('a body that is not JSON -> 400', async () => {
    const r = await signedRequest(srv, { subPath: '/events', body: '{"name": "x", "channels": [' })
    assert.equal(r.status, 400, `${r.status} ${r.text}`)
  })
})

describe('Pusher API off', () => {
  test('with PUSHER_* unset every /apps/... route answers 404 and delivers nothing', async () => {
    const off = await startServer({ env: RELAXED_LIMITS })
    const room = uniqueRoom('off')
    const s = await connectAs(off.url, ids(1)[0])
    await join(s, room)
    const none = expectNone(s, 'nope', 800)
    const p = pusherFor(off)
    const calls = {
      events: () => p.trigger(room, 'nope', { x: 1 }),
      batch_events: () => p.triggerBatch([{ channel: room, name: 'nope', data: {} }]),
      channels: () => p.get({ path: '/channels' }),
      channel: () => p.get({ path: `/channels/${room}` }),
      users: () => p.get({ path: '/channels/presence-x/users' }),
      terminate: () => p.terminateUserConnections('5'),
    }
    for (const [what, fn] of Object.entries(calls)) {
      const r = await sdkCall(fn)
      assert.equal(r.status, 404, `${what}: ${r.status} ${r.text}`)
    }
    for (const method of ['PUT', 'DELETE']) {
      const r = await groupMember(off, method, 1, 5)
      assert.equal(r.status, 404, `groups ${method}: ${r.status} ${r.text}`)
    }
    await none
    assert.equal(s.connected, true)
    await off.stop()
  })
})
