package stream

import (
	"context"
	"fmt"
	"strconv"

	"github.com/redis/rueidis"
)

// This file handles a room stream that lost entries this node had read:
// Redis failed over to a replica that had not got them yet (replication
// is asynchronous), or restarted without them. verify finds it (the
// stream's last ID is below the last entry read, the stream is gone, or
// that entry is gone while newer ones are held) and then:
//
//   - logs it and counts it (Stats.Rollbacks);
//   - raises the stream's last ID to the last entry read, so that Redis
//     never hands out an ID that clients were already given, and records
//     that entries up to it are gone as the stream's max-deleted-entry-id
//     (raiseScript). History tells a resume whose next entry lies past
//     that record (truncated), and every node whose members had not read
//     up to it tells them when it reads past it (redisRoom.gone);
//   - reads on from what the stream holds.
//
// Redis only keeps one such record per stream, the greatest: an older
// rollback of the same stream stays recorded in what History and the
// nodes decide from the entries themselves.
//
// A failover can also leave two primaries taking writes for a while: the
// old one partitioned from the sentinels but not from every gateway.
// Gateways move to the new primary at different times (each within
// watchEvery of learning it, redis_watch.go), and the IDs each
// primary hands out meanwhile come from the same clock. So a pump whose
// connection reaches another server than before (moved) raises every
// room it holds ahead of the new server's clock by 2 × watchEvery +
// REDIS_TIMEOUT before it publishes: what the new primary hands out lies
// past anything the old one can hand out to a gateway that has not moved
// yet. For those seconds a room's IDs run ahead of the clock (the
// sequence part counts up within one millisecond).

// raiseScript raises a stream's last ID and its max-deleted-entry-id to
// ARGV[1] unless they are at or past it, creating the stream (empty,
// expiring after ARGV[2] ms) when it is gone. With ARGV[3] above 0 it
// raises the last ID to the server's clock plus ARGV[3] ms too (not the
// record): after a failover, so that what this server hands out next
// lies past anything the old primary may still hand out to gateways
// that have not moved yet (a partition). KEYS[1] is the stream. It
// answers the stream's last ID before the call ("0-0" when it was gone).
// IDs are compared as numbers written in decimal without leading zeros.
const raiseScript = `local function num(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function less(x, y)
  local xm, xs = string.match(x, '^(%d+)-(%d+)$')
  local ym, ys = string.match(y, '^(%d+)-(%d+)$')
  if xm ~= ym then return num(xm, ym) end
  return num(xs, ys)
end
local floor = ARGV[1]
local ahead = tonumber(ARGV[3])
if ahead > 0 then
  local t = redis.call('TIME')
  local ms = string.format('%d-0', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ahead)
  if less(floor, ms) then floor = ms end
end
local last, gone = '0-0', '0-0'
if redis.call('EXISTS', KEYS[1]) == 0 then
  if floor == '0-0' then return last end
  redis.call('XGROUP', 'CREATE', KEYS[1], 'raise', '0', 'MKSTREAM')
  redis.call('XGROUP', 'DESTROY', KEYS[1], 'raise')
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i+1] end
    if info[i] == 'max-deleted-entry-id' then gone = info[i+1] end
  end
end
local top = last
if less(top, floor) then top = floor end
if ARGV[1] ~= '0-0' and less(gone, ARGV[1]) then
  redis.call('XSETID', KEYS[1], top, 'MAXDELETEDID', ARGV[1])
elseif top ~= last then
  redis.call('XSETID', KEYS[1], top)
end
return last`

// rolledBack reports whether in, r's XINFO STREAM, shows that entries r
// had read are gone from the stream: lastHeld says whether r's last
// entry is still held (true when it was not asked). Entries trimmed
// (older than the first one held) or deleted as Redis recorded (at or
// below max-deleted-entry-id) are not a rollback. s.mu must be held.
func rolledBack(r *redisRoom, in streamInfo, lastHeld bool) bool {
	switch {
	case r.last.IsZero():
		return false
	case in.missing:
		return r.seqKnown && r.seq > 0 // it had read entries of this stream
	case in.lastGen.Less(r.last):
		return true
	default:
		return !lastHeld && in.length > 0 && !r.last.Less(in.first) && in.maxDeleted.Less(r.last)
	}
}

// rollback handles the rollback of r that in shows (rolledBack): it logs
// and counts it, asks verify to raise the stream (r.raise) and moves the
// cursor to what the stream holds. Entries up to the last one read were
// delivered here already, so its members are not told again. s.mu must
// be held.
func (e *Redis) rollback(r *redisRoom, in streamInfo, below ID) {
	e.stats.rollbacks.Add(1)
	e.log.Warn("stream: Redis lost messages of the room that this node had read (a failover to a replica that lacked them, or a restart without them); recorded for resumes, its IDs raised past them",
		"room", r.name, "last_read_id", r.last.String(), "redis_last_id", in.lastGen.String(), "stream_gone", in.missing)
	if r.raise.Less(r.last) {
		r.raise = r.last
	}
	switch {
	case in.missing:
		// Counted afresh once caught up: the raise sets the new stream's
		// last ID, not its count.
		r.last, r.seq, r.seqKnown, r.accounted = ID{}, 0, false, ID{}
	case in.lastGen.Less(r.last):
		r.last, r.seq, r.seqKnown, r.accounted = in.lastGen, in.added, in.hasAdded, in.lastGen
	default:
		// Newer entries are held, and may have IDs up to the last one
		// read (written on the new primary while this node still read
		// the old one): read on after the greatest one held before it.
		r.last, r.seqKnown, r.accounted = below, false, below
	}
	r.skips, r.heldFrom, r.lossAhead, r.check = nil, ID{}, false, true
	// The next read begins after the cursor: a first entry that does not
	// follow it is no news here (collectStream).
	r.noticed, r.noticedSet = r.last, true
}

// raise runs raiseScript, on the pump's connection do, for the rooms of
// checks that a rollback or a move (redisRoom.ahead) left to raise. A room whose raise Redis refuses
// is logged and not tried again; one that got no answer stays to raise,
// and the error is returned.
func (e *Redis) raise(ctx context.Context, do doer, s *redisShard, checks []*redisRoom) error {
	var rooms []*redisRoom
	var cmds []rueidis.Completed
	s.mu.Lock()
	ahead := strconv.FormatInt((2*watchEvery + e.cfg.Timeout).Milliseconds(), 10)
	for _, r := range checks {
		if s.rooms[r.key] != r || r.raise.IsZero() && !r.ahead {
			continue
		}
		a := "0"
		if r.ahead {
			a = ahead
		}
		rooms = append(rooms, r)
		cmds = append(cmds, e.client.B().Eval().Script(raiseScript).Numkeys(1).Key(r.key).Arg(r.raise.String(), e.ttlMs, a).Build())
	}
	s.mu.Unlock()
	if len(cmds) == 0 {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	res := do.DoMulti(rctx, cmds...)
	cancel()
	var failed error
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range rooms {
		err := res[i].Error()
		switch {
		case err != nil && !isRedisErr(err):
			r.check = true // raise at the next read
			if failed == nil {
				failed = fmt.Errorf("raise the last ID of room %q after a rollback: %w", r.name, err)
			}
			continue
		case err != nil:
			e.log.Warn("stream: Redis refused to record a rollback of the room: resumes across it may not be told, and IDs could repeat",
				"room", r.name, "raise_to", r.raise.String(), "err", err)
		}
		r.raise, r.ahead = ID{}, false
	}
	return failed
}
