//! The Lua scripts that make multi-key steps atomic. Redis runs a script
//! to completion before any other command, so what a script decides (the
//! next offset, first/last connection of a user) no two nodes can both
//! decide. Scripts are sent by SHA and loaded on first use (`Script`
//! handles `NOSCRIPT`), so a restarted Redis needs nothing from us.

use std::sync::LazyLock;

use redis::Script;

/// Records a webhook event (see `roomcast_core::events`) in the events
/// stream `stream`, unless `maxlen` is `'0'` (not recording). The fields
/// after `maxlen` are the event's: `n` name, `r` room, `u` user, `un`
/// username, `m` message frame. Shared by every script that decides
/// something an event reports, so that the event exists exactly when the
/// change does.
const EVENT_LUA: &str = r"
local function event(stream, maxlen, ...)
  if maxlen ~= '0' then
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', ...)
  end
end
";

/// Drops a room's oldest history entries while it holds more than
/// `max_len`, more than `max_bytes` of frames (0: no bound; counted in
/// `bkey`), or its oldest entry's `t` (micros) is before `cutoff` (0: no
/// bound). The newest entry always stays. At most 1000 entries per call,
/// so one call never holds Redis long (the next publish goes on).
const RETAIN_LUA: &str = r"
local function retain(log, bkey, max_len, max_bytes, cutoff)
  local len = redis.call('XLEN', log)
  local bytes = 0
  if max_bytes > 0 then bytes = tonumber(redis.call('GET', bkey) or '0') end
  local dropped = 0
  while len > 1 and dropped < 1000 do
    local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1]
    local over = len > max_len or (max_bytes > 0 and bytes > max_bytes)
    if not over and cutoff > 0 then
      local t = tonumber(first[2][4] or '')
      over = t ~= nil and t < cutoff
    end
    if not over then break end
    redis.call('XDEL', log, first[1])
    if max_bytes > 0 then bytes = bytes - #first[2][2] end
    len = len - 1
    dropped = dropped + 1
  end
  if max_bytes > 0 then
    if bytes < 0 then bytes = 0 end
    redis.call('SET', bkey, bytes)
  end
end
";

/// Stores and publishes one message, once per `(room, sender, client_id)`.
/// KEYS: seq, log, epoch, events stream, log bytes, and the publish's
/// de-duplication key when it has a `client_id`. ARGV: max_len, epoch
/// candidate, channel, frame before the offset, frame after it, envelope
/// head, mid and tail (see `envelope::ScriptHeader`), de-duplication window
/// (ms), message id, timestamp (micros), events maxlen (`0`: no
/// `message_stored` event), room, and the room's retention beyond its
/// count: max bytes, age cutoff (micros) and max age (ms), each `0` for
/// none. A room with only a count bound is trimmed by `XADD MAXLEN`; one
/// with bytes or age by [`RETAIN_LUA`], and with an age its history key
/// expires when its newest message does.
/// Last, `1` when the caller waits for replicas after (see `replicas`):
/// then the script does not `PUBLISH` but returns the envelope, for the
/// caller to publish once replicas have the message, so no one is shown a
/// message a failover can still lose.
/// Returns `{0, offset, epoch}` for a new message, or `{1, offset, epoch,
/// stored frame or '', id, timestamp}` when the key shows it was published
/// before (nothing is stored again); with `1` last, each with the envelope
/// (`''` for a repeat whose frame was trimmed) appended.
pub static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{EVENT_LUA}{RETAIN_LUA}{}",
        r"
if KEYS[6] then
  local first = redis.call('GET', KEYS[6])
  if first then
    local offset, id, ts = string.match(first, '^(%d+) (%S+) (%d+)$')
    local epoch = redis.call('GET', KEYS[3]) or ''
    local e = redis.call('XRANGE', KEYS[2], offset .. '-0', offset .. '-0')
    local frame = ''
    if #e > 0 then frame = e[1][2][2] end
    if ARGV[17] == '1' then
      local envelope = ''
      if frame ~= '' then envelope = ARGV[6] .. offset .. ARGV[7] .. epoch .. ARGV[8] .. frame end
      return {1, tonumber(offset), epoch, frame, id, ts, envelope}
    end
    return {1, tonumber(offset), epoch, frame, id, ts}
  end
end
local offset = redis.call('INCR', KEYS[1])
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[3], epoch)
end
local frame = ARGV[4] .. offset .. ARGV[5]
if ARGV[14] == '0' and ARGV[15] == '0' then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[1], offset .. '-0', 'f', frame, 't', ARGV[11])
else
  redis.call('XADD', KEYS[2], offset .. '-0', 'f', frame, 't', ARGV[11])
  if ARGV[14] ~= '0' then redis.call('INCRBY', KEYS[5], #frame) end
  retain(KEYS[2], KEYS[5], tonumber(ARGV[1]), tonumber(ARGV[14]), tonumber(ARGV[15]))
  if ARGV[16] ~= '0' then
    redis.call('PEXPIRE', KEYS[2], ARGV[16])
    if ARGV[14] ~= '0' then redis.call('PEXPIRE', KEYS[5], ARGV[16]) end
  end
end
local envelope = ARGV[6] .. offset .. ARGV[7] .. epoch .. ARGV[8] .. frame
if ARGV[17] ~= '1' then redis.call('PUBLISH', ARGV[3], envelope) end
if KEYS[6] then
  redis.call('SET', KEYS[6], offset .. ' ' .. ARGV[10] .. ' ' .. ARGV[11], 'PX', ARGV[9])
end
event(KEYS[4], ARGV[12], 'n', 'message_stored', 'r', ARGV[13], 'm', frame)
if ARGV[17] == '1' then return {0, offset, epoch, envelope} end
return {0, offset, epoch}
"
    ))
});

/// Reads one chunk of history and the position in one atomic step.
/// KEYS: seq, log, epoch, log bytes. ARGV: epoch candidate, mode (`after`:
/// from offset ARGV[3] up; `before`: down from below offset ARGV[3], 0
/// meaning the newest), ARGV[3], count, max bytes (the frames returned stop
/// before the one that would pass it, but the first is always returned),
/// and the room's retention: max_len, max bytes, age cutoff (micros): with
/// an age bound, entries past it are dropped first (a quiet room's old
/// messages go when someone reads, not only when someone publishes).
/// Returns `{epoch, latest offset, oldest retained offset (0: none),
/// {frames...}, {offsets...}, truncated (0/1)}`; `before` frames come newest
/// first. Callers read in chunks of a few dozen entries, so no one call
/// holds Redis long or builds a large reply.
pub static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{RETAIN_LUA}{}",
        r"
if ARGV[8] ~= '0' then
  retain(KEYS[2], KEYS[4], tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]))
end
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[3], epoch)
end
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local oldest = 0
if #first > 0 then oldest = tonumber(string.match(first[1][1], '^(%d+)')) end
local entries
if ARGV[2] == 'before' then
  local top = '+'
  if ARGV[3] ~= '0' then top = '(' .. ARGV[3] .. '-0' end
  entries = redis.call('XREVRANGE', KEYS[2], top, '-', 'COUNT', ARGV[4])
else
  entries = redis.call('XRANGE', KEYS[2], ARGV[3] .. '-0', '+', 'COUNT', ARGV[4])
end
local max = tonumber(ARGV[5])
local frames = {}
local offsets = {}
local bytes = 0
local truncated = 0
for i, e in ipairs(entries) do
  local f = e[2][2]
  bytes = bytes + #f
  if bytes > max and i > 1 then
    truncated = 1
    break
  end
  frames[i] = f
  offsets[i] = tonumber(string.match(e[1], '^(%d+)'))
end
return {epoch, seq, oldest, frames, offsets, truncated}
"
    ))
});

/// Gets or creates a user or a room (a hash with `name` and `created_at`,
/// listed in an index). KEYS: the hash, the index zset.
/// ARGV: id, name, created micros. Returns `{name, created}`.
pub static ENSURE_ENTITY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'name', ARGV[2], 'created_at', ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
return redis.call('HMGET', KEYS[1], 'name', 'created_at')
",
    )
});

/// The presence change steps shared by add, join, remove and the sweep.
/// `add` and `drop` take the keys of one connection: its user's
/// connections in the room (pconn), the room's presence hash (pres) and
/// ordered set (presz), the set of rooms with anyone online (presrooms),
/// the user's connections in any room (uconn), and the events stream with
/// its maxlen. They return 1 when the connection was the user's first
/// (last) in the room, recording the room, member and user events the
/// change makes. A user's first (last) connection anywhere is also
/// published on the control channel `ctl` as `s 1 <user>` (`s 0 <user>`),
/// for the sockets following it. `announce` publishes a change on the
/// room's channel: the exact frame's envelope, or in a room summarised
/// before or after the change (more than `above` members; the rule of
/// `Summary::as_diff`), the one-user diff's envelope joined around the
/// room's count. Nothing here walks a room's members.
const PRESENCE_LUA: &str = r"
local ctl = nil
local function add(pconn, pres, presz, presrooms, uconn, stream, maxlen, conn, user, username, room)
  if redis.call('SADD', pconn, conn) == 0 then return 0 end
  if redis.call('SADD', uconn, conn) == 1 and redis.call('SCARD', uconn) == 1 then
    event(stream, maxlen, 'n', 'user_online', 'u', user)
    redis.call('PUBLISH', ctl, 's 1 ' .. user)
  end
  if redis.call('SCARD', pconn) ~= 1 then return 0 end
  if redis.call('HLEN', pres) == 0 then
    event(stream, maxlen, 'n', 'room_occupied', 'r', room)
  end
  redis.call('HSET', pres, user, username)
  redis.call('ZADD', presz, 0, user)
  redis.call('SADD', presrooms, room)
  event(stream, maxlen, 'n', 'member_joined', 'r', room, 'u', user, 'un', username)
  return 1
end
local function drop(pconn, pres, presz, presrooms, uconn, stream, maxlen, conn, user, room)
  if redis.call('SREM', pconn, conn) == 0 then return 0, nil end
  local last, name = 0, nil
  if redis.call('SCARD', pconn) == 0 then
    name = redis.call('HGET', pres, user) or user
    redis.call('HDEL', pres, user)
    redis.call('ZREM', presz, user)
    event(stream, maxlen, 'n', 'member_left', 'r', room, 'u', user, 'un', name)
    if redis.call('HLEN', pres) == 0 then
      redis.call('SREM', presrooms, room)
      event(stream, maxlen, 'n', 'room_vacated', 'r', room)
    end
    last = 1
  end
  if redis.call('SREM', uconn, conn) == 1 and redis.call('SCARD', uconn) == 0 then
    event(stream, maxlen, 'n', 'user_offline', 'u', user)
    redis.call('PUBLISH', ctl, 's 0 ' .. user)
  end
  return last, name
end
local function announce(channel, joined, count, above, exact, diff_head, diff_tail)
  local before = count + 1
  if joined then before = count - 1 end
  if count > above or before > above then
    redis.call('PUBLISH', channel, diff_head .. count .. diff_tail)
  else
    redis.call('PUBLISH', channel, exact)
  end
end
";

/// Up to `limit` members of a room by user id from ZRANGEBYLEX `start`
/// (`-`, or `(<user id>` for after that user), read from its ordered set
/// `presz` and named from its hash `pres`: a flat `{user, username, ...}`.
/// O(limit), never the whole room. (`limit` is at most 1000, well within
/// what `unpack` takes.)
const PAGE_LUA: &str = r"
local function page_of(pres, presz, start, limit)
  local ids = redis.call('ZRANGEBYLEX', presz, start, '+', 'LIMIT', 0, limit)
  local page = {}
  if #ids > 0 then
    local names = redis.call('HMGET', pres, unpack(ids))
    for i, id in ipairs(ids) do
      page[2 * i - 1] = id
      page[2 * i] = names[i] or id
    end
  end
  return page
end
";

/// A presence script: the shared steps, then `body`.
fn presence_script(body: &str) -> Script {
    Script::new(&format!("{EVENT_LUA}{PRESENCE_LUA}{body}"))
}

/// Adds a connection to presence. KEYS: pconn, pres, nodeconns, presrooms,
/// uconn, events stream, presz. ARGV: conn, user, username, nodeconns
/// entry, room, events maxlen (`0`: no events), control channel. Returns 1
/// when it is the user's first connection in the room.
pub static PRESENCE_ADD: LazyLock<Script> = LazyLock::new(|| {
    presence_script(
        r"
ctl = ARGV[7]
redis.call('SADD', KEYS[3], ARGV[4])
return add(KEYS[1], KEYS[2], KEYS[7], KEYS[4], KEYS[5], KEYS[6], ARGV[6], ARGV[1], ARGV[2], ARGV[3], ARGV[5])
",
    )
});

/// Removes a connection. KEYS and ARGV as for add (the username is not
/// used), plus optionally the announcement: ARGV[8] channel, ARGV[9] the
/// exact `user_left` envelope, ARGV[10] and ARGV[11] the diff envelope's
/// pieces around the count, ARGV[12] the summary threshold. Published when
/// this was the user's last connection. Returns 1 when it was.
pub static PRESENCE_REMOVE: LazyLock<Script> = LazyLock::new(|| {
    presence_script(
        r"
ctl = ARGV[7]
redis.call('SREM', KEYS[3], ARGV[4])
local last = drop(KEYS[1], KEYS[2], KEYS[7], KEYS[4], KEYS[5], KEYS[6], ARGV[6], ARGV[1], ARGV[2], ARGV[5])
if last == 1 and ARGV[8] then
  announce(ARGV[8], false, redis.call('HLEN', KEYS[2]), tonumber(ARGV[12]), ARGV[9], ARGV[10], ARGV[11])
end
return last
",
    )
});

/// Removes every connection of a node whose lease is gone. KEYS: nodeconns,
/// lease, nodes, presrooms, events stream. ARGV: node, force (1: sweep
/// even with a lease, for a node sweeping its own previous life), the
/// presence key pieces of `Keys::presence_parts`: pres prefix, pconn
/// prefix, separator, uconn prefix; the events maxlen, the control
/// channel, and the presz prefix. Returns a flat list `room, user,
/// username, members left in the room, ...` of users now gone.
///
/// The per-room keys are derived inside the script from the entries, so this
/// script assumes a single Redis (not Redis Cluster).
pub static SWEEP_NODE: LazyLock<Script> = LazyLock::new(|| {
    presence_script(
        r"
ctl = ARGV[8]
if ARGV[2] ~= '1' and redis.call('EXISTS', KEYS[2]) == 1 then return {} end
local left = {}
for _, e in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local room, user, conn = string.match(e, '^(%S+) (%S+) (%S+)$')
  if room then
    local pconn = ARGV[4] .. room .. ARGV[5] .. user
    local last, name = drop(pconn, ARGV[3] .. room, ARGV[9] .. room, KEYS[4], ARGV[6] .. user, KEYS[5], ARGV[7], conn, user, room)
    if last == 1 then
      table.insert(left, room)
      table.insert(left, user)
      table.insert(left, name)
      table.insert(left, redis.call('HLEN', ARGV[3] .. room))
    end
  end
end
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '1' then redis.call('SREM', KEYS[3], ARGV[1]) end
return left
",
    )
});

/// Renews a node's lease. KEYS: lease, nodes. ARGV: node, owner, ttl ms.
/// Returns 1 if the lease was still ours; 2 if it had lapsed but the node
/// was not swept (it is still in `nodes`: e.g. Redis was unreachable or
/// restarting, and the sweeper held off), so nothing was lost; 0 if it was
/// swept or is held by another owner (then it is taken again).
pub static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
local known = redis.call('SISMEMBER', KEYS[2], ARGV[1])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
if cur == ARGV[2] then return 1 end
if cur == false and known == 1 then return 2 end
return 0
",
    )
});

/// Takes or renews a lock. KEYS: lock. ARGV: owner, ttl ms. Returns 1 when
/// the caller holds it afterwards.
pub static LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
",
    )
});

/// A connect's directory step. KEYS: room hash, rooms zset, user hash,
/// users zset, members set. ARGV: room id, create room (0/1), user id,
/// create user (0/1), username for a new user, now (micros).
/// Returns `{0}` no room, `{1}` no user, or `{2, username, created_at}`.
pub static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[2] ~= '1' then return {0} end
  redis.call('HSET', KEYS[1], 'name', ARGV[1], 'created_at', ARGV[6])
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
end
local user = redis.call('HMGET', KEYS[3], 'name', 'created_at')
if not user[1] then
  if ARGV[4] ~= '1' then return {1} end
  redis.call('HSET', KEYS[3], 'name', ARGV[5], 'created_at', ARGV[6])
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[3])
  user = {ARGV[5], ARGV[6]}
end
redis.call('SADD', KEYS[5], ARGV[3])
return {2, user[1], user[2]}
",
    )
});

/// [`PRESENCE_ADD`], then what the newcomer learns. Same KEYS and ARGV,
/// plus ARGV[8] the summary threshold, ARGV[9] the page size, and
/// optionally the announcement as for [`PRESENCE_REMOVE`] in ARGV[10..14]
/// (channel, exact `user_joined` envelope, diff pieces), published when
/// `first`. Returns `{first (0/1), count, {user, username, ...}}`: everyone
/// online, or in a room of more than the threshold, the first page by user
/// id (O(page), not O(room)).
pub static PRESENCE_JOIN: LazyLock<Script> = LazyLock::new(|| {
    presence_script(&format!(
        "{PAGE_LUA}{}",
        r"
ctl = ARGV[7]
redis.call('SADD', KEYS[3], ARGV[4])
local first = add(KEYS[1], KEYS[2], KEYS[7], KEYS[4], KEYS[5], KEYS[6], ARGV[6], ARGV[1], ARGV[2], ARGV[3], ARGV[5])
local count = redis.call('HLEN', KEYS[2])
local above = tonumber(ARGV[8])
if first == 1 and ARGV[10] then
  announce(ARGV[10], true, count, above, ARGV[11], ARGV[12], ARGV[13])
end
if count <= above then
  return {first, count, redis.call('HGETALL', KEYS[2])}
end
return {first, count, page_of(KEYS[2], KEYS[7], '-', ARGV[9])}
"
    ))
});

/// One page of a room's presence. KEYS: pres, presz. ARGV: the ZRANGEBYLEX
/// start (`-`, or `(<user id>` for after that user), limit. Returns
/// `{count, {user, username, ...}}`.
pub static PRESENCE_PAGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PAGE_LUA}{}",
        r"
return {redis.call('HLEN', KEYS[1]), page_of(KEYS[1], KEYS[2], ARGV[1], ARGV[2])}
"
    ))
});

/// The pub/sub health round trip's send: a write, then the publish the
/// session must see come back. As a script with a write, it fails wherever
/// the node's real work would (Redis loading its dataset, out of memory,
/// refusing writes), which a bare `PUBLISH` does not: Redis accepts it even
/// while loading. KEYS: health key. ARGV: channel, payload, ttl ms.
pub static ROUND_TRIP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return redis.call('PUBLISH', ARGV[1], ARGV[2])
",
    )
});
