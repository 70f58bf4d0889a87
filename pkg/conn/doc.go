// Package conn is the gateway's WebSocket server: it accepts TCP
// connections, performs the RFC 6455 handshake with gobwas/ws's zero-copy
// Upgrader, and runs every upgraded connection on a small set of epoll
// event loops.
//
// An idle connection holds no goroutine and no read buffer: each loop
// reads its sockets into one shared buffer when epoll reports them
// readable, parses frames (keeping bytes only for a frame that is still
// incomplete) and calls the Handler with complete text messages. Outbound
// frames are encoded once (Frame) and shared by all their recipients; each
// connection has a bounded queue that is written with writev and holds no
// memory while empty. A client that does not read is closed with 1008
// instead of slowing anyone down.
//
// A loop waiting for events is a goroutine parked in the Go runtime's
// netpoller (its epoll descriptor is registered there; poll.go), not a
// thread blocked in epoll_wait, and the calls it makes in a round are raw
// system calls: at chat rates the runtime then spends nothing between
// rounds (no P hand-offs, no sysmon polling).
//
// Requests that are not under Config.WSPrefix are handed, on the same
// port, to an ordinary http.Handler (health checks, metrics, pages).
//
// Every close the server makes carries a status code and a reason; the
// mapping from cause to code lives in close.go.
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
// conn knows WebSockets, never rooms or Redis.
package conn
