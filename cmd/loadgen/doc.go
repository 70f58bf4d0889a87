// Command loadgen drives the chat gateway with many WebSocket clients and
// measures delivery end to end. It is the load tool of the project's
// high-connection tests.
//
// Connection i is member m = i / -rooms of room k = i mod -rooms (rooms are
// named <prefix><n>); it goes to gateway URL (k + m) mod len(-url), so the
// members of each room are spread over all the URLs and a multi-node run
// always crosses nodes, and binds source address i mod len(-src).
// The first -senders members of each room send -rate messages per second
// each (so the total is rooms × senders × rate out, and every message
// fans out to the other members). Every message is stamped in its
// "message" string as
//
//	lg:<run id>:<sender id>:<seq>:<unix nanos>[:padding]
//
// so each receiver measures send→receive latency and, per sender, counts
// duplicates and out-of-order arrivals (a seqTracker per sender). After
// -drain, loss is expected − delivered, where expected is the sum over
// senders of messages sent × room members other than the sender that
// stayed connected through the whole run.
//
// A connection has no goroutine and, once its handshake is done, no
// buffer: one of GOMAXPROCS epoll loops opens it (dial.go: a non-blocking
// connect and the upgrade request written and its answer read by the
// loop) and then reads it (poll.go), reading every readable socket into
// one buffer per loop and accounting for the frames in place, keeping
// bytes per connection only while a frame is incomplete. Senders have a
// goroutine each. The summary reports the load tool's own memory per held
// connection (about 0.75 KiB) and the descriptor limit it found.
//
// Phases: connect (paced by -connect-rate, bounded by -dial-concurrency
// and -connect-timeout), hold (-hold, idle), send (-duration), drain
// (-drain), close. Processes named by -pid are sampled from /proc at the
// start, after connect+hold, and after the drain; CPU is counted from
// after hold to after the drain. They are also sampled every second for
// -report, which plots (gonum.org/v1/plot, inline SVG) latency, messages
// sent and received, connections, and their CPU and memory over time.
//
// Usage sketch:
//
//	loadgen -url ws://127.0.0.1:8000 -conns 10000 -rooms 100 -senders 1 -rate 5 \
//		-duration 30s -src 127.0.0.2-127.0.0.9 -pid $(pidof gateway)
//
//	# several processes (each holds at most ~19 900 connections):
//	loadgen -conns 19000 -src 127.0.0.2-127.0.0.9 -json >a.json &
//	loadgen -conns 19000 -src 127.0.0.10-127.0.0.17 -json >b.json &
//	wait; loadgen -mode merge a.json b.json
//
//	# the CPU floor to compare a gateway with, same clients and shape:
//	loadgen -mode floor -listen 127.0.0.1:8200 &
//	loadgen -url ws://127.0.0.1:8200 -conns 1000 -rooms 100 -rate 1 -pid $!
//
// -mode floor (floor.go) is a minimal relay on one locked OS thread, one
// write(2) per delivery: the least CPU per delivery a gateway can spend.
//
// Only loopback targets and sources are accepted. Exit status: 0 clean;
// 1 loss, duplicates, reordering, failed or dropped connections, or
// unexpected frames; 2 bad flags.
package main
