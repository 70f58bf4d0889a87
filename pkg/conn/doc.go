// Package conn is the gateway's WebSocket server: it accepts TCP
// connections, performs the RFC 6455 handshake with gobwas/ws's zero-copy
// Upgrader, and runs every upgraded connection on a small set of epoll
// event loops.
//
// An idle connection holds no goroutine and no read buffer: each loop
// reads its sockets into one shared buffer when epoll reports them
// readable, parses frames (keeping bytes only for a message that is still
// unfinished) and calls the Handler with complete text messages. Outbound
// frames are encoded once (Frame) and shared by all their recipients; each
// connection has a bounded queue that is written with writev and holds no
// memory while empty. A client that does not read is closed with 1008
// instead of slowing anyone down.
//
// A loop waiting for events is a goroutine parked in the Go runtime's
// netpoller (its epoll descriptor is registered there; poll.go), not a
// thread blocked in epoll_wait, and the calls it makes in a round are raw
// system calls: at chat rates the runtime then spends nothing between
// rounds (no P hand-offs, no sysmon polling). A loop reads at most
// readsPerWake (4) buffers from one socket per round, so one flooding
// client cannot starve the others of its loop.
//
// Requests that are not under Config.WSPrefix are handed, on the same
// port, to an ordinary http.Server running Config.HTTPHandler (health
// checks, metrics, pages).
//
// # Limits
//
// The server is meant to face the Internet: everything a client can leave
// half-finished is bounded in time and memory, and every cap answers the
// client with a reason. The Config fields (and the variables cmd/gateway
// reads them from) say what each bounds and its default:
//
//   - Connections: MaxConnectionsPerIP sockets of any kind per client
//     address (an IPv6 /64 counts as one), a descriptor budget derived from
//     FileLimit for all sockets, and MaxConnections WebSockets, kept below
//     the budget so plain HTTP (/healthz) still gets in when WebSockets
//     are capped. At the open-file limit itself, Serve frees a spare
//     descriptor to answer the waiting client 503 instead of spinning on
//     EMFILE, and backs off (acceptBackoff, doubling) when even that fails.
//   - Handshake: HandshakeTimeout and MaxHeaderBytes for the request head;
//     a head with bare LF line ends is refused at once, and a complete one
//     is held to RFC 9112's syntax (head.go) before it is upgraded or
//     handed to the HTTP server.
//   - Plain HTTP: ReadHeaderTimeout (HandshakeTimeout), HTTPReadTimeout,
//     HTTPWriteTimeout, HTTPIdleTimeout, MaxHeaderBytes, HTTPMaxBodyBytes.
//     Its connections count in Stats.HTTP and against the connection caps.
//   - Messages: MaxMessageBytes per message; FragmentTimeout for a message
//     (or frame) to be finished; MaxPartialBytes for the buffers held for
//     unfinished messages, all connections together (one connection holds
//     at most about 2×MaxMessageBytes); FrameRate and FrameBurst for frames
//     of any kind, checked without allocating.
//   - Output: MaxQueueBytes per client. A closing client that still reads
//     gets the frame in flight and the close frame whole: CloseTimeout is
//     extended while it acknowledges bytes, up to 10×CloseTimeout.
//
// Stats counts what the limits did: Refused, TimedOut, Limited, and what
// is held now (Open, WebSockets, HTTP, PartialBytes).
//
// # What the client sees
//
// Refusals before the upgrade are HTTP responses with a one-line
// text/plain reason naming the variable involved:
//
//	400  a head that breaks RFC 9112 (head.go: bare LF, malformed request
//	     line, obs-fold, whitespace before a colon, a control character
//	     in a value, a missing, repeated or bad Host, a repeated
//	     Sec-WebSocket-Key, Transfer-Encoding with Content-Length, bad
//	     Content-Length or Transfer-Encoding), for upgrades and plain
//	     HTTP alike; Host not in AllowedHosts; bad upgrade request;
//	     Handler.Route's refusal (or its own *HandshakeError status)
//	403  browser Origin not in AllowedOrigins (no Origin is accepted)
//	408  request head not complete within HandshakeTimeout
//	413  plain-HTTP body over HTTPMaxBodyBytes
//	431  request head over MaxHeaderBytes
//	501  a transfer coding other than chunked
//	505  an HTTP version other than 1.x
//	503  with Retry-After: MaxConnectionsPerIP, descriptor budget or
//	     EMFILE (answered as soon as the socket is accepted, before its
//	     request is read), MaxConnections (at the upgrade), a pending
//	     upgrade not completed within HandshakeTimeout, or the Handler's
//	     refusal from OnOpen or Conn.Complete
//
// Every close the server makes carries a status code and a reason; the
// mapping from cause to code lives in close.go:
//
//	1001  ping timeout; shutdown
//	1002  protocol violation (masking, reserved bits or opcodes,
//	      fragmentation, control frames, lengths, close codes)
//	1003  binary message
//	1007  invalid UTF-8
//	1008  slow consumer (MaxQueueBytes); too many frames (FrameRate,
//	      FrameBurst); message not finished in time (FragmentTimeout)
//	1009  message over MaxMessageBytes
//	1013  server busy: unfinished messages over MaxPartialBytes
//
// Usage:
//
//	srv, err := conn.NewServer(conn.Config{HTTPHandler: mux}, handler, logger)
//	if err != nil { ... }
//	if err := srv.Listen(":8000"); err != nil { ... }
//	go srv.Serve()
//	...
//	srv.Shutdown(ctx) // closes every connection with 1001
//
// The Handler routes upgrade requests (Route), admits connections
// (OnOpen, which may defer its answer to Conn.Complete), and receives
// messages and closes. conn knows WebSockets, never rooms or Redis.
package conn
