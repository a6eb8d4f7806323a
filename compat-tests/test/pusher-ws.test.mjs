// Pusher's WebSocket protocol (docs/protocol.md "Pusher WebSocket protocol"):
// the real, unmodified pusher-js 8 (its node build, with its own WebSocket)
// pointed at switchboard with wsHost/wsPort and forceTLS: false, meeting
// socket.io-client sockets in the same rooms. In cluster mode (SB_TEST_CLUSTER)
// pusher-js talks to the first node and Socket.IO to the last one.
import assert from 'node:assert/strict'
import { after, afterEach, before, describe, test } from 'node:test'
import PusherJS from 'pusher-js'
import { closeSockets, connectAs, join, send, startServer, stopServers, waitFor, withTimeout } from './helpers.mjs'
import { APP_KEY, pusherEnv, pusherFor } from './pusher-helpers.mjs'

let srv
let sdk
const clients = new Set()

before(async () => {
  srv = await startServer({ env: pusherEnv() })
  sdk = pusherFor(srv)
})
afterEach(() => {
  closeSockets()
  for (const c of clients) c.disconnect()
  clients.clear()
})
after(() => stopServers())

const firstNode = () => srv.nodes?.[0] ?? srv
const lastNode = () => srv.nodes?.[srv.nodes.length - 1] ?? srv

/** pusher-js as the legacy app builds it; private/presence auth signed by the SDK for `user`. */
function pusherJs({ user, key = APP_KEY } = {}) {
  const client = new PusherJS(key, {
    cluster: 'unused',
    wsHost: '127.0.0.1',
    wsPort: firstNode().port,
    forceTLS: false,
    enabledTransports: ['ws'],
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        const data = channelName.startsWith('presence-') ? user : undefined
        callback(null, sdk.authorizeChannel(socketId, channelName, data))
      },
    },
  })
  clients.add(client)
  return client
}

function connected(client) {
  return withTimeout(
    new Promise((resolve, reject) => {
      client.connection.bind('connected', () => resolve(client))
      client.connection.bind('error', (e) => reject(new Error(JSON.stringify(e))))
    }),
    5000,
    'pusher-js connected',
  )
}

function subscribed(client, channel) {
  const ch = client.subscribe(channel)
  return withTimeout(
    new Promise((resolve, reject) => {
      ch.bind('pusher:subscription_succeeded', (members) => resolve({ ch, members }))
      ch.bind('pusher:subscription_error', (e) => reject(new Error(`subscription_error ${JSON.stringify(e)}`)))
    }),
    5000,
    `subscribed to ${channel}`,
  )
}

const next = (ch, event, ms = 3000) =>
  withTimeout(new Promise((resolve) => ch.bind(event, (data, meta) => resolve({ data, meta }))), ms, `pusher-js ${event}`)

/** A socket.io client of user `id`, joined to `room` with an auth answer it presents. */
async function sioJoined(id, room, userInfo = {}) {
  const s = await connectAs(lastNode().url, id)
  const { socketId } = await s.session
  const presence = room.startsWith('presence-')
  const signed = sdk.authorizeChannel(socketId, room, presence ? { user_id: String(id), user_info: userInfo } : undefined)
  const ack = await join(s, room, signed)
  return { s, ack }
}

describe('pusher-js 8 against switchboard', () => {
  test('connects with a N.N socket id', async () => {
    const c = await connected(pusherJs())
    assert.match(c.connection.socket_id, /^\d+\.\d+$/)
  })

  test('an unknown key is refused with 4001 and pusher-js does not retry', async () => {
    const c = pusherJs({ key: 'not-our-key' })
    const error = await withTimeout(
      new Promise((resolve) => c.connection.bind('error', resolve)),
      5000,
      'pusher-js error',
    )
    assert.equal(error.data?.code ?? error.error?.data?.code, 4001, JSON.stringify(error))
    await withTimeout(
      new Promise((resolve) => {
        const check = () => (['disconnected', 'failed'].includes(c.connection.state) ? resolve() : setTimeout(check, 50))
        check()
      }),
      3000,
      'pusher-js gives up',
    )
  })

  test('socket.io send-message reaches pusher-js as new-message with the stored message', async () => {
    const room = 'private-chat-5-12'
    const c = await connected(pusherJs())
    const { ch } = await subscribed(c, room)
    const { s } = await sioJoined(5, room)
    const got = next(ch, 'new-message')
    const stored = await send(s, room, 'hello pusher-js', { clientId: `c-${Date.now()}` })
    assert.deepEqual((await got).data, stored)
  })

  test('a stored trigger and a client event reach socket.io; socket_id excludes pusher-js', async () => {
    const room = 'private-chat-5-12'
    const c = await connected(pusherJs())
    const { ch } = await subscribed(c, room)
    const { s } = await sioJoined(12, room)

    const legacy = { id: `m-${Date.now()}`, userId: 5, username: 'ann', message: 'from the backend' }
    const bySio = waitFor(s, 'new-message', (m) => m.clientId === legacy.id)
    const byPusher = next(ch, 'new-message')
    await sdk.trigger(room, 'new-message', legacy)
    const [m1, m2] = await Promise.all([bySio, byPusher])
    assert.equal(m1.message, 'from the backend')
    assert.deepEqual(m2.data, m1, 'both protocols get the one stored message')

    // Events reach one connection in order: had the excluded trigger reached
    // pusher-js, it would come before the next one.
    const firstTyping = next(ch, 'typing')
    const typing = waitFor(s, 'typing', (t) => t.who === 'sio only')
    await sdk.trigger(room, 'typing', { who: 'sio only' }, { socket_id: c.connection.socket_id })
    await typing
    await sdk.trigger(room, 'typing', { who: 'everyone' })
    assert.deepEqual((await firstTyping).data, { who: 'everyone' }, 'socket_id excluded the pusher-js socket')

    const viaClient = waitFor(s, 'client-typing', (d) => d.isTyping === true)
    assert.equal(ch.trigger('client-typing', { isTyping: true }), true)
    assert.deepEqual(await viaClient, { isTyping: true })
  })

  test('presence counts both kinds; member_added/removed go both ways once per user', async () => {
    const room = 'presence-online'
    const watcher = await connected(pusherJs({ user: { user_id: '99', user_info: { name: 'Watcher' } } }))
    const { ch, members } = await subscribed(watcher, room)
    assert.equal(members.count, 1)
    assert.equal(members.me.id, '99')

    const added = next(ch, 'pusher:member_added')
    const { s, ack } = await sioJoined(12, room, { name: 'Bob' })
    assert.equal(ack.presence.count, 2)
    assert.deepEqual(ack.presence.hash['99'], { name: 'Watcher' })
    const member = (await added).data
    assert.deepEqual(member, { id: '12', info: { name: 'Bob' } })
    assert.equal(ch.members.count, 2)

    const sioSees = waitFor(s, 'pusher:member_added', (m) => m.id === '5')
    const tab = await connected(pusherJs({ user: { user_id: '5', user_info: { name: 'Ann' } } }))
    const { members: seen } = await subscribed(tab, room)
    assert.equal(seen.count, 3)
    await sioSees

    const client = await new Promise((resolve) => {
      tab.channel(room).bind('client-wave', (data, meta) => resolve({ data, meta }))
      watcher.channel(room).trigger('client-wave', { hi: 1 })
    })
    assert.deepEqual(client.data, { hi: 1 })
    assert.equal(client.meta?.user_id, '99', 'presence client events carry the sender')

    const removed = next(ch, 'pusher:member_removed')
    const sioRemoved = waitFor(s, 'pusher:member_removed', (m) => m.id === '5')
    tab.disconnect()
    assert.equal((await removed).data.id, '5')
    await sioRemoved
  })
})
