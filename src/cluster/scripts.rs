//! The Lua scripts that keep cluster presence consistent. Each runs atomically
//! in Redis, so "first socket in" / "last socket out" is decided once for the
//! whole cluster, and exactly one survivor reaps a dead node.
//!
//! Layout under prefix `P`, for room `R`:
//! - `P:nodes` (zset): node id → last heartbeat, in Redis-clock milliseconds
//! - `P:rooms` (set): rooms with at least one socket
//! - `P:node:<node>:rooms` (set): rooms where that node has sockets (for reaping)
//! - `P:room:R:sockets` (hash): socket id → `<node>|<user key>`
//! - `P:room:R:nodes` (hash): node id → its socket count in R
//! - `P:room:R:users` (hash): user key → socket count in R, all nodes together
//! - `P:room:R:members` (hash): user key → member JSON
//! - `P:room:R:order` (zset): user key → arrival sequence (`P:seq`)

use std::sync::LazyLock;

use redis::Script;

/// Removes one socket entry; returns the member JSON when it was the user's
/// last socket in the room (else false), and 1 when it was the room's last
/// socket of all (the room is vacated), else 0.
const DROP: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function drop(P, R, sock, val)
  local rk = P .. ':room:' .. R
  redis.call('HDEL', rk .. ':sockets', sock)
  local bar = string.find(val, '|', 1, true)
  local node = string.sub(val, 1, bar - 1)
  local user = string.sub(val, bar + 1)
  if redis.call('HINCRBY', rk .. ':nodes', node, -1) <= 0 then
    redis.call('HDEL', rk .. ':nodes', node)
    redis.call('SREM', P .. ':node:' .. node .. ':rooms', R)
  end
  local gone = false
  if redis.call('HINCRBY', rk .. ':users', user, -1) <= 0 then
    redis.call('HDEL', rk .. ':users', user)
    gone = redis.call('HGET', rk .. ':members', user)
    redis.call('HDEL', rk .. ':members', user)
    redis.call('ZREM', rk .. ':order', user)
  end
  local vacated = 0
  if redis.call('HLEN', rk .. ':sockets') == 0 then
    redis.call('DEL', rk .. ':users', rk .. ':members', rk .. ':order', rk .. ':nodes')
    vacated = redis.call('SREM', P .. ':rooms', R)
  end
  return gone, vacated
end
"#;

/// ARGV: prefix, room, socket, node, user key, member JSON.
/// Returns `[outcome, occupied]`: outcome 0 when the socket was already there, 1 for a
/// new socket, 2 when it is also the user's first; occupied 1 when it is the room's first socket.
pub static JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local P, R, sock, node, user, json = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local rk = P .. ':room:' .. R
if redis.call('HSETNX', rk .. ':sockets', sock, node .. '|' .. user) == 0 then return {0, 0} end
local occupied = redis.call('SADD', P .. ':rooms', R)
if redis.call('HINCRBY', rk .. ':nodes', node, 1) == 1 then
  redis.call('SADD', P .. ':node:' .. node .. ':rooms', R)
end
if redis.call('HINCRBY', rk .. ':users', user, 1) == 1 then
  redis.call('HSET', rk .. ':members', user, json)
  redis.call('ZADD', rk .. ':order', redis.call('INCR', P .. ':seq'), user)
  return {2, occupied}
end
return {1, occupied}
"#,
    )
});

/// ARGV: prefix, room, socket. Returns `[found, member JSON or nil, vacated]`.
pub static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{DROP}
local val = redis.call('HGET', ARGV[1] .. ':room:' .. ARGV[2] .. ':sockets', ARGV[3])
if not val then return {{0, false, 0}} end
local gone, vacated = drop(ARGV[1], ARGV[2], ARGV[3], val)
return {{1, gone, vacated}}
"#
    ))
});

/// ARGV: prefix, room, user key. Removes every socket of the user in the room,
/// on every node. Returns `[member JSON or nil, vacated]`: the member when they
/// were present, and 1 when that left the room empty.
pub static EVICT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{DROP}
local P, R, user = ARGV[1], ARGV[2], ARGV[3]
local all = redis.call('HGETALL', P .. ':room:' .. R .. ':sockets')
local gone, vacated = false, 0
for i = 1, #all, 2 do
  local val = all[i + 1]
  local bar = string.find(val, '|', 1, true)
  if bar and string.sub(val, bar + 1) == user then
    local g, v = drop(P, R, all[i], val)
    if g then gone = g end
    if v == 1 then vacated = 1 end
  end
end
return {{gone, vacated}}
"#
    ))
});

/// ARGV: prefix, room. Members in arrival order (JSON each).
pub static MEMBERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local rk = ARGV[1] .. ':room:' .. ARGV[2]
local out = {}
for _, user in ipairs(redis.call('ZRANGE', rk .. ':order', 0, -1)) do
  local json = redis.call('HGET', rk .. ':members', user)
  if json then table.insert(out, json) end
end
return out
"#,
    )
});

/// ARGV: prefix, node, score. Records this node's heartbeat at Redis' clock
/// (or at `score` when given: 0 marks the node for reaping at once).
/// Returns `[1 if the node was not listed, live nodes]`.
pub static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{DROP}
local score = tonumber(ARGV[3])
if score == nil then score = now_ms() end
local added = redis.call('ZADD', ARGV[1] .. ':nodes', score, ARGV[2])
return {{added, redis.call('ZCARD', ARGV[1] .. ':nodes')}}
"#
    ))
});

/// ARGV: prefix, node timeout in ms, this node. Removes every node silent for
/// longer than the timeout (never this one) with all its presence entries.
/// Returns `[dead nodes, room, member JSON or nil, vacated, …]`: one triple for
/// each user that has no socket left in that room (member JSON) and for each
/// room left without any socket (vacated 1), the member first.
pub static REAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{DROP}
local P, timeout, me = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local dead = redis.call('ZRANGEBYSCORE', P .. ':nodes', '-inf', now_ms() - timeout)
local out = {{0}}
for _, node in ipairs(dead) do
  if node ~= me then
    out[1] = out[1] + 1
    redis.call('ZREM', P .. ':nodes', node)
    local nk = P .. ':node:' .. node .. ':rooms'
    for _, R in ipairs(redis.call('SMEMBERS', nk)) do
      local all = redis.call('HGETALL', P .. ':room:' .. R .. ':sockets')
      for i = 1, #all, 2 do
        local val = all[i + 1]
        if string.sub(val, 1, #node + 1) == node .. '|' then
          local g, v = drop(P, R, all[i], val)
          if g or v == 1 then
            table.insert(out, R)
            table.insert(out, g)
            table.insert(out, v)
          end
        end
      end
    end
    redis.call('DEL', nk)
  end
end
return out
"#
    ))
});

/// KEYS: the user's budget key. ARGV: ms per event, burst.
/// GCRA: the key holds the theoretical arrival time; 1 = allowed, 0 = refused.
pub static RATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next = tat + interval
if next - now > burst * interval then return 0 end
redis.call('SET', KEYS[1], string.format('%.3f', next), 'PX', math.ceil(next - now) + 1000)
return 1
"#,
    )
});

/// KEYS: one key. ARGV: expected value. Deletes the key only if it holds that value.
pub static DELETE_IF: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});
