// Package netlab builds a small network inside this machine for tests:
// each host is a Linux network namespace with one interface (eth0) and
// an address of its own, joined to the others by a veth pair and one
// bridge. A test can run a program on a host, dial from a host, and cut a
// host's link (no FIN, no RST: a true partition) or shape its rate (tbf);
// everything is removed when the test ends, even when it fails or times
// out, and what a killed test left behind is removed by the next one.
//
//	lab := netlab.New(t)
//	gw, client := lab.Host("gw"), lab.Host("client")
//	cmd := gw.Command("bin/gateway")    // runs in gw's namespace
//	c, err := client.Dial("tcp", gw.Addr().String()+":8000")
//	lab.Cut(client)                      // packets to and from client vanish
//	lab.Heal(client)
//	lab.Partition(gw, redis)             // only these two lose each other
//	lab.Rejoin(gw, redis)
//
// It needs root and the ip and tc commands (Debian's iproute2). Without
// them New fails the test with what is missing: it never skips.
package netlab

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// prefix starts the name of everything a lab makes (namespaces, links),
// followed by the test process's pid: leftovers of a process that is gone
// are removed by the next New.
const prefix = "nl"

// Lab is a network of hosts on one bridge. Its methods belong to the test
// goroutine.
type Lab struct {
	t      testing.TB
	id     string // prefix + pid + a counter: unique among live labs
	bridge string
	subnet int // hosts are 10.77.<subnet>.<n>/24
	hosts  []*Host
}

// Host is one namespace of a Lab.
type Host struct {
	lab  *Lab
	Name string // the test's name for it
	ns   string // the namespace's name
	veth string // the link's end on the bridge, in the root namespace
	addr netip.Addr
}

var (
	labsMu sync.Mutex
	labs   int // labs made by this process, for unique names
)

// New makes an empty lab (a bridge) and removes it, with every host, when
// the test ends.
func New(t testing.TB) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("netlab: network namespaces need root (running as uid %d): run the network tests as root, as CI does (make network)", os.Geteuid())
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("netlab: %s not found: install it with `apt-get install -y iproute2`", tool)
		}
	}
	removeLeftovers()
	labsMu.Lock()
	labs++
	n := labs
	labsMu.Unlock()
	l := &Lab{t: t, id: fmt.Sprintf("%s%d-%d", prefix, os.Getpid(), n), subnet: (os.Getpid()*8 + n) % 250}
	l.bridge = l.id + "br"
	t.Cleanup(l.remove)
	l.run("ip", "link", "add", l.bridge, "type", "bridge")
	l.run("ip", "link", "set", l.bridge, "up")
	return l
}

// Host adds a host named name (for messages) with the next address.
func (l *Lab) Host(name string) *Host {
	l.t.Helper()
	n := len(l.hosts) + 1
	h := &Host{lab: l, Name: name, ns: fmt.Sprintf("%s-%d", l.id, n), veth: fmt.Sprintf("%sv%d", l.id, n),
		addr: netip.AddrFrom4([4]byte{10, 77, byte(l.subnet), byte(n)})}
	l.hosts = append(l.hosts, h)
	peer := h.veth + "p"
	l.run("ip", "netns", "add", h.ns)
	l.run("ip", "link", "add", h.veth, "type", "veth", "peer", "name", peer)
	l.run("ip", "link", "set", peer, "netns", h.ns)
	l.run("ip", "link", "set", h.veth, "master", l.bridge)
	l.run("ip", "link", "set", h.veth, "up")
	l.run("ip", "-n", h.ns, "link", "set", "lo", "up")
	l.run("ip", "-n", h.ns, "link", "set", peer, "name", "eth0")
	l.run("ip", "-n", h.ns, "addr", "add", h.addr.String()+"/24", "dev", "eth0")
	l.run("ip", "-n", h.ns, "link", "set", "eth0", "up")
	return h
}

// Addr returns the host's address.
func (h *Host) Addr() netip.Addr { return h.addr }

// Command returns a command that runs name with args in the host's
// namespace (ip netns exec).
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.ns, name}, args...)...)
}

// Dial connects from the host: the socket is made in its namespace, then
// used like any other (the test process's goroutines, Go's netpoller).
func (h *Host) Dial(network, addr string) (net.Conn, error) {
	var c net.Conn
	err := h.inNamespace(func() error {
		var err error
		c, err = net.Dial(network, addr)
		return err
	})
	return c, err
}

// Listen listens in the host's namespace, as Dial dials.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := h.inNamespace(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// inNamespace runs fn on an OS thread moved into the host's namespace.
// Sockets fn makes belong to that namespace for their whole life. The
// thread is not reused: it ends with the locked goroutine, so no other
// goroutine ever runs in the namespace by accident.
func (h *Host) inNamespace(fn func() error) error {
	nsf, err := os.Open(filepath.Join("/var/run/netns", h.ns))
	if err != nil {
		return fmt.Errorf("netlab: host %s: %w", h.Name, err)
	}
	defer nsf.Close()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if err := unix.Setns(int(nsf.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("netlab: setns to host %s: %w", h.Name, err)
			return
		}
		done <- fn()
	}()
	return <-done
}

// Cut drops every packet to and from h at its link on the bridge: its
// connections stay open at both ends with nothing arriving, as when a
// host or its network dies (no FIN, no RST).
func (l *Lab) Cut(h *Host) {
	l.t.Helper()
	l.run("ip", "link", "set", h.veth, "down")
}

// Heal undoes Cut.
func (l *Lab) Heal(h *Host) {
	l.t.Helper()
	l.run("ip", "link", "set", h.veth, "up")
}

// Partition separates a and b: each drops what it would send to the
// other (a blackhole route in each namespace), while both still reach
// every other host. Their connections stay open with nothing arriving.
func (l *Lab) Partition(a, b *Host) {
	l.t.Helper()
	l.run("ip", "-n", a.ns, "route", "add", "blackhole", b.addr.String()+"/32")
	l.run("ip", "-n", b.ns, "route", "add", "blackhole", a.addr.String()+"/32")
}

// Rejoin undoes Partition.
func (l *Lab) Rejoin(a, b *Host) {
	l.t.Helper()
	l.run("ip", "-n", a.ns, "route", "del", "blackhole", b.addr.String()+"/32")
	l.run("ip", "-n", b.ns, "route", "del", "blackhole", a.addr.String()+"/32")
}

// Shape limits what the bridge sends to h to rate (tc's units, such as
// "1mbit"), with tbf; Shape(h, "") removes the limit.
func (l *Lab) Shape(h *Host, rate string) {
	l.t.Helper()
	if rate == "" {
		l.run("tc", "qdisc", "del", "dev", h.veth, "root")
		return
	}
	l.run("tc", "qdisc", "replace", "dev", h.veth, "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms")
}

// run runs an ip or tc command and fails the test with its output when
// it fails.
func (l *Lab) run(name string, args ...string) {
	l.t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		l.t.Fatalf("netlab: %s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
}

// remove deletes the lab's namespaces (which takes their veth pairs) and
// its bridge, ignoring what is already gone.
func (l *Lab) remove() {
	for _, h := range l.hosts {
		_ = exec.Command("ip", "netns", "del", h.ns).Run()
		_ = exec.Command("ip", "link", "del", h.veth).Run()
	}
	_ = exec.Command("ip", "link", "del", l.bridge).Run()
}

// removeLeftovers deletes the namespaces and links of labs whose process
// is gone (a test killed by its timeout runs no cleanup).
func removeLeftovers() {
	gone := func(name string) bool {
		rest, ok := strings.CutPrefix(name, prefix)
		if !ok {
			return false
		}
		pidText, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid <= 0 {
			return false
		}
		return syscall.Kill(pid, 0) == syscall.ESRCH
	}
	if out, err := exec.Command("ip", "netns", "list").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) > 0 && gone(f[0]) {
				_ = exec.Command("ip", "netns", "del", f[0]).Run()
			}
		}
	}
	if out, err := exec.Command("ip", "-o", "link", "show").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if gone(name) {
				_ = exec.Command("ip", "link", "del", name).Run()
			}
		}
	}
}
