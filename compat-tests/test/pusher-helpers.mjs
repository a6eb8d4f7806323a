// Pusher-compatibility helpers (CONTRACT §5, §6 groups, §7 "Pusher"): the
// suite's Pusher app credentials, an official-SDK client pointed at a
// switchboard server, and hand-signed requests that follow the SDK's
// lib/requests.js algorithm exactly (for the cases the SDK refuses to send).
//
// No side effects on import (the runner may load every .mjs under test/).

import { createHash, createHmac } from 'node:crypto'
import Pusher from 'pusher'
import { http } from './helpers.mjs'

export const APP_ID = '424242'
export const APP_KEY = 'compat-pusher-key'
export const APP_SECRET = 'compat-pusher-secret-0123456789'

/** Generous rate limits so a test's own traffic never trips the limiter. */
export const RELAXED_LIMITS = { RATE_LIMIT_PER_SEC: 1000, RATE_LIMIT_BURST: 1000 }

/** Server env enabling the Pusher API (and the auth shim when `authEndpoint` is given). */
export function pusherEnv({ authEndpoint, appId = APP_ID, key = APP_KEY, secret = APP_SECRET } = {}) {
  return {
    ...RELAXED_LIMITS,
    PUSHER_APP_ID: appId,
    PUSHER_KEY: key,
    PUSHER_SECRET: secret,
    ...(authEndpoint ? { PUSHER_AUTH_ENDPOINT: authEndpoint } : {}),
  }
}

/**
 * The official server SDK, configured like the legacy app with PUSHER_HOST/PORT/USE_TLS=false.
 * For a spread cluster handle (helpers.mjs cluster mode) each SDK call goes to
 * the next node round-robin, as behind a load balancer; a node handle pins it.
 */
export function pusherFor(srv, overrides = {}) {
  const make = (port) =>
    new Pusher({
      appId: APP_ID,
      key: APP_KEY,
      secret: APP_SECRET,
      host: '127.0.0.1',
      port: String(port),
      useTLS: false,
      timeout: 5000,
      ...overrides,
    })
  if (!srv.nextNode) return make(srv.port)
  const byNode = new Map()
  const sdkOf = (node) => {
    if (!byNode.has(node)) byNode.set(node, make(node.port))
    return byNode.get(node)
  }
  return new Proxy(sdkOf(srv.nodes[0]), {
    get(_target, prop) {
      const sdk = sdkOf(srv.nextNode())
      const v = sdk[prop]
      return typeof v === 'function' ? v.bind(sdk) : v
    },
  })
}

/** Runs an SDK call; resolves with { status, body, text } whether it succeeded or not. */
export async function sdkCall(promiseOrFn) {
  try {
    const res = await (typeof promiseOrFn === 'function' ? promiseOrFn() : promiseOrFn)
    const text = await res.text()
    let body
    try {
      body = JSON.parse(text)
    } catch {}
    return { status: res.status, body, text }
  } catch (err) {
    if (err && typeof err.status === 'number') {
      let body
      try {
        body = JSON.parse(err.body)
      } catch {}
      return { status: err.status, body, text: err.body, error: err }
    }
    throw err
  }
}

export const md5 = (s) => createHash('md5').update(s, 'utf8').digest('hex')
export const hmacHex = (secret, s) => createHmac('sha256', secret).update(s).digest('hex')
export const nowSecs = () => (Date.now() / 1000) | 0

/**
 * Signed query string, byte for byte what pusher/lib/requests.js builds:
 * params auth_key, auth_timestamp, auth_version=1.0, body_md5 (when a body is
 * sent) and the caller's params, sorted by key, joined `k=v` with `&`;
 * signature = hex HMAC-SHA256(secret, "METHOD\nPATH\nQUERY").
 * `bodyMd5` overrides the digest (to send a wrong one on purpose).
 */
export function signQuery({
  method,
  path,
  params = {},
  body,
  key = APP_KEY,
  secret = APP_SECRET,
  timestamp = nowSecs(),
  bodyMd5,
}) {
  const q = { auth_key: key, auth_timestamp: timestamp, auth_version: '1.0' }
  if (body !== undefined && body !== '') q.body_md5 = bodyMd5 ?? md5(body)
  Object.assign(q, params)
  const query = Object.keys(q)
    .sort()
    .map((k) => `${k}=${q[k]}`)
    .join('&')
  const signature = hmacHex(secret, [method.toUpperCase(), path, query].join('\n'))
  return `${query}&auth_signature=${signature}`
}

/**
 * A hand-signed request to `/apps/{appId}{subPath}`. `body` may be an object
 * (JSON-encoded) or a string (sent as is). `signMethod` signs with another
 * method than the one sent (to prove the method is part of the signature).
 * Resolves with { status, body, text }.
 */
export async function signedRequest(
  srv,
  { method = 'POST', signMethod, subPath, appId = APP_ID, params, body, key, secret, timestamp, bodyMd5, timeoutMs = 10000 },
) {
  const path = `/apps/${appId}${subPath}`
  const raw = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body)
  const qs = signQuery({ method: signMethod ?? method, path, params, body: raw, key, secret, timestamp, bodyMd5 })
  return http(`${srv.url}${path}?${qs}`, {
    method,
    raw,
    headers: raw === undefined ? {} : { 'content-type': 'application/json' },
    timeoutMs,
  })
}

/** PUT/DELETE /apps/{app_id}/groups/{N}/members/{userId}, signed with its own method. */
export function groupMember(srv, method, groupN, userId, opts = {}) {
  return signedRequest(srv, {
    method,
    subPath: `/groups/${groupN}/members/${encodeURIComponent(String(userId))}`,
    ...opts,
  })
}

/** A fresh group number (group-N room ids are per test). */
let groupCounter = 100000 + Math.floor(Math.random() * 800000)
export const uniqueGroup = () => ++groupCounter
