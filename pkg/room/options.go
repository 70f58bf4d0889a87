package room

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/chatgw/gateway/pkg/conn"
	"github.com/chatgw/gateway/pkg/stream"
)

// The query options of the WebSocket URL (README, "The protocol"). Every
// one is opt-in: a client that sets none receives exactly the frames of
// the original app, and its connection carries no session.
//
//	ids=1        every chat frame also carries its stream ID: ,"id":"<ms>-<seq>"
//	since=<id>   on join, replay the entries after <id>, then live
//	history=N    on join, replay the last N entries (at most HISTORY_MAX), then live
//	ack=1        {"ack":"<id>","cid":…} for each accepted message; "cid" dedupes resends
//	presence=1   {"presence":{"members":N}} on join and when the count changes
//
// since wins over history: a client that reconnects with since= and
// kept history= in its URL resumes where it was.
const (
	optIDs      uint8 = 1 << iota // ids=1
	optAck                        // ack=1
	optPresence                   // presence=1
	optSince                      // since=<id>
	optHistory                    // history=N with N > 0 (after the cap)
)

// options are the query options of one connection.
type options struct {
	flags   uint8
	since   stream.ID // with optSince
	history int       // with optHistory: 1..HISTORY_MAX
}

// replays reports whether the join replays stored entries.
func (o options) replays() bool { return o.flags&(optSince|optHistory) != 0 }

// parseOptions reads the options from a raw query string. Other
// parameters are ignored, as the original app ignored the whole query
// string; an option with a bad value is an error (400), so that a client
// never silently loses what it asked for. history is capped at
// historyMax.
func parseOptions(query string, historyMax int) (options, error) {
	var o options
	for query != "" {
		var kv string
		kv, query, _ = strings.Cut(query, "&")
		k, v, _ := strings.Cut(kv, "=")
		if strings.ContainsAny(k, "%+") {
			dec, err := url.QueryUnescape(k)
			if err != nil {
				continue // not one of ours
			}
			k = dec
		}
		var flag uint8
		switch k {
		case "ids":
			flag = optIDs
		case "ack":
			flag = optAck
		case "presence":
			flag = optPresence
		case "since", "history":
		default:
			continue
		}
		if strings.ContainsAny(v, "%+") {
			dec, err := url.QueryUnescape(v)
			if err != nil {
				return o, optionError("%s has a bad %%-escape", k)
			}
			v = dec
		}
		switch k {
		case "since":
			id, err := stream.ParseID(v)
			if err != nil {
				return o, optionError("since=%q is not a stream ID; want <ms>-<seq> as received in \"id\" (ids=1)", v)
			}
			o.flags |= optSince
			o.since = id
		case "history":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return o, optionError("history=%q is not a number of messages (0 or more)", v)
			}
			o.history = min(n, historyMax)
			o.flags &^= optHistory
			if o.history > 0 {
				o.flags |= optHistory
			}
		default:
			switch v {
			case "1", "true":
				o.flags |= flag
			case "0", "false":
				o.flags &^= flag
			default:
				return o, optionError("%s=%q: want 1 or 0", k, v)
			}
		}
	}
	if o.flags&optSince != 0 {
		o.flags &^= optHistory // since wins
		o.history = 0
	}
	return o, nil
}

func optionError(format string, args ...any) error {
	return &conn.HandshakeError{Status: http.StatusBadRequest, Reason: fmt.Sprintf(format, args...)}
}

// The options ride in the connection key after the room and the
// username (see splitConnKey): "<room>\x00<user>\x00<flags>:<since>:<history>".
// A connection without options keeps the connection key of the original
// protocol.

// withOptions appends o to a connection key made by Route.
func withOptions(connKey string, o options) string {
	if o.flags == 0 {
		return connKey
	}
	if !strings.Contains(connKey, connKeySep) {
		connKey += connKeySep // no username
	}
	return connKey + connKeySep + strconv.Itoa(int(o.flags)) + ":" + o.since.String() + ":" + strconv.Itoa(o.history)
}

// connKeyOptions returns the options in a connection key made by
// withOptions.
func connKeyOptions(connKey string) options {
	_, rest, _ := strings.Cut(connKey, connKeySep)
	_, enc, ok := strings.Cut(rest, connKeySep)
	if !ok {
		return options{}
	}
	f, rest, _ := strings.Cut(enc, ":")
	since, hist, _ := strings.Cut(rest, ":")
	flags, _ := strconv.Atoi(f)
	o := options{flags: uint8(flags)}
	o.since, _ = stream.ParseID(since)
	o.history, _ = strconv.Atoi(hist)
	return o
}
