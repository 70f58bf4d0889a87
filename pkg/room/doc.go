// Package room is the chat application between the WebSocket server
// (package conn) and the message engine (package stream).
//
// Hub implements conn.Handler: a connection to /ws/chat/<room>/ joins that
// room (with a token, when Config.Auth sets a verification key: package auth); each
// text message it sends is counted against its rate limit (over it: a
// "rate_limited" error frame, then a 1008 close), checked (a JSON object
// with "username" and "message", else an error frame to the sender
// alone), re-encoded as {"username":…,"message":…} (the username its token
// fixes, if any) and published to the engine with the sender's
// connection ID. Hub.Deliver is the engine's Handler: it
// encodes each message into one frame and queues it on every local member
// of the room except the sender.
//
// Query options of the URL (options.go), all opt-in, add to that without
// changing what a client that sets none receives: ids=1 (each frame
// carries its stream ID), since=<id> and history=N (a replay on join,
// then live with no gap: session.go), ack=1 (acknowledgements, "cid"
// dedupe: ack.go) and presence=1 (member counts across nodes:
// presence.go). Hub.Close stops the presence poller.
//
// It is the only package that imports both conn and stream.
//
// The files, one mechanism each, in the order a message meets them:
//
//	hub.go         Hub, NewHub, Stats, Close; the lock order
//	route.go       Route: request path → room name, query options, token (auth)
//	membership.go  OnOpen/OnClose: join and leave, Subscribe/Unsubscribe on the engine
//	members.go     a room's member list, in chunks that never move
//	roomwork.go    the workers that subscribe and unsubscribe rooms
//	publish.go     OnMessage: limits, decode, Engine.Publish; published, the engine's Ack
//	ack.go         ack=1: the ack frame, the cid check
//	deliver.go     Deliver: the engine's messages → member queues; loss notices
//	errframe.go    the error frames a refused message's sender gets
//	decode.go      a client message → its fields (no allocation)
//	jsonscan.go    the validating JSON scanner decode.go uses
//	encode.go      every frame the Hub writes, and the buffer pool they share
//	limit.go       Config, its defaults, the rate limiters and penalties
//	options.go     the query options of the URL
//	session.go     replay (since=, history=) and the switch to live
//	presence.go    presence=1: the member-count poller
package room
