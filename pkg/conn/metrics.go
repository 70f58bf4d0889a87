package conn

import (
	"errors"
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/gobwas/ws"
)

// The counters behind Stats.Refused and Stats.Closes: fixed sets of
// reasons and codes, so exporters get a bounded number of series.

// refuseReason is why a connection or an upgrade was refused.
type refuseReason uint8

const (
	refusedBadRequest  refuseReason = iota // 400: bad head, room, Host, WebSocket headers
	refusedAuth                            // 401: token missing or invalid
	refusedForbidden                       // 403: Origin, or a room the token does not allow
	refusedNotFound                        // 404: no such WebSocket path
	refusedTimeout                         // 408: no complete head within HANDSHAKE_TIMEOUT
	refusedTooLarge                        // 431: head over MAX_HEADER_BYTES
	refusedPerIP                           // 503: MAX_CONNECTIONS_PER_IP
	refusedCapacity                        // 503: MAX_CONNECTIONS, the descriptor budget, EMFILE
	refusedDraining                        // 503: Drain started
	refusedUnavailable                     // 503: the Handler could not take the join (engine down, join too slow)
	refusedOther                           // any other status
	numRefuseReasons
)

// refuseReasonNames are the names Stats.Refused uses.
var refuseReasonNames = [numRefuseReasons]string{
	"bad_request", "unauthorized", "forbidden", "not_found", "timeout", "too_large",
	"per_ip", "capacity", "draining", "unavailable", "other",
}

// refuseReasonOf maps the HTTP status of a refusal that is not a cap to
// its reason.
func refuseReasonOf(status int) refuseReason {
	switch status {
	case http.StatusBadRequest:
		return refusedBadRequest
	case http.StatusUnauthorized:
		return refusedAuth
	case http.StatusForbidden:
		return refusedForbidden
	case http.StatusNotFound:
		return refusedNotFound
	case http.StatusRequestTimeout:
		return refusedTimeout
	case http.StatusRequestHeaderFieldsTooLarge:
		return refusedTooLarge
	case http.StatusServiceUnavailable:
		return refusedUnavailable
	}
	return refusedOther
}

// refusalStatus returns the HTTP status of a refused gobwas/ws upgrade.
func refusalStatus(err error) int {
	var re *ws.ConnectionRejectedError
	if errors.As(err, &re) && re.StatusCode() != 0 {
		return re.StatusCode()
	}
	return http.StatusBadRequest
}

// closeCodes are the close codes the server sends, counted by code; the
// last slot counts any other code (echoes of unusual client codes).
var closeCodes = [...]ws.StatusCode{
	ws.StatusNormalClosure, ws.StatusGoingAway, ws.StatusProtocolError, ws.StatusUnsupportedData,
	ws.StatusInvalidFramePayloadData, ws.StatusPolicyViolation, ws.StatusMessageTooBig,
	ws.StatusInternalServerError, StatusTryAgainLater,
}

const numCloseSlots = len(closeCodes) + 1

// closeCounters count the close frames a server sent.
type closeCounters struct {
	server [numCloseSlots]atomic.Int64 // closes the server started, by code
	peer   [numCloseSlots]atomic.Int64 // closes the client started (echoed), by code
}

func closeSlot(code ws.StatusCode) int {
	for i, c := range closeCodes {
		if c == code {
			return i
		}
	}
	return len(closeCodes)
}

// count notes one close frame queued for cause.
func (cc *closeCounters) count(code ws.StatusCode, cause error) {
	if errors.Is(cause, ErrPeerClosed) {
		cc.peer[closeSlot(code)].Add(1)
	} else {
		cc.server[closeSlot(code)].Add(1)
	}
}

// snapshot returns the non-zero counts by "server <code>" or
// "client <code>" ("other" for an uncounted code).
func (cc *closeCounters) snapshot() map[string]int64 {
	out := map[string]int64{}
	for i := range numCloseSlots {
		name := "other"
		if i < len(closeCodes) {
			name = strconv.Itoa(int(closeCodes[i]))
		}
		if n := cc.server[i].Load(); n > 0 {
			out["server "+name] = n
		}
		if n := cc.peer[i].Load(); n > 0 {
			out["client "+name] = n
		}
	}
	return out
}
