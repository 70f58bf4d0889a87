// Package stream carries chat messages between the gateway's connections
// through per-room streams. Engine is the seam: Publish appends a message
// to a room's stream, Subscribe makes the engine deliver a room's messages
// to the Handler given at construction.
//
// Two engines implement it: Memory, embedded and single-process, and
// Redis, on Redis Streams (XADD, XREAD), which shares rooms across any
// number of gateway nodes. Both pass the same conformance suite.
//
// Each Message carries the ID of the connection that sent it, so the
// deliverer can skip the sender. stream knows rooms and opaque payloads,
// never sockets.
package stream
