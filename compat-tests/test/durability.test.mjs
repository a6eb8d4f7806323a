// CONTRACT §4 "stored durably before the ack", §1 DATABASE_URL persistence.
import assert from 'node:assert/strict'
import { after, afterEach, describe, test } from 'node:test'
import {
  TRANSPORTS,
  closeSockets,
  connectAs,
  emitAck,
  http,
  ids,
  join,
  send,
  startServer,
  stopServers,
  uniqueRoom,
  userToken,
} from './helpers.mjs'

afterEach(closeSockets)
after(stopServers)

const ENV = { RATE_LIMIT_PER_SEC: 100000, RATE_LIMIT_BURST: 100000 }

// In cluster mode the client lands on one node of the cluster, kill9() kills
// every node, and the restart is a new cluster on the same Postgres database:
// acked messages must survive that as well.
describe('kill -9 after acks loses nothing', () => {
  for (const { name, transports } of TRANSPORTS) {
    test(`[${name}] N acked messages survive SIGKILL and a restart on the same database`, async () => {
      const N = 40
      const srv = await startServer({ env: ENV })
      const [a] = ids(1)
      const room = uniqueRoom('durable')
      const s = await connectAs(srv.url, a, transports ? { transports } : {})
      await join(s, room)
      const acked = []
      // half sequential, half pipelined
      for (let i = 0; i < N / 2; i++) acked.push(await send(s, room, `seq ${i}`, { clientId: `seq-${i}` }))
      acked.push(
        ...(await Promise.all(
          Array.from({ length: N / 2 }, (_, i) => send(s, room, `par ${i}`, { clientId: `par-${i}` })),
        )),
      )
      // and one over REST
      const rest = await http(`${srv.url}/api/rooms/${room}/messages`, {
        method: 'POST',
        token: userToken(a),
        body: { clientId: 'rest-last', message: 'rest last' },
      })
      assert.equal(rest.status, 201, rest.text)
      acked.push(rest.body.message)
      const info = await srv.kill9()
      assert.equal(info.signal, 'SIGKILL')

      const again = await startServer({ env: ENV, dbUrl: srv.dbUrl })
      const s2 = await connectAs(again.url, a)
      const ack = await emitAck(s2, 'join-room', { roomId: room })
      assert.equal(ack.ok, true)
      assert.equal(ack.history.length, N + 1)
      const byId = new Map(ack.history.map((m) => [m.id, m]))
      for (const m of acked) assert.deepEqual(byId.get(m.id), m, `message ${m.id} (${m.message}) lost or changed`)
      // ids continue increasing after the restart
      const next = await send(s2, room, 'after restart')
      for (const m of acked) assert.ok(BigInt(next.id) > BigInt(m.id))
      await again.stop()
    })
  }
})
