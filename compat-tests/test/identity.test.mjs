// CONTRACT §2 (identity) and §7 "Identity".
import assert from 'node:assert/strict'
import { after, afterEach, before, describe, test } from 'node:test'
import {
  TRANSPORTS,
  closeSockets,
  connect,
  connectError,
  emitAck,
  ids,
  join,
  send,
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

const now = () => Math.floor(Date.now() / 1000)

for (const { name, transports } of TRANSPORTS) {
  describe(`token sources [${name}]`, () => {
    test('auth.token connects and gets session { socketId, userId }', async () => {
      const [a] = ids(1)
      const s = await connect(srv.url, { token: token({ sub: a }), transports })
      const session = await s.session
      assert.equal(session.userId, a)
      assert.equal(typeof session.socketId, 'string')
      assert.match(session.socketId, /^\d+\.\d+$/)
    })

    test('query parameter ?token= connects', async () => {
      const [a] = ids(1)
      const s = await connect(srv.url, { transports, query: { token: token({ sub: a }) } })
      assert.equal((await s.session).userId, a)
    })

    test('a token with a future exp connects', async () => {
      const [a] = ids(1)
      const s = await connect(srv.url, { token: token({ sub: a, exp: now() + 3600 }), transports })
      assert.equal((await s.session).userId, a)
    })

    const refusals = {
      'missing token': () => undefined,
      'empty token': () => '',
      'malformed token': () => 'not-a-jwt',
      'three garbage segments': () => 'aaa.bbb.ccc',
      'wrong signature': () => token({ sub: 1 }, { secret: 'some-other-secret' }),
      'alg none': () => token({ sub: 1 }, { alg: 'none' }),
      'expired token': () => token({ sub: 1, exp: now() - 120 }),
      'no id claim': () => token({ name: 'nobody' }),
      'empty string id': () => token({ sub: '' }),
      'fractional id': () => token({ sub: 1.5 }),
      'boolean id': () => token({ sub: true }),
      'object id': () => token({ sub: { id: 1 } }),
    }
    for (const [what, make] of Object.entries(refusals)) {
      test(`${what} -> connect_error "unauthorized…"`, async () => {
        const tok = make()
        const err = await connectError(srv.url, { token: tok, transports, timeoutMs: 3000 })
        assert.match(err.message, /^unauthorized/, `got connect_error ${JSON.stringify(err.message)}`)
        if (what === 'expired token') assert.match(err.message, /expired/)
      })
    }
  })
}

describe('token sources [Authorization header]', () => {
  test('Authorization: Bearer header over websocket (Node client) connects', async () => {
    const [a] = ids(1)
    const s = await connect(srv.url, {
      transports: ['websocket'],
      extraHeaders: { Authorization: `Bearer ${token({ sub: a })}` },
    })
    assert.equal((await s.session).userId, a)
  })


  test('Authorization: Bearer header (extraHeaders, polling) connects', async () => {
    const [a] = ids(1)
    const s = await connect(srv.url, {
      transports: ['polling'],
      extraHeaders: { Authorization: `Bearer ${token({ sub: a })}` },
    })
    assert.equal((await s.session).userId, a)
  })

  test('Authorization header with a bad token is refused with unauthorized', async () => {
    const err = await connectError(srv.url, {
      transports: ['polling'],
      extraHeaders: { Authorization: `Bearer ${token({ sub: 1 }, { secret: 'nope' })}` },
      timeoutMs: 3000,
    })
    assert.match(err.message, /^unauthorized/)
  })
})

describe('session', () => {
  test('socketIds are Pusher-format and distinct per socket', async () => {
    const [a] = ids(1)
    const s1 = await connect(srv.url, { token: token({ sub: a }) })
    const s2 = await connect(srv.url, { token: token({ sub: a }) })
    const [x, y] = [await s1.session, await s2.session]
    assert.match(x.socketId, /^\d+\.\d+$/)
    assert.match(y.socketId, /^\d+\.\d+$/)
    assert.notEqual(x.socketId, y.socketId)
  })
})

describe('user id keeps its JSON type', () => {
  test('numeric id stays a number in session, members, messages, typing, user-online', async () => {
    const [a, b] = ids(2)
    const room = uniqueRoom('numid')
    const sa = await connect(srv.url, { token: token({ sub: a }) })
    const sb = await connect(srv.url, { token: token({ sub: b }) })
    assert.equal((await sa.session).userId, a)
    await join(sa, room)
    const online = waitFor(sa, 'user-online', (e) => e.online === true)
    const ack = await join(sb, room)
    assert.deepEqual(ack.members.map((m) => m.userId).sort((x, y) => x - y), [a, b])
    const on = await online
    assert.strictEqual(on.userId, b)
    const seen = waitFor(sa, 'new-message', (m) => m.message === 'typed')
    const msg = await send(sb, room, 'typed')
    assert.strictEqual(msg.userId, b)
    assert.strictEqual((await seen).userId, b)
    const typing = waitFor(sa, 'typing')
    await emitAck(sb, 'typing', { roomId: room, isTyping: true })
    assert.strictEqual((await typing).userId, b)
  })

  test('string id stays a string (even when it looks numeric)', async () => {
    const room = uniqueRoom('strid')
    const sid = `u_${ids(1)[0]}`
    const digits = String(ids(1)[0])
    const s1 = await connect(srv.url, { token: token({ sub: sid }) })
    const s2 = await connect(srv.url, { token: token({ sub: digits }) })
    assert.strictEqual((await s1.session).userId, sid)
    assert.strictEqual((await s2.session).userId, digits)
    await join(s1, room)
    const ack = await join(s2, room)
    const byId = new Map(ack.members.map((m) => [String(m.userId), m.userId]))
    assert.strictEqual(byId.get(sid), sid)
    assert.strictEqual(byId.get(digits), digits)
    const m1 = await send(s1, room, 'from string user')
    const m2 = await send(s2, room, 'from digit-string user')
    assert.strictEqual(m1.userId, sid)
    assert.strictEqual(m2.userId, digits)
    const h = await emitAck(s1, 'join-room', { roomId: room, since: '0' }) // re-join: history only when asked
    const hist = h.history.filter((m) => m.id === m1.id || m.id === m2.id)
    assert.deepEqual(
      hist.map((m) => m.userId),
      [sid, digits],
    )
  })
})

describe('id claim precedence: sub, then userId, then user_id', () => {
  const cases = [
    [{ sub: 1001, userId: 2002, user_id: 3003 }, 1001],
    [{ userId: 2002, user_id: 3003 }, 2002],
    [{ user_id: 3003 }, 3003],
    [{ sub: 'abc', userId: 2002 }, 'abc'],
    [{ userId: 'xyz', user_id: 3003 }, 'xyz'],
  ]
  for (const [claims, expected] of cases) {
    test(`${JSON.stringify(claims)} -> ${JSON.stringify(expected)}`, async () => {
      const s = await connect(srv.url, { token: token(claims) })
      assert.strictEqual((await s.session).userId, expected)
      const room = uniqueRoom('prec')
      await join(s, room)
      const m = await send(s, room, 'who am i')
      assert.strictEqual(m.userId, expected)
    })
  }
})

describe('profile claims', () => {
  async function profileOf(claims) {
    const [a] = ids(1)
    const s = await connect(srv.url, { token: token({ sub: a, ...claims }) })
    const room = uniqueRoom('profile')
    const ack = await join(s, room)
    const me = ack.members.find((m) => m.userId === a)
    const msg = await send(s, room, 'hello')
    return { me, msg, a }
  }

  test('username, fullName, avatar appear in members and messages', async () => {
    const { me, msg, a } = await profileOf({ username: 'jdoe', fullName: 'Jane Doe', avatar: 'https://x.example/a.png' })
    assert.deepEqual(me, { userId: a, username: 'jdoe', fullName: 'Jane Doe', avatar: 'https://x.example/a.png' })
    assert.equal(msg.username, 'jdoe')
    assert.equal(msg.fullName, 'Jane Doe')
    assert.equal(msg.avatar, 'https://x.example/a.png')
  })

  test('aliases: preferred_username -> username, name -> fullName, picture -> avatar', async () => {
    const { me, msg, a } = await profileOf({ preferred_username: 'pj', name: 'Pat J', picture: 'https://x.example/p.png' })
    assert.deepEqual(me, { userId: a, username: 'pj', fullName: 'Pat J', avatar: 'https://x.example/p.png' })
    assert.equal(msg.username, 'pj')
    assert.equal(msg.fullName, 'Pat J')
    assert.equal(msg.avatar, 'https://x.example/p.png')
  })

  test('the primary claim wins over its alias', async () => {
    const { me } = await profileOf({
      username: 'primary',
      preferred_username: 'alias',
      fullName: 'Primary Name',
      name: 'Alias Name',
      avatar: 'https://x.example/primary.png',
      picture: 'https://x.example/alias.png',
    })
    assert.equal(me.username, 'primary')
    assert.equal(me.fullName, 'Primary Name')
    assert.equal(me.avatar, 'https://x.example/primary.png')
  })

  test('no profile claims: member is just { userId }', async () => {
    const { me, a } = await profileOf({})
    assert.deepEqual(me, { userId: a })
  })
})
