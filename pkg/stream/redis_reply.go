package stream

import (
	"errors"
	"fmt"
	"strings"
	"unsafe"

	"github.com/redis/rueidis"
)

// This file decodes Redis replies: XREAD's streams and entries, and
// XINFO STREAM. Decoders never copy payloads: they point into the reply.

// forEachStream calls fn with each stream of an XREAD reply: RESP3 answers
// a map of key to entries, RESP2 an array of [key, entries].
func forEachStream(reply rueidis.RedisMessage, fn func(key string, entries rueidis.RedisMessage)) error {
	if reply.IsMap() {
		m, err := reply.AsMap()
		if err != nil {
			return fmt.Errorf("XREAD reply: %w", err)
		}
		for k, v := range m {
			fn(k, v)
		}
		return nil
	}
	pairs, err := reply.ToArray()
	if err != nil {
		return fmt.Errorf("XREAD reply: %w", err)
	}
	for i := range pairs {
		kv, err := pairs[i].ToArray()
		if err != nil || len(kv) != 2 {
			return fmt.Errorf("XREAD reply: malformed stream %d", i)
		}
		key, _ := kv[0].ToString()
		fn(key, kv[1])
	}
	return nil
}

// entryID returns the ID of a stream entry, [id, [field, value, ...]].
func entryID(m *rueidis.RedisMessage) (id ID, ok bool) {
	kv, err := m.ToArray()
	if err != nil || len(kv) != 2 {
		return ID{}, false
	}
	raw, err := kv[0].ToString()
	if err != nil {
		return ID{}, false
	}
	ms, seq, found := strings.Cut(raw, "-")
	if id.Ms, ok = parseUint(ms); !ok || !found {
		return ID{}, false
	}
	if id.Seq, ok = parseUint(seq); !ok {
		return ID{}, false
	}
	return id, true
}

// decodeEntry decodes one stream entry, [id, [field, value, ...]], without
// copying: payload points into m.
func decodeEntry(m *rueidis.RedisMessage) (id ID, sender uint64, payload []byte, ok bool) {
	if id, ok = entryID(m); !ok {
		return ID{}, 0, nil, false
	}
	if sender, payload, ok = decodeFields(m); !ok {
		return ID{}, 0, nil, false
	}
	return id, sender, payload, true
}

// decodeFields decodes the fields of one stream entry, [id, [field, value,
// ...]]: the sender ("s") and the payload ("p"), which points into m. An
// entry without both, or with a sender that is not a decimal uint64, is
// malformed.
func decodeFields(m *rueidis.RedisMessage) (sender uint64, payload []byte, ok bool) {
	kv, err := m.ToArray()
	if err != nil || len(kv) != 2 {
		return 0, nil, false
	}
	fields, err := kv[1].ToArray()
	if err != nil || len(fields)%2 != 0 {
		return 0, nil, false
	}
	var haveSender, havePayload bool
	for i := 0; i < len(fields); i += 2 {
		f, _ := fields[i].ToString()
		v, err := fields[i+1].ToString()
		if err != nil {
			return 0, nil, false
		}
		switch f {
		case fieldSender:
			if sender, haveSender = parseUint(v); !haveSender {
				return 0, nil, false
			}
		case fieldPayload:
			payload = unsafe.Slice(unsafe.StringData(v), len(v))
			havePayload = true
		}
	}
	return sender, payload, haveSender && havePayload
}

// parseUint parses a decimal uint64, as strconv.ParseUint(s, 10, 64) but
// several times faster on the short numbers of stream entries.
func parseUint(s string) (uint64, bool) {
	if len(s) == 0 || len(s) > 20 {
		return 0, false
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		d := s[i] - '0'
		if d > 9 {
			return 0, false
		}
		// Up to 19 digits cannot overflow; check only the 20th.
		if i == 19 && (n > (1<<64-1)/10 || n*10 > 1<<64-1-uint64(d)) {
			return 0, false
		}
		n = n*10 + uint64(d)
	}
	return n, true
}

// streamInfo is what XINFO STREAM tells about a room's stream.
type streamInfo struct {
	missing bool  // the key does not exist
	lastGen ID    // last-generated-id: the last ID handed out
	first   ID    // first entry left, zero when empty
	length  int64 // entries in the stream
	added   int64 // entries-added: entries ever appended (Redis 7+)
	// hasAdded is false on Redis before 7, which does not count entries:
	// trimmed entries then go undetected.
	hasAdded bool
	// maxDeleted is max-deleted-entry-id (Redis 7+): the greatest ID
	// removed other than by trimming (XDEL, or the engine's record of a
	// rollback, raiseScript). Zero when none.
	maxDeleted ID
}

// parseStreamInfo decodes an XINFO STREAM reply. A missing key is not an
// error: it is reported in streamInfo.missing.
func parseStreamInfo(rr rueidis.RedisResult) (streamInfo, error) {
	m, err := rr.ToMessage()
	if err != nil && !isRedisErr(err) {
		return streamInfo{}, err
	}
	return parseStreamInfoMessage(&m)
}

// parseStreamInfoMessage decodes one XINFO STREAM reply message, as in a
// transaction's EXEC.
func parseStreamInfoMessage(msg *rueidis.RedisMessage) (streamInfo, error) {
	m, err := msg.AsMap()
	if err != nil {
		if re, ok := rueidis.IsRedisErr(err); ok && strings.Contains(strings.ToLower(re.Error()), "no such key") {
			return streamInfo{missing: true}, nil
		}
		return streamInfo{}, err
	}
	var in streamInfo
	v, ok := m["last-generated-id"]
	if !ok {
		return streamInfo{}, errors.New("XINFO STREAM reply without last-generated-id")
	}
	raw, _ := v.ToString()
	if in.lastGen, err = ParseID(raw); err != nil {
		return streamInfo{}, err
	}
	if v, ok := m["length"]; ok {
		in.length, _ = v.AsInt64()
	}
	if v, ok := m["recorded-first-entry-id"]; ok { // Redis 7+
		raw, _ := v.ToString()
		in.first, _ = ParseID(raw)
	} else if v, ok := m["first-entry"]; ok {
		if entry, err := v.ToArray(); err == nil && len(entry) > 0 {
			raw, _ := entry[0].ToString()
			in.first, _ = ParseID(raw)
		}
	}
	if v, ok := m["entries-added"]; ok {
		in.added, err = v.AsInt64()
		in.hasAdded = err == nil
	}
	if v, ok := m["max-deleted-entry-id"]; ok {
		raw, _ := v.ToString()
		in.maxDeleted, _ = ParseID(raw)
	}
	return in, nil
}
