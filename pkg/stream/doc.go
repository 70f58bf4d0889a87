// Package stream carries chat messages between the gateway's connections
// through per-room streams. Engine is the seam, made of the parts a node
// needs: Broker (Publish appends a message to a room's stream, Subscribe
// makes the engine deliver a room's messages to the Handler given at
// construction), History (History, Last) and Presence (SetMembers,
// Members), with Health, Stats and Close.
//
// Two engines implement it: Memory, embedded and single-process, and
// Redis, on Redis Streams (XADD, XREAD), which shares rooms across any
// number of gateway nodes. Both pass the same conformance suite.
// ConnectRedis is NewRedis for a gateway that starts before its Redis
// answers: it serves at once, refusing, and hands over to Redis once
// reached.
//
// Each Message carries the ID of the connection that sent it, so the
// deliverer can skip the sender. stream knows rooms and opaque payloads,
// never sockets.
//
// Both engines also keep each room's recent history, whether anyone is
// subscribed or not, bounded like a Redis stream (REDIS_MAXLEN entries,
// gone REDIS_TTL after the last message): History reads what followed an
// ID and says whether some of it may be gone (a Page), Last the newest
// entries. A Message.CID makes Publish idempotent within
// REDIS_DEDUPE_WINDOW. And they count each room's members across nodes:
// every node reports its own with SetMembers, Members sums the live
// nodes'.
//
//	e, err := stream.NewMemoryWith(hub.Deliver, redisCfg.MemoryConfig())
//	...
//	end, err := e.Subscribe("lobby") // deliveries after end follow
//	page, err := e.History(ctx, "lobby", lastSeen, 100)
package stream
