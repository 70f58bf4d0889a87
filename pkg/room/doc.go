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
package room
