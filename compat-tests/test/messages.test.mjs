// CONTRACT §4 send-message / new-message / join-room history, §7 "Events".
import assert from 'node:assert/strict'
import { after, afterEach, before, describe, test } from 'node:test'
import {
  TRANSPORTS,
  closeSockets,
  cmpId,
  connectAs,
  dmRoom,
  emitAck,
  expectNone,
  http,
  ids,
  isDecimalId,
  join,
  receivedOf,
  send,
  sleep,
  startServer,
  stopServers,
  uniqueRoom,
  userToken,
  waitFor,
} from './helpers.mjs'

afterEach(closeSockets)
after(stopServers)

// Generous rate limits: this file checks messaging, not throttling (see abuse.test.mjs).
const ENV = { RATE_LIMIT_PER_SEC: 100000, RATE_LIMIT_BURST: 100000 }
let srv
before(async () => {
  srv = await startServer({ env: ENV })
})

const MESSAGE_KEYS = new Set([
  'id',
  'roomId',
  'userId',
  'username',
  'fullName',
  'avatar',
  'clientId',
  'message',
  'type',
  'media',
  'audio',
  'timestamp',
])

function assertMessageShape(m) {
  assert.ok(m && typeof m === 'object', `not a message: ${JSON.stringify(m)}`)
  assert.ok(isDecimalId(m.id), `id must be a positive decimal string: ${JSON.stringify(m.id)}`)
  assert.equal(typeof m.roomId, 'string')
  assert.equal(typeof m.message, 'string')
  assert.ok(['message', 'icon', 'sticker', 'image', 'audio'].includes(m.type), `type ${m.type}`)
  assert.equal(typeof m.timestamp, 'number')
  assert.ok(Number.isInteger(m.timestamp))
  assert.ok(Math.abs(m.timestamp - Date.now()) < 60000, `timestamp ${m.timestamp} is not ms since epoch, now`)
  for (const k of Object.keys(m)) assert.ok(MESSAGE_KEYS.has(k), `unexpected key ${k} in message`)
}

function assertError(ack, code) {
  assert.equal(ack?.ok, false, `expected ${code}, got ${JSON.stringify(ack)?.slice(0, 300)}`)
  assert.equal(ack.error?.code, code, `expected ${code}, got ${JSON.stringify(ack)?.slice(0, 300)}`)
  assert.equal(typeof ack.error.message, 'string')
}

/** Sends n messages with up to `parallel` in flight; returns acked messages sorted by id. */
async function sendMany(socket, roomId, n, prefix, parallel = 25) {
  const out = []
  for (let i = 0; i < n; i += parallel) {
    const batch = []
    for (let j = i; j < Math.min(n, i + parallel); j++) {
      batch.push(send(socket, roomId, `${prefix} ${j}`, { clientId: `${prefix}-${j}` }))
    }
    out.push(...(await Promise.all(batch)))
  }
  return out.sort((a, b) => cmpId(a.id, b.id))
}

for (const { name, transports } of TRANSPORTS) {
  const opts = transports ? { transports } : {}
  describe(`send-message [${name}]`, () => {
    test('modern payload: ack { ok, message } with the documented fields', async () => {
      const [a] = ids(1)
      const room = uniqueRoom('modern')
      const s = await connectAs(srv.url, a, { ...opts, profile: { username: 'ann', fullName: 'Ann A' } })
      await join(s, room)
      const t0 = Date.now()
      const ack = await emitAck(s, 'send-message', { roomId: room, clientId: 'c-1', message: 'hello world' })
      assert.equal(ack.ok, true, JSON.stringify(ack))
      const m = ack.message
      assertMessageShape(m)
      assert.equal(m.roomId, room)
      assert.strictEqual(m.userId, a)
      assert.equal(m.username, 'ann')
      assert.equal(m.fullName, 'Ann A')
      assert.equal(m.clientId, 'c-1')
      assert.equal(m.message, 'hello world')
      assert.equal(m.type, 'message')
      assert.ok(m.timestamp >= t0 - 2000 && m.timestamp <= Date.now() + 2000)
    })

    test('legacy Pusher-hook payload { roomId, targetId, data: { id, … } } is accepted', async () => {
      const [a, b] = ids(2)
      const room = dmRoom(a, b)
      const s = await connectAs(srv.url, a, { ...opts, profile: { username: 'leg', fullName: 'Leg Acy' } })
      const other = await connectAs(srv.url, b, opts)
      await join(s, room)
      await join(other, room)
      const tempId = `temp-${Date.now()}-abc123`
      const seen = waitFor(other, 'new-message', (m) => m.clientId === tempId)
      const ack = await emitAck(s, 'send-message', {
        roomId: room,
        targetId: b,
        data: {
          id: tempId,
          userId: 999999,
          username: 'spoofed',
          fullName: 'Spoofed Name',
          avatar: 'https://evil.example/a.png',
          message: 'look at this',
          timestamp: 1234,
          type: 'image',
          media: 'https://cdn.example/pic.png',
        },
      })
      assert.equal(ack.ok, true, JSON.stringify(ack))
      const m = ack.message
      assertMessageShape(m)
      assert.equal(m.clientId, tempId)
      assert.strictEqual(m.userId, a)
      assert.equal(m.username, 'leg')
      assert.equal(m.fullName, 'Leg Acy')
      assert.equal(m.avatar, undefined)
      assert.equal(m.message, 'look at this')
      assert.equal(m.type, 'image')
      assert.equal(m.media, 'https://cdn.example/pic.png')
      assert.notEqual(m.timestamp, 1234)
      assert.deepEqual(await seen, m)
    })

    test('legacy payload with audio, empty text', async () => {
      const [a] = ids(1)
      const room = uniqueRoom('legaudio')
      const s = await connectAs(srv.url, a, opts)
      await join(s, room)
      const ack = await emitAck(s, 'send-message', {
        roomId: room,
        data: { id: 'temp-audio-1', message: '', type: 'audio', audio: 'https://cdn.example/v.ogg' },
      })
      assert.equal(ack.ok, true, JSON.stringify(ack))
      assert.equal(ack.message.type, 'audio')
      assert.equal(ack.message.audio, 'https://cdn.example/v.ogg')
      assert.equal(ack.message.message, '')
      assert.equal(ack.message.clientId, 'temp-audio-1')
    })

    test('stored before the ack: a socket joining right after sees it in history', async () => {
      const [a, b] = ids(2)
      const room = uniqueRoom('stored')
      const s = await connectAs(srv.url, a, opts)
      await join(s, room)
      const m = await send(s, room, 'durable', { clientId: 'dur-1' })
      const late = await connectAs(srv.url, b, opts)
      const ack = await join(late, room)
      assert.deepEqual(ack.history.at(-1), m)
    })

    test('new-message reaches every socket in the room: sender, sender other tab, other user — once each', async () => {
      const [a, b] = ids(2)
      const room = dmRoom(a, b)
      const a1 = await connectAs(srv.url, a, opts)
      const a2 = await connectAs(srv.url, a, opts)
      const b1 = await connectAs(srv.url, b, opts)
      const outsider = await connectAs(srv.url, ids(1)[0], opts)
      for (const s of [a1, a2, b1]) await join(s, room)
      await join(outsider, uniqueRoom('elsewhere'))
      const waits = [a1, a2, b1].map((s) => waitFor(s, 'new-message', (m) => m.clientId === 'fan-1'))
      const none = expectNone(outsider, 'new-message', 800)
      const m = await send(a1, room, 'fan out', { clientId: 'fan-1' })
      const got = await Promise.all(waits)
      for (const g of got) assert.deepEqual(g, m)
      await none
      await sleep(200)
      for (const s of [a1, a2, b1]) {
        assert.equal(receivedOf(s, 'new-message', (x) => x.clientId === 'fan-1').length, 1, 'delivered exactly once')
      }
    })

    test('ids are decimal strings increasing in storage order', async () => {
      const [a] = ids(1)
      const room = uniqueRoom('order')
      const s = await connectAs(srv.url, a, opts)
      await join(s, room)
      const got = []
      for (let i = 0; i < 6; i++) got.push(await send(s, room, `n${i}`))
      for (const m of got) assert.ok(isDecimalId(m.id), m.id)
      for (let i = 1; i < got.length; i++) assert.equal(cmpId(got[i - 1].id, got[i].id), -1, 'ids increase')
      const h = await emitAck(s, 'join-room', { roomId: room, since: '0' }) // re-join: history only when asked
      assert.deepEqual(
        h.history.map((m) => m.message),
        got.map((m) => m.message),
      )
    })

    test('idempotent retry: same clientId returns the stored original, even with a changed body, no second broadcast', async () => {
      const [a, b] = ids(2)
      const room = dmRoom(a, b)
      const a1 = await connectAs(srv.url, a, opts)
      const a2 = await connectAs(srv.url, a, opts)
      const b1 = await connectAs(srv.url, b, opts)
      for (const s of [a1, a2, b1]) await join(s, room)
      const first = waitFor(b1, 'new-message', (m) => m.clientId === 'idem-1')
      const orig = await send(a1, room, 'original text', { clientId: 'idem-1' })
      await first
      const noDup = expectNone(b1, 'new-message', 800, (m) => m.clientId === 'idem-1')
      const noDupSelf = expectNone(a1, 'new-message', 800, (m) => m.clientId === 'idem-1')
      const retry = await emitAck(a1, 'send-message', { roomId: room, clientId: 'idem-1', message: 'original text' })
      assert.equal(retry.ok, true, JSON.stringify(retry))
      assert.deepEqual(retry.message, orig)
      const changed = await emitAck(a2, 'send-message', {
        roomId: room,
        clientId: 'idem-1',
        message: 'CHANGED',
        type: 'sticker',
        media: 'https://cdn.example/s.png',
      })
      assert.equal(changed.ok, true, JSON.stringify(changed))
      assert.deepEqual(changed.message, orig, 'retry with a changed body returns the stored original')
      await noDup
      await noDupSelf
      const h = await emitAck(b1, 'join-room', { roomId: room, since: '0' }) // re-join: history only when asked
      assert.equal(h.history.filter((m) => m.clientId === 'idem-1').length, 1)
    })

    test('idempotency key is (roomId, userId, clientId)', async () => {
      const [a, b] = ids(2)
      const room = dmRoom(a, b)
      const other = uniqueRoom('idemroom')
      const sa = await connectAs(srv.url, a, opts)
      const sb = await connectAs(srv.url, b, opts)
      await join(sa, room)
      await join(sb, room)
      await join(sa, other)
      const m1 = await send(sa, room, 'from a', { clientId: 'same' })
      const m2 = await send(sb, room, 'from b', { clientId: 'same' })
      const m3 = await send(sa, other, 'a elsewhere', { clientId: 'same' })
      assert.notEqual(m1.id, m2.id)
      assert.equal(m2.message, 'from b')
      assert.strictEqual(m2.userId, b)
      assert.notEqual(m3.id, m1.id)
      assert.equal(m3.roomId, other)
    })

    test('idempotency compares users by the string form of their id (sub 5 and sub "5")', async () => {
      const [n] = ids(1)
      const room = uniqueRoom('idemstr')
      const asNum = await connectAs(srv.url, n, opts)
      const asStr = await connectAs(srv.url, String(n), opts)
      await join(asNum, room)
      await join(asStr, room)
      const orig = await send(asNum, room, 'typed as number', { clientId: 'strform' })
      const retry = await emitAck(asStr, 'send-message', { roomId: room, clientId: 'strform', message: 'as string' })
      assert.equal(retry.ok, true, JSON.stringify(retry))
      assert.deepEqual(retry.message, orig)
    })

    test('numeric clientId is taken as its decimal string', async () => {
      const [a] = ids(1)
      const room = uniqueRoom('numcid')
      const s = await connectAs(srv.url, a, opts)
      await join(s, room)
      const m = await send(s, room, 'numeric client id', { clientId: 12345 })
      assert.strictEqual(m.clientId, '12345')
      const again = await send(s, room, 'numeric client id', { clientId: '12345' })
      assert.deepEqual(again, m)
    })

    test('sender fields in the payload are ignored', async () => {
      const [a] = ids(1)
      const room = uniqueRoom('spoof')
      const s = await connectAs(srv.url, a, { ...opts, profile: { username: 'real', fullName: 'Real Name' } })
      await join(s, room)
      const m = await send(s, room, 'who sent this?', {
        userId: 424242,
        user_id: 434343,
        username: 'mallory',
        fullName: 'Mallory',
        avatar: 'https://evil.example/m.png',
        timestamp: 1,
        id: '1',
      })
      assert.strictEqual(m.userId, a)
      assert.equal(m.username, 'real')
      assert.equal(m.fullName, 'Real Name')
      assert.equal(m.avatar, undefined)
      assert.notEqual(m.timestamp, 1)
    })

    test('types, media and audio round-trip; empty text allowed with media or audio', async () => {
      const [a] = ids(1)
      const room = uniqueRoom('types')
      const s = await connectAs(srv.url, a, opts)
      await join(s, room)
      for (const type of ['message', 'icon', 'sticker', 'image', 'audio']) {
        const m = await send(s, room, `t ${type}`, { type })
        assert.equal(m.type, type)
      }
      const img = await send(s, room, '', { type: 'image', media: 'https://cdn.example/i.png' })
      assert.equal(img.media, 'https://cdn.example/i.png')
      assert.equal(img.message, '')
      const voice = await send(s, room, '', { type: 'audio', audio: 'http://cdn.example/v.ogg' })
      assert.equal(voice.audio, 'http://cdn.example/v.ogg')
      const dflt = await send(s, room, 'no type')
      assert.equal(dflt.type, 'message')
    })

    describe('validation', () => {
      const cases = {
        'empty text without media/audio': [{ message: '' }, 'invalid_payload'],
        'missing text without media/audio': [{}, 'invalid_payload'],
        'unknown type': [{ message: 'x', type: 'video' }, 'invalid_payload'],
        'media not http(s)': [{ message: '', media: 'ftp://x.example/a.png' }, 'invalid_payload'],
        'media javascript:': [{ message: 'x', media: 'javascript:alert(1)' }, 'invalid_payload'],
        'media not a string': [{ message: 'x', media: 42 }, 'invalid_payload'],
        'audio not a URL': [{ message: '', audio: 'not a url' }, 'invalid_payload'],
        'message not a string': [{ message: 12 }, 'invalid_payload'],
        'clientId over 128 chars': [{ message: 'x', clientId: 'c'.repeat(129) }, 'invalid_payload'],
        'text over 4000 chars': [{ message: 'a'.repeat(4001) }, 'too_large'],
      }
      for (const [what, [body, code]] of Object.entries(cases)) {
        test(`${what} -> ${code}`, async () => {
          const sock = await connectAs(srv.url, ids(1)[0], opts)
          const r = uniqueRoom('val')
          await join(sock, r)
          const ack = await emitAck(sock, 'send-message', { roomId: r, ...body })
          assertError(ack, code)
          assert.equal(sock.connected, true)
          const h = await emitAck(sock, 'join-room', { roomId: r })
          assert.equal(h.history.length, 0, 'nothing stored')
        })
      }

      test('payload not an object / roomId missing -> invalid_payload', async () => {
        const sock = await connectAs(srv.url, ids(1)[0], opts)
        assertError(await emitAck(sock, 'send-message', 'hello'), 'invalid_payload')
        assertError(await emitAck(sock, 'send-message', { message: 'no room' }), 'invalid_payload')
        assertError(await emitAck(sock, 'send-message', [{ roomId: 'x', message: 'y' }]), 'invalid_payload')
      })

      test('limits are inclusive: 4000 characters (multi-byte) and a 128-char clientId are fine', async () => {
        const sock = await connectAs(srv.url, ids(1)[0], opts)
        const r = uniqueRoom('limits')
        await join(sock, r)
        const text = '\u00e9'.repeat(4000)
        const m = await send(sock, r, text, { clientId: 'k'.repeat(128) })
        assert.equal(m.message, text)
        assert.equal(m.clientId.length, 128)
      })

      test('not joined -> not_joined, nothing stored', async () => {
        const [a, b] = ids(2)
        const r = uniqueRoom('notjoined')
        const sa = await connectAs(srv.url, a, opts)
        const sb = await connectAs(srv.url, b, opts)
        await join(sb, r)
        const none = expectNone(sb, 'new-message', 500)
        assertError(await emitAck(sa, 'send-message', { roomId: r, message: 'sneaky' }), 'not_joined')
        await none
        const h = await emitAck(sb, 'join-room', { roomId: r })
        assert.equal(h.history.length, 0)
      })

      test('an event over 64 KiB -> too_large, connection stays usable', async () => {
        const sock = await connectAs(srv.url, ids(1)[0], opts)
        const r = uniqueRoom('big')
        await join(sock, r)
        const ack = await emitAck(sock, 'send-message', { roomId: r, message: 'small', padding: 'p'.repeat(70 * 1024) })
        assertError(ack, 'too_large')
        assert.equal(sock.connected, true)
        const m = await send(sock, r, 'still here')
        assert.equal(m.message, 'still here')
      })

      test('an event of ~1 MiB -> too_large, connection stays usable', async () => {
        const sock = await connectAs(srv.url, ids(1)[0], opts)
        const r = uniqueRoom('huge')
        await join(sock, r)
        const ack = await emitAck(sock, 'send-message', { roomId: r, message: 'm'.repeat(1000 * 1000) }, 5000)
        assertError(ack, 'too_large')
        assert.equal(sock.connected, true)
        const m = await send(sock, r, 'still here after 1 MiB')
        assert.equal(m.message, 'still here after 1 MiB')
      })
    })
  })

  describe(`join-room history [${name}]`, () => {
    test('empty room: history [] and hasMore false', async () => {
      const s = await connectAs(srv.url, ids(1)[0], opts)
      const ack = await join(s, uniqueRoom('empty'))
      assert.deepEqual(ack.history, [])
      assert.equal(ack.hasMore, false)
    })

    test('latest 50 oldest first, hasMore true when older exist', async () => {
      const [a, b] = ids(2)
      const room = uniqueRoom('hist')
      const s = await connectAs(srv.url, a, opts)
      await join(s, room)
      const sent = await sendMany(s, room, 55, 'h')
      const late = await connectAs(srv.url, b, opts)
      const ack = await join(late, room)
      assert.equal(ack.history.length, 50)
      assert.equal(ack.hasMore, true)
      assert.deepEqual(ack.history, sent.slice(5))
    })

    test('exactly 50 stored: all returned, hasMore false', async () => {
      const room = uniqueRoom('hist50')
      const s = await connectAs(srv.url, ids(1)[0], opts)
      await join(s, room)
      const sent = await sendMany(s, room, 50, 'f')
      const late = await connectAs(srv.url, ids(1)[0], opts)
      const ack = await join(late, room)
      assert.deepEqual(
        ack.history.map((m) => m.id),
        sent.map((m) => m.id),
      )
      assert.equal(ack.hasMore, false)
    })

    test('since (exclusive): only messages after it', async () => {
      const room = uniqueRoom('since')
      const s = await connectAs(srv.url, ids(1)[0], opts)
      await join(s, room)
      const sent = []
      for (let i = 0; i < 4; i++) sent.push(await send(s, room, `s${i}`))
      const late = await connectAs(srv.url, ids(1)[0], opts)
      const ack = await join(late, room, { since: sent[1].id })
      assert.deepEqual(ack.history, sent.slice(2))
      assert.equal(ack.hasMore, false)
      const late2 = await connectAs(srv.url, ids(1)[0], opts)
      const none = await join(late2, room, { since: sent[3].id })
      assert.deepEqual(none.history, [])
      assert.equal(none.hasMore, false)
    })
  })
}

describe('recovery with since: up to 500 and paging forward', () => {
  test('520 after the marker -> 500 + hasMore, then the last 20', async () => {
    const room = uniqueRoom('page')
    const s = await connectAs(srv.url, ids(1)[0], { transports: ['websocket'] })
    await join(s, room)
    const marker = await send(s, room, 'marker')
    const sent = await sendMany(s, room, 520, 'p', 50)
    const r = await connectAs(srv.url, ids(1)[0], { transports: ['websocket'] })
    const page1 = await emitAck(r, 'join-room', { roomId: room, since: marker.id }, 5000)
    assert.equal(page1.ok, true)
    assert.equal(page1.history.length, 500)
    assert.equal(page1.hasMore, true)
    assert.deepEqual(
      page1.history.map((m) => m.id),
      sent.slice(0, 500).map((m) => m.id),
    )
    const exact = await connectAs(srv.url, ids(1)[0], { transports: ['websocket'] })
    const page0 = await emitAck(exact, 'join-room', { roomId: room, since: sent[19].id }, 5000)
    assert.equal(page0.history.length, 500, 'exactly 500 after the 20th')
    assert.equal(page0.hasMore, false, 'exactly 500 after since: hasMore false')
    const r2 = await connectAs(srv.url, ids(1)[0], { transports: ['websocket'] })
    const page2 = await emitAck(r2, 'join-room', { roomId: room, since: page1.history.at(-1).id }, 5000)
    assert.equal(page2.history.length, 20)
    assert.equal(page2.hasMore, false)
    assert.deepEqual(
      page2.history.map((m) => m.id),
      sent.slice(500).map((m) => m.id),
    )
  })
})

// In cluster mode: the whole cluster stops and a new one starts on the same
// database, and the retry may land on another node than the original.
describe('idempotency across restart', () => {
  test('a retry after a restart returns the original and is not broadcast', async () => {
    const first = await startServer({ env: ENV })
    const [a, b] = ids(2)
    const room = dmRoom(a, b)
    const s = await connectAs(first.url, a)
    await join(s, room)
    const orig = await send(s, room, 'before restart', { clientId: 'restart-1' })
    s.close()
    assert.equal((await first.stop()).code, 0)

    const second = await startServer({ env: ENV, dbUrl: first.dbUrl })
    const sa = await connectAs(second.url, a)
    const sb = await connectAs(second.url, b)
    await join(sa, room)
    await join(sb, room)
    const none = expectNone(sb, 'new-message', 800)
    const retry = await emitAck(sa, 'send-message', { roomId: room, clientId: 'restart-1', message: 'after restart' })
    assert.equal(retry.ok, true, JSON.stringify(retry))
    assert.deepEqual(retry.message, orig)
    await none
    // and over REST too
    const rest = await http(`${second.url}/api/rooms/${room}/messages`, {
      method: 'POST',
      token: userToken(a),
      body: { clientId: 'restart-1', message: 'rest retry' },
    })
    assert.equal(rest.status, 200, rest.text)
    assert.deepEqual(rest.body.message, orig)
    await second.stop()
  })
})
