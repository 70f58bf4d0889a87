package stream

import (
	"context"
	"fmt"

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

// raiseScript raises a stream's last ID and its max-deleted-entry-id to
// ARGV[1] unless they are at or past it, creating the stream (empty,
// expiring after ARGV[2] ms) when it is gone. KEYS[1] is the stream. It
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
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], 'raise', '0', 'MKSTREAM')
  redis.call('XGROUP', 'DESTROY', KEYS[1], 'raise')
  redis.call('XSETID', KEYS[1], ARGV[1], 'MAXDELETEDID', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return '0-0'
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last, gone = '0-0', '0-0'
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i+1] end
  if info[i] == 'max-deleted-entry-id' then gone = info[i+1] end
end
local top = last
if less(top, ARGV[1]) then top = ARGV[1] end
if less(gone, ARGV[1]) then
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
func (e *Redis) rollback(r *redisRoom, in streamInfo) {
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
		// Newer entries are held: read on after the last one read.
		r.seqKnown, r.accounted = false, r.last
	}
	r.skips, r.heldFrom, r.lossAhead, r.check = nil, ID{}, false, true
	// The next read begins after the cursor: a first entry that does not
	// follow it is no news here (collectStream).
	r.noticed, r.noticedSet = r.last, true
}

// raise runs raiseScript, on the pump's connection do, for the rooms of
// checks that a rollback left to raise. A room whose raise Redis refuses
// is logged and not tried again; one that got no answer stays to raise,
// and the error is returned.
func (e *Redis) raise(ctx context.Context, do doer, s *redisShard, checks []*redisRoom) error {
	var rooms []*redisRoom
	var cmds []rueidis.Completed
	s.mu.Lock()
	for _, r := range checks {
		if s.rooms[r.key] == r && !r.raise.IsZero() {
			rooms = append(rooms, r)
			cmds = append(cmds, e.client.B().Eval().Script(raiseScript).Numkeys(1).Key(r.key).Arg(r.raise.String(), e.ttlMs).Build())
		}
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
		r.raise = ID{}
	}
	return failed
}
