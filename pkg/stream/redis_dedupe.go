package stream

import (
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"strconv"

	"github.com/redis/rueidis"
)

// This file holds the publish path of messages that carry a CID: the Lua
// script the pump runs instead of plain XADDs, and its keys.
//
// The first message with a CID of a room in a round trip opens a script
// call for the room, sent as EVALSHA of publishScript at that message's
// place in the pipeline; every later message of the room in the round
// trip, with a CID or not, goes into the same call, in order. The script
// appends them one by one: for a message with a CID it first reads the
// CID's dedupe key, "<prefix>:{<shard>}#cid:<len(room)>:<room>:<cid>",
// which shares the hash tag of the room's stream (one Cluster slot, as
// scripts need): if it holds an ID, the message is a resend and the
// script answers that ID without appending anything (it writes the same
// value back, so that a WAIT after it, REDIS_WAIT_REPLICAS, covers the
// first copy however it was written); otherwise it
// appends the entry exactly as the plain path does (XADD MAXLEN ~, fields
// s and p) and stores the new ID in the dedupe key for DedupeWindow (SET
// PX). The room's length in the key keeps room "a:b" with CID "c" apart
// from room "a" with CID "b:c"; the '#' keeps dedupe keys apart from room
// streams, as it does the epoch keys. Each XADD runs under
// pcall, so a refused one (OOM) answers for its message alone.
//
// NOSCRIPT (the server lost its script cache: a restart, a failover,
// SCRIPT FLUSH) means the script did not run, so nothing of the call was
// stored: the pump sends its messages again, first in its next round
// trip, with EVAL and the script's text, which loads it again. As one
// call carries every message of the room from the first scripted one on,
// a NOSCRIPT cannot store a later message of the room before an earlier
// one, whatever other nodes load meanwhile.

// publishScript appends entries to one room's stream. KEYS[1] is the
// stream, KEYS[2...] the dedupe keys of the messages that have a CID;
// ARGV[1] and ARGV[2] are the MAXLEN ~ threshold and the dedupe window
// in milliseconds, then three arguments per message: the sender, the
// payload and the index in KEYS of its dedupe key (0: none). It answers
// two values per message: the ID and 1 for a duplicate, 0 for a new
// entry, or Redis's error and -1.
const publishScript = `local out = {}
for i = 3, #ARGV, 3 do
  local k = tonumber(ARGV[i+2])
  local id = false
  if k > 0 then id = redis.call('GET', KEYS[k]) end
  if id then
    redis.call('SET', KEYS[k], id, 'KEEPTTL')
    out[#out+1] = id
    out[#out+1] = 1
  else
    id = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 's', ARGV[i], 'p', ARGV[i+1])
    if type(id) == 'table' then
      out[#out+1] = id
      out[#out+1] = -1
    else
      if k > 0 then redis.call('SET', KEYS[k], id, 'PX', ARGV[2]) end
      out[#out+1] = id
      out[#out+1] = 0
    end
  end
end
return out`

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

// scriptCall is the script call of one room in a round trip: its place
// among the round trip's commands and its messages, in order.
type scriptCall struct {
	cmd  int
	reqs []*pubReq
}

// script adds r to its room's script call in this round trip, opening
// one at the end of p.cmds (a placeholder until buildScripts) when the
// room has none yet.
func (p *pump) script(r *pubReq) {
	i, ok := p.scriptRooms[r.room]
	if !ok {
		i = len(p.scripts)
		if i < cap(p.scripts) {
			p.scripts = p.scripts[:i+1]
			p.scripts[i].reqs = p.scripts[i].reqs[:0]
		} else {
			p.scripts = append(p.scripts, scriptCall{})
		}
		p.scripts[i].cmd = len(p.cmds)
		p.cmds = append(p.cmds, rueidis.Completed{})
		p.scriptRooms[r.room] = i
	}
	sc := &p.scripts[i]
	r.cmd, r.slot, r.scripted = sc.cmd, len(sc.reqs), true
	sc.reqs = append(sc.reqs, r)
}

// buildScripts builds the script calls of the round trip in their places:
// EVALSHA, or EVAL with the script's text when the last round trip found
// it missing.
func (p *pump) buildScripts() {
	e := p.e
	for i := range p.scripts {
		sc := &p.scripts[i]
		keys := append(p.scriptKeys[:0], sc.reqs[0].key())
		args := append(p.scriptArgs[:0], e.maxLen, e.dedupeMs)
		for _, r := range sc.reqs {
			k := "0"
			if r.dedupe {
				keys = append(keys, r.dedupeKey())
				k = strconv.Itoa(len(keys))
			}
			args = append(args, r.sender(), r.payload(), k)
		}
		b := e.client.B()
		if p.evalText {
			p.cmds[sc.cmd] = b.Eval().Script(publishScript).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build()
		} else {
			p.cmds[sc.cmd] = b.Evalsha().Sha1(publishSHA).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build()
		}
		p.scriptKeys, p.scriptArgs = keys[:0], args[:0]
	}
}

// parseScriptReply decodes the answer to message slot of a script call:
// the ID, and whether it is a duplicate's.
func parseScriptReply(rr rueidis.RedisResult, slot int) (ID, bool, error) {
	arr, err := rr.ToArray()
	if err != nil {
		return ID{}, false, err
	}
	if len(arr) <= 2*slot+1 {
		return ID{}, false, fmt.Errorf("%w: Redis answered the publish script with %d values, want %d or more", ErrUnconfirmed, len(arr), 2*slot+2)
	}
	if err := arr[2*slot].Error(); err != nil {
		return ID{}, false, err // refused (pcall): not stored
	}
	raw, err := arr[2*slot].ToString()
	if err != nil {
		return ID{}, false, fmt.Errorf("%w: Redis answered the publish script without an ID: %w", ErrUnconfirmed, err)
	}
	id, err := ParseID(raw)
	if err != nil {
		return ID{}, false, fmt.Errorf("%w: Redis answered the publish script with %q", ErrUnconfirmed, raw)
	}
	dup, _ := arr[2*slot+1].AsInt64()
	return id, dup == 1, nil
}

// isNoScript reports whether err is Redis's NOSCRIPT: the script did not
// run.
func isNoScript(err error) bool {
	re, ok := rueidis.IsRedisErr(err)
	return ok && re.IsNoScript()
}
