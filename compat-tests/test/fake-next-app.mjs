// A stand-in for the legacy Next.js app's `POST /api/pusher/auth` route
// (/work/shared/legacy-pusher-app/src/app/api/pusher/auth/route.ts), on node:http.
//
// Like the real route it identifies the user from the plain `uid` cookie
// (users 5 alice, 7 bob, 12 carol), reads the form body (socket_id,
// channel_name) and answers with the REAL `pusher` SDK's
// `authorizeChannel(socketId, channel, presenceData?)`:
//   - `private-chat-A-B` when the user is A or B,
//   - `presence-*` (e.g. `presence-online`) for any logged-in user with
//     `{ user_id: String(uid), user_info: { username, fullName } }`,
//   - 403 otherwise.
// When there is no `uid` cookie it also accepts `Authorization: Bearer <jwt>`
// (HS256 with the suite's secret, user = `sub`), which is what the shim sends
// when the Socket.IO handshake carried no Authorization header (CONTRACT §7).
//
// Per test: every request is recorded (method, url, headers, raw body, parsed
// form) and `mode` changes the answer:
//   'ok'               the SDK's signature (default)
//   'slow'             the normal answer, but only after `delayMs` (default 7000 > the 5 s timeout)
//   'error500'         HTTP 500
//   'wrong-signature'  2xx, signed by the SDK with another secret
//   'wrong-key'        2xx, correct secret but another key before the ':'
//   'status'           HTTP `status` (e.g. 401, 404) with a JSON error
//   'custom'           `custom({ form, user, sdk, headers })` returns [status, body]; a string
//                      body is sent as is (text/plain), anything else as JSON
//
// No side effects on import.

import { createHmac, timingSafeEqual } from 'node:crypto'
import { createServer } from 'node:http'
import Pusher from 'pusher'
import { SECRET as JWT_SECRET } from './helpers.mjs'
import { APP_ID, APP_KEY, APP_SECRET } from './pusher-helpers.mjs'

export const USERS = [
  { id: 5, username: 'alice', fullName: 'Alice Martin' },
  { id: 7, username: 'bob', fullName: 'Bob Okafor' },
  { id: 12, username: 'carol', fullName: 'Carol Ito' },
]
export const ALICE = USERS[0]
export const BOB = USERS[1]
export const CAROL = USERS[2]

export function findUser(id) {
  if (id === null || id === undefined || id === '') return undefined
  return USERS.find((u) => u.id === Number(id))
}

/** The legacy app's parseRoomId: "chat-5-12" -> [5, 12]; anything else -> null. */
export function parseRoomId(roomId) {
  if (typeof roomId !== 'string') return null
  const m = /^chat-(\d+)-(\d+)$/.exec(roomId)
  return m ? [Number(m[1]), Number(m[2])] : null
}

function parseCookies(header) {
  const out = {}
  for (const part of String(header || '').split(';')) {
    const i = part.indexOf('=')
    if (i < 0) continue
    out[part.slice(0, i).trim()] = decodeURIComponent(part.slice(i + 1).trim())
  }
  return out
}

/** Verifies an HS256 JWT with the suite's secret; returns its claims or undefined. */
function verifyJwt(tok, secret = JWT_SECRET) {
  const parts = String(tok || '').split('.')
  if (parts.length !== 3) return undefined
  const expected = createHmac('sha256', secret).update(`${parts[0]}.${parts[1]}`).digest()
  let given
  try {
    given = Buffer.from(parts[2], 'base64url')
  } catch {
    return undefined
  }
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return undefined
  try {
    const claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'))
    if (typeof claims.exp === 'number' && claims.exp * 1000 < Date.now()) return undefined
    return claims
  } catch {
    return undefined
  }
}

const sdk = (overrides = {}) =>
  new Pusher({ appId: APP_ID, key: APP_KEY, secret: APP_SECRET, host: '127.0.0.1', useTLS: false, ...overrides })

/**
 * Starts the fake app on 127.0.0.1 (random port). Returns a handle:
 *   url, authUrl, requests (array, newest last), mode/delayMs/status (settable),
 *   presenceUserId(uid) (settable: what goes into channel_data.user_id),
 *   reset(), requestsFor(pred), waitForRequests(n, ms, pred), close().
 */
export async function startFakeApp({ key = APP_KEY, secret = APP_SECRET } = {}) {
  const good = sdk({ key, secret })
  const otherSecret = sdk({ key, secret: `${secret}-not-really` })
  const otherKey = sdk({ key: `${key}-other`, secret })
  const timers = new Set()
  const sockets = new Set()

  const app = {
    url: '',
    authUrl: '',
    requests: [],
    mode: 'ok',
    delayMs: 7000,
    status: 403,
    custom: undefined,
    /** The SDK instance signing with the right key and secret (for custom answers). */
    sdk: good,
    presenceUserId: (user) => String(user.id),
    reset() {
      app.requests.length = 0
      app.mode = 'ok'
      app.delayMs = 7000
      app.status = 403
      app.custom = undefined
      app.presenceUserId = (user) => String(user.id)
    },
    /** Recorded auth requests matching `pred` (on the parsed form, then the record). */
    requestsFor(pred = () => true) {
      return app.requests.filter((r) => pred(r.form, r))
    },
    /** Resolves with the matching records once there are at least `n` (rejects after `ms`). */
    async waitForRequests(n, ms = 3000, pred = () => true) {
      const deadline = Date.now() + ms
      for (;;) {
        const got = app.requestsFor(pred)
        if (got.length >= n) return got
        if (Date.now() > deadline) {
          throw new Error(`fake app: expected ${n} request(s), got ${got.length}: ${JSON.stringify(app.requests)}`)
        }
        await new Promise((r) => setTimeout(r, 25))
      }
    },
    async close() {
      for (const t of timers) clearTimeout(t)
      timers.clear()
      for (const s of sockets) s.destroy()
      await new Promise((r) => server.close(() => r()))
    },
  }

  function send(res, status, obj) {
    if (res.destroyed || res.writableEnded) return
    const text = typeof obj === 'string'
    const body = text ? obj : JSON.stringify(obj)
    res.writeHead(status, {
      'content-type': text ? 'text/plain' : 'application/json',
      'content-length': Buffer.byteLength(body),
    })
    res.end(body)
  }

  function sessionUser(headers) {
    const cookies = parseCookies(headers.cookie)
    if (cookies.uid !== undefined) return findUser(cookies.uid)
    const m = /^Bearer\s+(.+)$/i.exec(headers.authorization || '')
    if (m) {
      const claims = verifyJwt(m[1].trim())
      if (claims) return findUser(claims.sub ?? claims.userId ?? claims.user_id)
    }
    return undefined
  }

  // The legacy route, with the SDK instance chosen by the mode.
  function authorize(headers, form, signer) {
    const user = sessionUser(headers)
    if (!user) return [403, { error: 'Not logged in' }]
    const socketId = form.socket_id
    const channelName = form.channel_name
    if (!socketId || !channelName) return [400, { error: 'socket_id and channel_name are required' }]
    try {
      if (channelName.startsWith('presence-')) {
        return [
          200,
          signer.authorizeChannel(socketId, channelName, {
            user_id: app.presenceUserId(user),
            user_info: { username: user.username, fullName: user.fullName },
          }),
        ]
      }
      if (channelName.startsWith('private-')) {
        const ids = parseRoomId(channelName.slice('private-'.length))
        if (ids && ids.includes(user.id)) return [200, signer.authorizeChannel(socketId, channelName)]
      }
    } catch (err) {
      // the SDK validates socket_id (^\d+\.\d+$) and the channel name
      return [400, { error: String(err.message || err) }]
    }
    return [403, { error: 'Forbidden' }]
  }

  const server = createServer((req, res) => {
    const chunks = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8')
      let form = {}
      try {
        form = Object.fromEntries(new URLSearchParams(body))
      } catch {}
      const record = {
        at: Date.now(),
        method: req.method,
        url: req.url,
        headers: { ...req.headers },
        body,
        form,
      }
      app.requests.push(record)
      if (req.method !== 'POST' || req.url.split('?')[0] !== '/api/pusher/auth') {
        return send(res, 404, { error: 'Not found' })
      }
      const mode = app.mode
      if (mode === 'error500') return send(res, 500, { error: 'Internal Server Error' })
      if (mode === 'status') return send(res, app.status, { error: `status ${app.status}` })
      if (mode === 'custom') {
        const [status, answer] = app.custom({ form, user: sessionUser(record.headers), sdk: good, headers: record.headers })
        return send(res, status, answer)
      }
      const signer = mode === 'wrong-signature' ? otherSecret : mode === 'wrong-key' ? otherKey : good
      const [status, answer] = authorize(record.headers, form, signer)
      if (mode === 'slow') {
        const t = setTimeout(() => {
          timers.delete(t)
          send(res, status, answer)
        }, app.delayMs)
        timers.add(t)
        return
      }
      send(res, status, answer)
    })
  })
  server.on('connection', (s) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  const { port } = server.address()
  app.url = `http://127.0.0.1:${port}`
  app.authUrl = `${app.url}/api/pusher/auth`
  app.port = port
  return app
}
