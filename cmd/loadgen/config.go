package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// errUsage marks errors in the command line; run exits 2 for them.
var errUsage = errors.New("loadgen: bad flags")

// Bounds that keep one run finite whatever the flags say.
const (
	maxSourceAddrs = 65536
	maxPhase       = 24 * time.Hour
	maxDrain       = 5 * time.Minute
	maxRooms       = 1 << 20
)

// config is the parsed command line.
type config struct {
	mode           string        // "run", "merge", "floor" or "attack"
	attack         string        // attack mode: flood, reconnect, continuation or fragments
	attackInterval time.Duration // attack fragments: time between the bytes a holder adds
	attackBytes    int           // attack fragments: size of each holder's first fragment
	listen         string        // floor mode: loopback address to listen on
	urls           []string      // gateway base URLs, ws://host:port
	placement      string        // -placement: "spread" or "room"
	byRoom         bool          // -placement room: a room's members all on URL room mod len(urls)
	conns          int           // connections to open
	rooms          int           // rooms to spread them over
	roomPrefix     string        // room name prefix; "" means "lg<run>-"
	connectRate    float64       // connects per second; 0 = as fast as dialConc allows
	dialConc       int           // dials in flight at most
	dialTimeout    time.Duration // per connection, TCP connect + handshake
	connectTimeout time.Duration // bound on the whole connect phase
	src            []netip.Addr  // local addresses to bind, round-robin; nil = kernel's choice
	senders        int           // senders per room
	rate           float64       // messages per second per sender
	duration       time.Duration // send phase
	hold           time.Duration // idle time after all connected, before sending
	drain          time.Duration // wait after the last send before counting loss
	pids           []int         // processes to sample
	jsonOut        bool          // print the summary as JSON
	maxConns       int           // refuse -conns above this
	pad            int           // padding bytes per message
	writeTimeout   time.Duration // per frame write
	quiet          bool          // no progress line
	files          []string      // merge mode: summaries to merge
	cpuProfile     string        // write a CPU profile of loadgen here
	options        string        // query string added to every WebSocket URL
	replayMessages int           // replay mode: messages to publish and replay
	remote         bool          // allow targets and sources that are not loopback
	label          string        // names this process in progress lines (several processes)
	report         string        // write an HTML report here
	cid            bool          // senders add a "cid" to each message
}

// parseFlags parses args (without the program name). Errors wrap errUsage;
// -h returns flag.ErrHelp after printing the usage to stderr.
func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	var urls, src, pids string
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { usage(fs, stderr) }
	fs.StringVar(&c.mode, "mode", "run", "`run` a load test, `merge` the -json summaries named as arguments into one, or run the `floor` relay on -listen (the CPU floor to compare a gateway with)")
	fs.StringVar(&c.attack, "attack", "flood", "-mode attack: `kind` of hostile client: flood (one member sends as fast as it can; -conns members read), reconnect (the same, reconnecting after each burst of 200), continuation (endless empty continuation frames), fragments (-conns connections hold unfinished messages)")
	fs.DurationVar(&c.attackInterval, "attack-interval", time.Second, "-mode attack fragments: each holder adds one byte every `interval`")
	fs.IntVar(&c.attackBytes, "attack-bytes", 1, "-mode attack fragments: `bytes` of each holder's first fragment")
	fs.StringVar(&c.listen, "listen", "127.0.0.1:8200", "-mode floor: loopback `ip:port` to listen on")
	fs.StringVar(&urls, "url", "ws://127.0.0.1:8000", "gateway base `URLs`, comma-separated; member m of room k (connection m*rooms+k) goes to URL (k+m) mod count, so every room spans all URLs; loopback only; /ws/chat/<room>/ is appended; a host name is looked up once and its first address of the -src family (IPv4 without -src) is used")
	fs.StringVar(&c.placement, "placement", "spread", "how members meet the -url gateways: `spread` (member m of room k on URL (k+m) mod count: every room spans every gateway, each message crosses nodes) or room (every member of room k on URL k mod count, as a load balancer hashing the room's path places them: haproxy balance uri)")
	fs.IntVar(&c.conns, "conns", 100, "connections to open (`N`); connection i joins room i mod -rooms")
	fs.IntVar(&c.rooms, "rooms", 10, "rooms to spread the connections over (`M`)")
	fs.StringVar(&c.roomPrefix, "room-prefix", "", "room name `prefix`; rooms are <prefix><0..M-1>; default lg<run id>- so runs never share rooms")
	fs.Float64Var(&c.connectRate, "connect-rate", 0, "new connections per second (`rate`); 0 means as fast as -dial-concurrency allows")
	fs.IntVar(&c.dialConc, "dial-concurrency", 128, "dials (TCP + handshake) in flight at most")
	fs.DurationVar(&c.dialTimeout, "dial-timeout", 10*time.Second, "timeout for one connection's TCP connect and handshake")
	fs.DurationVar(&c.connectTimeout, "connect-timeout", 10*time.Minute, "bound on the whole connect phase; dials not started by then count as failed")
	fs.StringVar(&src, "src", "", "local source `addresses` bound round-robin, as a comma list of IPs and ranges (127.0.0.2-127.0.0.20); each gives ~28k ephemeral ports per gateway; empty = kernel's choice")
	fs.IntVar(&c.senders, "senders", 1, "senders per room (`K`): the first K connections of each room send, all members receive")
	fs.Float64Var(&c.rate, "rate", 1, "messages per second per sender; total out = rooms*senders*rate, total in = out*(members per room - 1); 0 = no sending")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "how long to send once all are connected and -hold has passed")
	fs.DurationVar(&c.hold, "hold", time.Second, "idle time after all are connected, before sending (lets joins settle; make it long for idle-memory measurements)")
	fs.DurationVar(&c.drain, "drain", 2*time.Second, "wait after the last send before counting loss; later deliveries count as lost")
	fs.StringVar(&pids, "pid", "", "comma-separated `PIDs` (or \"self\") whose RSS and CPU are sampled from /proc at start, after connect+hold, at the end, and every second for -report")
	fs.BoolVar(&c.jsonOut, "json", false, "print the summary as JSON on stdout (includes the encoded latency histogram, for -mode merge)")
	fs.IntVar(&c.maxConns, "max-conns", 19000, "safety bound: refuse -conns above this")
	fs.IntVar(&c.pad, "pad", 0, "padding `bytes` appended to each message after the stamp")
	fs.DurationVar(&c.writeTimeout, "write-timeout", 5*time.Second, "timeout for writing one frame; a sender that hits it stops")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile of loadgen itself to `file` (go tool pprof)")
	fs.BoolVar(&c.quiet, "quiet", false, "no live progress line on stderr")
	fs.IntVar(&c.replayMessages, "replay-messages", 10000, "-mode replay: messages to publish, then replay to a client joining with since=0-0 (the gateway's REDIS_MAXLEN must hold them)")
	fs.StringVar(&c.report, "report", "", "write a self-contained HTML report (verdict; plots of latency by percentile and per second, messages sent and received per second, connections, and the -pid processes' CPU and RSS over time) to `file`; with -mode merge too")
	fs.StringVar(&c.label, "label", "", "`name` printed at the start of each progress line, to tell several loadgen processes apart")
	fs.BoolVar(&c.remote, "remote", false, "allow -url targets and -src addresses that are not loopback (a gateway on another host you are allowed to load)")
	fs.StringVar(&c.options, "options", "", "query `string` added to every WebSocket URL, e.g. ids=1&ack=1 (the gateway's options)")
	fs.BoolVar(&c.cid, "cid", false, "senders add a unique \"cid\" to each message (for -options ack=1: acknowledgements and dedupe)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return c, err
		}
		return c, fmt.Errorf("%w: %v", errUsage, err)
	}
	c.files = fs.Args()
	if err := c.finish(urls, src, pids); err != nil {
		return c, fmt.Errorf("%w: %v", errUsage, err)
	}
	return c, nil
}

// usage prints the help text.
func usage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprint(w, `loadgen drives the chat gateway with many WebSocket clients and measures
delivery: loss, duplicates, order and latency of every message, per receiver.

usage:
  loadgen [flags]                        run a load test against loopback gateways
  loadgen -mode merge [-json] FILE...    merge -json summaries of several processes
  loadgen -mode floor [-listen ADDR]     the cost floor: a minimal relay on one locked
                                         thread, one write(2) per delivery; drive it
                                         with loadgen -url ws://ADDR -pid <its pid>
  loadgen -mode attack -attack KIND      one hostile client (flood, reconnect,
                                         continuation, fragments) against -url, with a bystander
                                         room measuring latency before and during it
  loadgen -mode replay                   publish -replay-messages into a room, then
                                         time their replay to a client joining
                                         with ?since=

Exit status: 0 all good; 1 loss, duplicates, reordering, failed or dropped
connections, or error frames seen; 2 bad flags.

flags:
`)
	fs.PrintDefaults()
}

// finish validates the parsed flags and fills the derived fields.
func (c *config) finish(urls, src, pids string) error {
	switch c.mode {
	case "run":
	case "replay":
		if c.replayMessages < 1 || c.replayMessages > 10_000_000 {
			return errors.New("-replay-messages must be between 1 and 10000000")
		}
		c.rooms, c.senders = 1, 0
	case "attack":
		switch c.attack {
		case "flood", "reconnect", "continuation", "fragments":
		default:
			return fmt.Errorf("-attack %q: want flood, reconnect, continuation or fragments", c.attack)
		}
		if c.attackInterval <= 0 {
			return errors.New("-attack-interval must be positive")
		}
		if c.attackBytes < 1 || c.attackBytes > maxFrameSize {
			return fmt.Errorf("-attack-bytes must be between 1 and %d", maxFrameSize)
		}
		c.rooms, c.senders = 1, 0 // the attack picks its own rooms
	case "floor":
		if len(c.files) > 0 {
			return fmt.Errorf("unexpected arguments %q; only -mode merge takes file arguments", c.files)
		}
		return nil
	case "merge":
		if len(c.files) == 0 {
			return errors.New("-mode merge needs the summary files as arguments: loadgen -mode merge a.json b.json")
		}
		return nil
	default:
		return fmt.Errorf("-mode %q: want run, merge, floor, attack or replay", c.mode)
	}
	if len(c.files) > 0 {
		return fmt.Errorf("unexpected arguments %q; only -mode merge takes file arguments", c.files)
	}
	if _, err := url.ParseQuery(c.options); err != nil || strings.ContainsAny(c.options, "#? ") {
		return fmt.Errorf("-options %q: want a query string such as ids=1&ack=1", c.options)
	}
	switch c.placement {
	case "spread":
	case "room":
		c.byRoom = true
	default:
		return fmt.Errorf("-placement %q: want spread or room", c.placement)
	}
	var err error
	if c.urls, err = parseURLs(urls, c.remote); err != nil {
		return err
	}
	if c.src, err = parseSources(src, c.remote); err != nil {
		return err
	}
	if c.pids, err = parsePIDs(pids); err != nil {
		return err
	}
	return c.checkNumbers()
}

// checkNumbers checks the numeric flags against each other and the bounds.
func (c *config) checkNumbers() error {
	switch {
	case c.conns < 1:
		return errors.New("-conns must be at least 1")
	case c.conns > c.maxConns:
		return fmt.Errorf("-conns %d is above -max-conns %d; raise -max-conns if you mean it", c.conns, c.maxConns)
	case c.rooms < 1 || c.rooms > maxRooms:
		return fmt.Errorf("-rooms must be between 1 and %d", maxRooms)
	case c.rooms > c.conns:
		return fmt.Errorf("-rooms %d is more than -conns %d; every room needs a member", c.rooms, c.conns)
	case c.mode == "run" && c.rate > 0 && c.senders > 0 && c.conns/c.rooms < 2:
		return fmt.Errorf("-conns %d over -rooms %d leaves rooms with one member, who would receive nothing (a sender never gets its own message back); give at least 2 members per room (-conns >= 2 x -rooms)", c.conns, c.rooms)
	case c.senders < 0 || c.senders > c.conns/c.rooms:
		return fmt.Errorf("-senders must be between 0 and the smallest room's size %d (-conns/-rooms)", c.conns/c.rooms)
	case c.rate < 0 || c.rate > 1e6:
		return errors.New("-rate must be between 0 and 1e6 messages per second per sender")
	case c.connectRate < 0:
		return errors.New("-connect-rate must be 0 (unlimited) or positive")
	case c.dialConc < 1:
		return errors.New("-dial-concurrency must be at least 1")
	case c.dialTimeout <= 0 || c.connectTimeout <= 0 || c.writeTimeout <= 0:
		return errors.New("-dial-timeout, -connect-timeout and -write-timeout must be positive")
	case c.duration < 0 || c.duration > maxPhase || c.hold < 0 || c.hold > maxPhase || c.connectTimeout > maxPhase:
		return fmt.Errorf("-duration, -hold and -connect-timeout must be between 0 and %v", maxPhase)
	case c.drain < 0 || c.drain > maxDrain:
		return fmt.Errorf("-drain must be between 0 and %v", maxDrain)
	case c.pad < 0 || c.pad > maxFrameSize/2:
		return fmt.Errorf("-pad must be between 0 and %d", maxFrameSize/2)
	case !validRoomName(c.roomPrefix):
		return fmt.Errorf("-room-prefix %q: room names may hold only ASCII letters, digits, _ - .", c.roomPrefix)
	}
	return nil
}

// validRoomName reports whether s uses only the characters rooms allow.
func validRoomName(s string) bool {
	for i := 0; i < len(s); i++ {
		b := s[i]
		ok := b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_' || b == '-' || b == '.'
		if !ok {
			return false
		}
	}
	return true
}

// parseURLs splits a comma list of gateway base URLs and checks that each
// is ws:// to a loopback host (any host with remote). Trailing slashes are
// dropped; a chat path is refused with the base URL to use instead.
func parseURLs(list string, remote bool) ([]string, error) {
	var out []string
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("-url %q: %v", s, err)
		}
		if u.Scheme != "ws" {
			return nil, fmt.Errorf("-url %q: scheme must be ws (plain WebSocket)", s)
		}
		if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return nil, fmt.Errorf("-url %q: give only ws://host:port; put gateway options in -options", s)
		}
		if strings.Contains(u.Path, "/ws/") || strings.HasSuffix(u.Path, "/ws") {
			return nil, fmt.Errorf("-url %q: give the gateway's base URL, ws://%s; loadgen appends /ws/chat/<room>/ itself", s, u.Host)
		}
		if !remote {
			if err := checkLoopback(u.Hostname()); err != nil {
				return nil, fmt.Errorf("-url %q: %w; add -remote to load a gateway on another host", s, err)
			}
		}
		out = append(out, strings.TrimRight(s, "/"))
	}
	if len(out) == 0 {
		return nil, errors.New("-url: need at least one gateway URL, e.g. ws://127.0.0.1:8000")
	}
	return out, nil
}

// checkLoopback accepts "localhost" and loopback IP literals (127.0.0.0/8,
// ::1) and refuses everything else: loadgen is for this machine only.
func checkLoopback(host string) error {
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("host %q is not an IP literal or localhost; loadgen only targets loopback (127.0.0.0/8, ::1, localhost)", host)
	}
	if !a.Unmap().IsLoopback() {
		return fmt.Errorf("address %s is not loopback; loadgen only targets loopback (127.0.0.0/8, ::1, localhost)", a)
	}
	return nil
}

// parseSources parses a comma list of IPs and inclusive ranges
// "first-last" into the addresses to bind, in order: loopback ones, or
// any with remote.
func parseSources(list string, remote bool) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, item := range strings.Split(list, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(item, "-")
		first, err := parseSourceAddr(lo, remote)
		if err != nil {
			return nil, err
		}
		last := first
		if isRange {
			if last, err = parseSourceAddr(hi, remote); err != nil {
				return nil, err
			}
		}
		if first.Is4() != last.Is4() || last.Less(first) {
			return nil, fmt.Errorf("-src range %q: give first-last of one family with first <= last", item)
		}
		if rangeSize(first, last)+len(out) > maxSourceAddrs {
			return nil, fmt.Errorf("-src: more than %d addresses", maxSourceAddrs)
		}
		for a := first; ; a = a.Next() {
			out = append(out, a)
			if a == last {
				break
			}
		}
	}
	return out, nil
}

// parseSourceAddr parses one -src address and requires loopback unless
// remote.
func parseSourceAddr(s string, remote bool) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return a, fmt.Errorf("-src %q: not an IP address; use e.g. 127.0.0.2-127.0.0.20", s)
	}
	a = a.Unmap()
	if !a.IsLoopback() && !remote {
		return a, fmt.Errorf("-src %s: source addresses must be loopback (127.0.0.0/8 or ::1) unless -remote", a)
	}
	return a, nil
}

// rangeSize returns last-first+1, saturated at maxSourceAddrs+1.
func rangeSize(first, last netip.Addr) int {
	a := new(big.Int).SetBytes(first.AsSlice())
	b := new(big.Int).SetBytes(last.AsSlice())
	d := b.Sub(b, a)
	if !d.IsInt64() || d.Int64() >= maxSourceAddrs {
		return maxSourceAddrs + 1
	}
	return int(d.Int64()) + 1
}

// parsePIDs parses a comma list of process IDs; "self" is this process.
func parsePIDs(list string) ([]int, error) {
	var out []int
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		switch s {
		case "":
			continue
		case "self":
			out = append(out, os.Getpid())
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("-pid %q: want a positive process ID or self", s)
		}
		out = append(out, n)
	}
	return out, nil
}
