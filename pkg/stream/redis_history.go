package stream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/rueidis"
)

// This file reads a room's history: History (XRANGE) and Last
// (XREVRANGE), on the engine's shared client rather than through a pump,
// bounded by Timeout.
//
// Truncation. Redis 7.0 does not record the IDs that MAXLEN trimming
// removed, but XINFO STREAM says how many entries the stream ever got
// (entries-added), how many it holds (length) and the oldest one held
// (recorded-first-entry-id). History reads them in one MULTI/EXEC with
// its XRANGE, so both see the same stream, and decides as follows for a
// read after X:
//
//   - X is held, or X is at or past the oldest entry held F (trimming
//     only removes the oldest entries): every entry after X is held.
//   - X is F's predecessor (F is <ms>-<k>, k > 0, and X is <ms>-<k-1>):
//     nothing between them.
//   - entries were removed from this stream (entries-added > length):
//     some may have followed X. Truncated.
//   - nothing was removed: the stream holds everything since its first
//     entry F, but an earlier stream of the room may have held entries
//     after X and be gone. It expired (REDIS_TTL after its last
//     write, less the refresh slack), so it ended at least that long
//     before F; or Redis lost data (a restart without persistence, a
//     failover), which the shard's epoch key records (below). Truncated
//     when X is older than either bound, not otherwise.
//   - the key does not exist: the same bounds, against now.
//
// The epoch. "<prefix>:{<shard>}#epoch" holds the time (unix ms, the
// writer's clock) from which Redis is known to hold the shard's data: it
// is written with SET NX by each pump when it connects, before it sends
// anything, and by History itself; after a restart that lost the data it
// is missing, and the first of them writes the restart's time.

// maxRead caps the COUNT of one read: far more than a stream holds.
const maxRead = 1 << 30

// History returns up to n entries of room after the entry after, oldest
// first, and what Page says about the room (see the notes above).
// Entries that cannot be decoded are skipped, and more are read in
// their place, so a short page is the end of the stream. The payloads
// point into the reply: read-only. Errors wrap ErrUnavailable, or are
// ErrClosed.
func (e *Redis) History(ctx context.Context, room string, after ID, n int) (Page, error) {
	if e.closed.Load() {
		return Page{}, ErrClosed
	}
	n = min(max(n, 0), maxRead)
	s := e.shards[e.shardOf(room)]
	key := s.keyPre + room
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	c := e.client
	start := "-"
	if !after.IsZero() {
		start = after.String()
	}
	read := func() []rueidis.RedisResult {
		return c.DoMulti(ctx,
			c.B().Multi().Build(),
			c.B().XinfoStream().Key(key).Build(),
			c.B().Xrange().Key(key).Start(start).End("+").Count(int64(n)+1).Build(),
			c.B().Set().Key(s.epochKey).Value(nowMs()).Nx().Get().Build(),
			c.B().Time().Build(),
			c.B().Exec().Build(),
		)
	}
	res := read()
	if err := res[len(res)-1].Error(); err != nil && !isRedisErr(err) && ctx.Err() == nil {
		// A pooled connection that broke while idle (Redis restarted):
		// rueidis does not retry a transaction; the read is safe to repeat.
		res = read()
	}
	h, err := parseHistoryReply(res)
	if err != nil {
		return Page{}, e.readError("read the history of", room, err)
	}
	in, entries, epoch, now := h.in, h.entries, h.epoch, h.now
	if epoch == 0 {
		epoch = now // just written: Redis held nothing of the shard before
	}
	held := false
	if len(entries) > 0 && !after.IsZero() {
		id, ok := entryID(&entries[0])
		held = ok && id == after
	}
	raw := len(entries)
	msgs := e.decodeEntries(entries)
	if held && len(msgs) > 0 && msgs[0].ID == after {
		msgs = msgs[1:]
	}
	if len(msgs) < n && raw == n+1 {
		// Undecodable entries took places of the page: read on past them.
		last, _ := entryID(&entries[raw-1])
		if msgs, err = e.readOn(ctx, room, key, msgs, last, n); err != nil {
			return Page{}, err
		}
	}
	if len(msgs) > n {
		msgs = msgs[:n]
	}
	truncated := e.truncated(after, held, in, epoch, now)
	if !in.maxDeleted.IsZero() {
		var gap bool
		msgs, gap = markDeleted(msgs, after, in.maxDeleted, len(msgs) < n)
		truncated = truncated || gap
	}
	return Page{Messages: msgs, End: in.lastGen, Truncated: truncated,
		Trimmed: !in.missing && (!in.hasAdded || in.added > in.length)}, nil
}

// markDeleted marks where entries recorded deleted (up to gone, the
// stream's max-deleted-entry-id: a rollback, redis_rollback.go) were
// between the entries of a page read after after: right after after
// (gap: the page is truncated), between two entries (a loss notice,
// Message.Lost, before the later one), or after the last one of the
// stream (end: a notice with a zero ID, nothing held after it). gone is
// never held, so entries that straddle it had deleted entries between
// them.
func markDeleted(msgs []Message, after, gone ID, end bool) ([]Message, bool) {
	if !after.Less(gone) {
		return msgs, false
	}
	for i, m := range msgs {
		if !gone.Less(m.ID) {
			continue
		}
		if i == 0 {
			return msgs, true
		}
		out := make([]Message, 0, len(msgs)+1)
		out = append(out, msgs[:i]...)
		out = append(out, Message{ID: m.ID, Lost: true, LostAfter: msgs[i-1].ID})
		return append(out, msgs[i:]...), false
	}
	// Nothing held past the record: at the stream's end, the entries
	// after the last one are gone; otherwise the next page tells.
	switch {
	case len(msgs) == 0:
		return msgs, true
	case end:
		return append(msgs, Message{Lost: true, LostAfter: msgs[len(msgs)-1].ID}), false
	}
	return msgs, false
}

// historyReply is what History's transaction answered.
type historyReply struct {
	in      streamInfo             // XINFO STREAM
	entries []rueidis.RedisMessage // XRANGE
	epoch   uint64                 // the shard's epoch (SET NX GET), 0 when just written
	now     uint64                 // TIME, in ms
}

// parseHistoryReply decodes the answers of History's transaction, EXEC
// last. On error it returns the first error of a queued command, which
// says more than EXEC's.
func parseHistoryReply(res []rueidis.RedisResult) (h historyReply, err error) {
	exec, err := res[len(res)-1].ToArray()
	if err == nil && len(exec) != 4 {
		err = fmt.Errorf("EXEC answered %d replies, want 4", len(exec))
	}
	if err == nil {
		h.in, err = parseStreamInfoMessage(&exec[0])
	}
	if err == nil {
		h.entries, err = exec[1].ToArray()
	}
	if err == nil {
		h.epoch, err = parseEpoch(&exec[2])
	}
	if err == nil {
		h.now, err = parseTime(&exec[3])
	}
	if err != nil {
		for _, rr := range res[:len(res)-1] {
			if rerr := rr.Error(); rerr != nil {
				return h, rerr
			}
		}
	}
	return h, err
}

// readOn appends to msgs the entries of key after from until it holds n
// or the stream ends, skipping (and counting) those it cannot decode.
func (e *Redis) readOn(ctx context.Context, room, key string, msgs []Message, from ID, n int) ([]Message, error) {
	c := e.client
	for len(msgs) < n {
		want := n - len(msgs)
		entries, err := c.Do(ctx, c.B().Xrange().Key(key).Start("("+from.String()).End("+").Count(int64(want)).Build()).ToArray()
		if err != nil {
			return nil, e.readError("read the history of", room, err)
		}
		msgs = append(msgs, e.decodeEntries(entries)...)
		if len(entries) < want {
			break
		}
		var ok bool
		if from, ok = entryID(&entries[len(entries)-1]); !ok {
			break // an entry whose ID cannot be read: the pump reports the room stuck
		}
	}
	return msgs, nil
}

// truncated decides Page.Truncated for a read after after (see the notes
// at the top of this file): held says after itself was read back; in is
// the stream's XINFO, epoch and now (unix ms) the shard's epoch and
// Redis's clock.
func (e *Redis) truncated(after ID, held bool, in streamInfo, epoch, now uint64) bool {
	switch {
	case after.IsZero() || held:
		return false
	case in.missing:
		return e.beforeRecord(after, epoch, now)
	case in.length == 0:
		// Every entry was removed (XDEL, XTRIM): lost if any came after.
		return after.Less(in.lastGen)
	case !after.Less(in.first):
		return false
	case in.first.Seq > 0 && after == ID{Ms: in.first.Ms, Seq: in.first.Seq - 1}:
		return false
	case !in.hasAdded || in.added > in.length:
		return true
	default:
		return e.beforeRecord(after, epoch, in.first.Ms)
	}
}

// beforeRecord reports whether entries after id may have existed before
// born (unix ms), in a stream of the room that is gone: id is older than
// the shard's epoch, or old enough that such a stream could have expired
// by born. A stream expires at least TTL after its last write, less the
// slack of its refresh (min(TTL/16, 1h)).
func (e *Redis) beforeRecord(id ID, epoch, born uint64) bool {
	gap := uint64((e.cfg.TTL - min(e.cfg.TTL/16, time.Hour)).Milliseconds())
	return id.Ms < epoch || (id.Ms < born && born-id.Ms >= gap)
}

// nowMs is the local clock in unix milliseconds, as the epoch's value.
func nowMs() string { return strconv.FormatInt(time.Now().UnixMilli(), 10) }

// parseEpoch decodes SET NX GET's answer on an epoch key: its value
// (unix ms) before, 0 when it did not exist.
func parseEpoch(m *rueidis.RedisMessage) (uint64, error) {
	if m.IsNil() {
		return 0, nil
	}
	s, err := m.ToString()
	if err != nil {
		return 0, fmt.Errorf("epoch key: %w", err)
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("epoch key holds %q, want unix milliseconds (delete it)", s)
	}
	return v, nil
}

// parseTime decodes TIME's answer as unix milliseconds.
func parseTime(m *rueidis.RedisMessage) (uint64, error) {
	arr, err := m.ToArray()
	if err != nil || len(arr) != 2 {
		return 0, fmt.Errorf("TIME answered %v", m)
	}
	sec, err1 := arr[0].AsInt64()
	usec, err2 := arr[1].AsInt64()
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("TIME answered %v", m)
	}
	return uint64(sec)*1000 + uint64(usec)/1000, nil
}

// Last returns the last n entries of room (n ≤ 0: none), oldest first,
// skipping (and counting) those it cannot decode, and reading further
// back in their place. The payloads point into the reply: read-only.
// Errors wrap ErrUnavailable, or are ErrClosed.
func (e *Redis) Last(ctx context.Context, room string, n int) ([]Message, error) {
	if e.closed.Load() {
		return nil, ErrClosed
	}
	if n <= 0 {
		return nil, nil
	}
	n = min(n, maxRead)
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	c := e.client
	key := e.key(room)
	var msgs []Message
	end := "+"
	for len(msgs) < n {
		want := n - len(msgs)
		entries, err := c.Do(ctx, c.B().Xrevrange().Key(key).End(end).Start("-").Count(int64(want)).Build()).ToArray()
		if err != nil {
			return nil, e.readError("read the last messages of", room, err)
		}
		msgs = append(msgs, e.decodeEntries(entries)...)
		if len(entries) < want {
			break
		}
		id, ok := entryID(&entries[len(entries)-1])
		if !ok {
			break
		}
		end = "(" + id.String()
	}
	slices.Reverse(msgs)
	return msgs, nil
}

// decodeEntries decodes the entries of an XRANGE or XREVRANGE reply,
// skipping (and counting) those it cannot decode. Payloads point into the
// reply.
func (e *Redis) decodeEntries(entries []rueidis.RedisMessage) []Message {
	if len(entries) == 0 {
		return nil
	}
	msgs := make([]Message, 0, len(entries))
	for i := range entries {
		id, sender, payload, ok := decodeEntry(&entries[i])
		if !ok {
			e.stats.malformed.Add(1)
			continue
		}
		msgs = append(msgs, Message{ID: id, Sender: sender, Payload: payload})
	}
	return msgs
}

// readError wraps err from a read of room's history: ErrClosed after
// Close, else ErrUnavailable, whatever Redis said.
func (e *Redis) readError(op, room string, err error) error {
	if e.closed.Load() && errors.Is(err, rueidis.ErrClosing) {
		return ErrClosed
	}
	return fmt.Errorf("stream: %s room %q: %w: %w", op, room, ErrUnavailable, err)
}
