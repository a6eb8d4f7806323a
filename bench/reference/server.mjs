// Reference server for switchboard's benchmarks: plain Socket.IO 4.8 on Node,
// everything in memory, speaking the same events and acks as switchboard for
// what the load generator uses (session, join-room, leave-room, send-message,
// typing; new-message to the whole room, the sender included).
//
// It is a yardstick, not a product: no persistence, no rate limits.
//
//   JWT_SECRET=... PORT=7072 node server.mjs

import { createServer } from 'node:http';
import { createHmac, timingSafeEqual } from 'node:crypto';
import { Server } from 'socket.io';

const PORT = Number(process.env.PORT ?? 7072);
const HOST = process.env.HOST ?? '127.0.0.1';
const SECRET = process.env.JWT_SECRET;
if (!SECRET) {
  console.error('JWT_SECRET is required');
  process.exit(1);
}

const ROOM_RE = /^[A-Za-z0-9_\-=@,.;:]{1,164}$/;
const TYPES = new Set(['message', 'icon', 'sticker', 'image', 'audio']);

// --- HS256 verification with node:crypto -----------------------------------
function b64urlJson(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

function verify(token) {
  if (typeof token !== 'string') throw new Error('unauthorized: missing token');
  const parts = token.split('.');
  if (parts.length !== 3) throw new Error('unauthorized: invalid token');
  let header;
  try {
    header = b64urlJson(parts[0]);
  } catch {
    throw new Error('unauthorized: invalid token');
  }
  if (header.alg !== 'HS256') throw new Error('unauthorized: invalid token');
  const want = createHmac('sha256', SECRET).update(`${parts[0]}.${parts[1]}`).digest();
  const got = Buffer.from(parts[2], 'base64url');
  if (got.length !== want.length || !timingSafeEqual(got, want)) {
    throw new Error('unauthorized: invalid token');
  }
  let claims;
  try {
    claims = b64urlJson(parts[1]);
  } catch {
    throw new Error('unauthorized: invalid token');
  }
  if (typeof claims.exp === 'number' && claims.exp * 1000 < Date.now()) {
    throw new Error('unauthorized: token expired');
  }
  const id = claims.sub ?? claims.userId ?? claims.user_id;
  if (!(Number.isInteger(id) || (typeof id === 'string' && id.length > 0))) {
    throw new Error('unauthorized: invalid user id');
  }
  return {
    userId: id,
    username: claims.username ?? claims.preferred_username,
    fullName: claims.fullName ?? claims.name,
    avatar: claims.avatar ?? claims.picture,
  };
}

// --- rooms ------------------------------------------------------------------
const fail = (code, message) => ({ ok: false, error: { code, message } });

function canonicalPair(a, b) {
  const num = /^\d+$/;
  if (num.test(a) && num.test(b)) return BigInt(a) <= BigInt(b) ? [a, b] : [b, a];
  return a <= b ? [a, b] : [b, a];
}

/** null when the user may join, else an error ack. */
function admit(user, roomId) {
  if (typeof roomId !== 'string' || !ROOM_RE.test(roomId)) return fail('invalid_room', 'bad room id');
  if (roomId.startsWith('chat-')) {
    const parts = roomId.slice(5).split('-');
    if (parts.length !== 2 || !parts[0] || !parts[1]) return fail('invalid_room', 'bad direct room id');
    const [lo, hi] = canonicalPair(parts[0], parts[1]);
    if (lo !== parts[0]) return fail('invalid_room', `use chat-${lo}-${hi}`);
    const me = String(user.userId);
    if (me !== parts[0] && me !== parts[1]) return fail('forbidden', 'not a member of this direct room');
    return null;
  }
  if (roomId.startsWith('group-') || roomId.startsWith('private-') || roomId.startsWith('presence-')) {
    return fail('forbidden', 'not allowed');
  }
  return null;
}

function profile(user) {
  const out = { userId: user.userId };
  if (user.username !== undefined) out.username = user.username;
  if (user.fullName !== undefined) out.fullName = user.fullName;
  if (user.avatar !== undefined) out.avatar = user.avatar;
  return out;
}

// Messages kept in memory, per room; ids increase globally (so within a room).
const rooms = new Map(); // roomId -> { messages: [] }
let nextId = 0;

function membersOf(io, roomId) {
  const sids = io.of('/').adapter.rooms.get(roomId);
  const seen = new Map();
  if (!sids) return [];
  for (const sid of sids) {
    const s = io.of('/').sockets.get(sid);
    if (!s) continue;
    const key = String(s.data.user.userId);
    if (!seen.has(key)) seen.set(key, profile(s.data.user));
  }
  return [...seen.values()];
}

function userCountIn(io, roomId, userKey, exceptSid) {
  const sids = io.of('/').adapter.rooms.get(roomId);
  let n = 0;
  if (!sids) return 0;
  for (const sid of sids) {
    if (sid === exceptSid) continue;
    const s = io.of('/').sockets.get(sid);
    if (s && String(s.data.user.userId) === userKey) n++;
  }
  return n;
}

// --- server -----------------------------------------------------------------
const http = createServer((req, res) => {
  if (req.url === '/healthz' || req.url === '/readyz') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('ok');
    return;
  }
  res.writeHead(404);
  res.end();
});
const io = new Server(http, { serveClient: false });

io.use((socket, next) => {
  try {
    const token =
      socket.handshake.auth?.token ??
      socket.handshake.query?.token ??
      (socket.handshake.headers.authorization ?? '').replace(/^Bearer\s+/i, '') ??
      undefined;
    socket.data.user = verify(token || undefined);
    next();
  } catch (e) {
    next(new Error(e.message.startsWith('unauthorized') ? e.message : 'unauthorized: invalid token'));
  }
});

let socketSeq = 0;
io.on('connection', (socket) => {
  const user = socket.data.user;
  const userKey = String(user.userId);
  const joined = new Set();
  socket.emit('session', { socketId: `${process.pid}.${++socketSeq}`, userId: user.userId });

  const ackOf = (ack) => (typeof ack === 'function' ? ack : () => {});

  socket.on('join-room', (data, ack) => {
    ack = ackOf(ack);
    const roomId = typeof data === 'string' ? data : data?.roomId;
    const refused = admit(user, roomId);
    if (refused) return ack(refused);
    if (!joined.has(roomId)) {
      const firstTab = userCountIn(io, roomId, userKey, socket.id) === 0;
      socket.join(roomId);
      joined.add(roomId);
      if (!rooms.has(roomId)) rooms.set(roomId, { messages: [] });
      if (firstTab) socket.to(roomId).emit('user-online', { roomId, userId: user.userId, online: true });
    }
    ack({ ok: true, roomId, members: membersOf(io, roomId), history: [], hasMore: false });
  });

  const leave = (roomId) => {
    socket.leave(roomId);
    joined.delete(roomId);
    if (userCountIn(io, roomId, userKey, socket.id) === 0) {
      socket.to(roomId).emit('user-online', { roomId, userId: user.userId, online: false });
    }
  };

  socket.on('leave-room', (data, ack) => {
    ack = ackOf(ack);
    const roomId = typeof data === 'string' ? data : data?.roomId;
    if (typeof roomId !== 'string') return ack(fail('invalid_payload', 'roomId missing'));
    if (joined.has(roomId)) leave(roomId);
    ack({ ok: true });
  });

  socket.on('send-message', (data, ack) => {
    ack = ackOf(ack);
    if (data === null || typeof data !== 'object') return ack(fail('invalid_payload', 'not an object'));
    const roomId = data.roomId;
    if (typeof roomId !== 'string') return ack(fail('invalid_payload', 'roomId missing'));
    if (!joined.has(roomId)) return ack(fail('not_joined', 'join the room first'));
    const body = data.data && typeof data.data === 'object' ? data.data : data;
    const text = body.message ?? '';
    const type = body.type ?? 'message';
    if (typeof text !== 'string') return ack(fail('invalid_payload', 'message must be a string'));
    if (text.length > 4000) return ack(fail('too_large', 'message too long'));
    if (!text && !body.media && !body.audio) return ack(fail('invalid_payload', 'empty message'));
    if (!TYPES.has(type)) return ack(fail('invalid_payload', 'bad type'));
    const message = { id: String(++nextId), roomId, ...profile(user) };
    const clientId = body.clientId ?? body.id;
    if (clientId !== undefined && clientId !== null) message.clientId = String(clientId);
    message.message = text;
    message.type = type;
    if (body.media) message.media = body.media;
    if (body.audio) message.audio = body.audio;
    message.timestamp = Date.now();
    rooms.get(roomId).messages.push(message);
    io.to(roomId).emit('new-message', message);
    ack({ ok: true, message });
  });

  socket.on('typing', (data, ack) => {
    ack = ackOf(ack);
    const roomId = data?.roomId;
    if (!joined.has(roomId)) return ack(fail('not_joined', 'join the room first'));
    socket.to(roomId).emit('typing', { roomId, userId: user.userId, isTyping: !!data.isTyping });
    ack({ ok: true });
  });

  socket.on('disconnect', () => {
    for (const roomId of [...joined]) leave(roomId);
  });
});

http.listen(PORT, HOST, () => {
  console.log(`listening on http://${HOST}:${PORT}`);
});

const stop = () => {
  io.close();
  http.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
