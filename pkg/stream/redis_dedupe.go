package stream

import (
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"strconv"

	"github.com/redis/rueidis"
)

// This file holds the publish path of messages that carry a CID: the Lua
// script the pump runs instead of the plain XADD, and its keys.
//
// A message with a CID is sent as EVALSHA of publishScript, in the same
// pipelined round trip and at the same place as a plain XADD would be, so
// a sender's messages keep their order. The script reads the CID's dedupe
// key, "<prefix>:{<shard>}#cid:<len(room)>:<room>:<cid>", which shares the
// hash tag of the room's stream (one Cluster slot, as scripts need): if it
// holds an ID, the message is a resend and the script returns that ID
// without appending anything; otherwise it appends the entry exactly as
// the plain path does (XADD MAXLEN ~, fields s and p) and stores the new
// ID in the dedupe key for DedupeWindow (SET PX). The room's length in
// the key keeps room "a:b" with CID "c" apart from room "a" with CID
// "b:c"; the '#' keeps dedupe keys apart from room streams, as it does
// signal and wake streams.
//
// NOSCRIPT (the server lost its script cache: a restart, a failover,
// SCRIPT FLUSH) means the script did not run, so nothing was stored: the
// pump sends those messages again, first in its next round trip, with
// EVAL and the script's text, which loads it again. So that a resent
// message cannot land after a later message of the same room, every
// message of a room that follows a scripted one in the same round trip
// is scripted too (without a dedupe key): a NOSCRIPT then sends them all
// back, in order.

// publishScript appends one entry to a room's stream unless its CID was
// seen. KEYS[1] is the stream, KEYS[2] (absent for a message without CID)
// the dedupe key; ARGV are the MAXLEN ~ threshold, the dedupe window in
// milliseconds, the sender and the payload. It returns {id, 1} for a
// duplicate, {id, 0} for a new entry.
const publishScript = `local k = KEYS[2]
if k then
  local id = redis.call('GET', k)
  if id then return {id, 1} end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 's', ARGV[3], 'p', ARGV[4])
if k then redis.call('SET', k, id, 'PX', ARGV[2]) end
return {id, 0}`

// publishSHA is the SHA1 of publishScript, for EVALSHA.
var publishSHA = func() string {
	sum := sha1.Sum([]byte(publishScript))
	return hex.EncodeToString(sum[:])
}()

// appendDedupeKey appends the dedupe key of cid in room to b; cidPre is
// the room's shard's "<prefix>:{<shard>}#cid:".
func appendDedupeKey(b []byte, cidPre, room, cid string) []byte {
	b = append(b, cidPre...)
	b = strconv.AppendInt(b, int64(len(room)), 10)
	b = append(b, ':')
	b = append(b, room...)
	b = append(b, ':')
	return append(b, cid...)
}

// scriptCmd builds the script call that publishes r: EVALSHA, or EVAL
// with the script's text when the last round trip found it missing.
func (p *pump) scriptCmd(r *pubReq) rueidis.Completed {
	e := p.e
	b := e.client.B()
	if r.dedupe {
		if p.evalText {
			return b.Eval().Script(publishScript).Numkeys(2).Key(r.key(), r.dedupeKey()).
				Arg(e.maxLen, e.dedupeMs, r.sender(), r.payload()).Build()
		}
		return b.Evalsha().Sha1(publishSHA).Numkeys(2).Key(r.key(), r.dedupeKey()).
			Arg(e.maxLen, e.dedupeMs, r.sender(), r.payload()).Build()
	}
	if p.evalText {
		return b.Eval().Script(publishScript).Numkeys(1).Key(r.key()).
			Arg(e.maxLen, e.dedupeMs, r.sender(), r.payload()).Build()
	}
	return b.Evalsha().Sha1(publishSHA).Numkeys(1).Key(r.key()).
		Arg(e.maxLen, e.dedupeMs, r.sender(), r.payload()).Build()
}

// parseScriptReply decodes publishScript's answer: the ID, and whether it
// is a duplicate's.
func parseScriptReply(rr rueidis.RedisResult) (ID, bool, error) {
	arr, err := rr.ToArray()
	if err != nil {
		return ID{}, false, err
	}
	if len(arr) != 2 {
		return ID{}, false, fmt.Errorf("%w: Redis answered the publish script with %d values, want 2", ErrUnconfirmed, len(arr))
	}
	raw, err := arr[0].ToString()
	if err != nil {
		return ID{}, false, fmt.Errorf("%w: Redis answered the publish script without an ID: %w", ErrUnconfirmed, err)
	}
	id, err := ParseID(raw)
	if err != nil {
		return ID{}, false, fmt.Errorf("%w: Redis answered the publish script with %q", ErrUnconfirmed, raw)
	}
	dup, _ := arr[1].AsInt64()
	return id, dup == 1, nil
}

// isNoScript reports whether err is Redis's NOSCRIPT: the script did not
// run.
func isNoScript(err error) bool {
	re, ok := rueidis.IsRedisErr(err)
	return ok && re.IsNoScript()
}
