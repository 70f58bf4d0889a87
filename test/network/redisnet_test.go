//go:build network

package network

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/netlab"
	"github.com/chatgw/gateway/internal/redistest"
)

// This file builds replicated Redis topologies on a lab network, each
// server on a host of its own (or, for a Cluster, two per host), as
// internal/redistest does on loopback: a primary, a replica and three
// sentinels (startSentinelNet), and a Cluster of three masters with a
// replica each (startClusterNet). Every process is killed when the test
// ends; nothing is written to disk but configuration and logs, in the
// test's temporary directories.

// Ports of the topologies' servers on their hosts.
const (
	redisPort    = 6379
	sentinelPort = 26379
	// clusterPort is a Cluster master's port; clusterPort+1 its
	// neighbour's replica; clusterPort+2 a replacement node.
	clusterPort = 7000
)

// sentinelMaster is the name the sentinels monitor the primary under.
const sentinelMaster = "chatgw"

// topologyTimeout bounds how long a topology may take to form or to heal.
const topologyTimeout = 30 * time.Second

// redisProc is one redis-server (or sentinel) process on a lab host. Its
// methods belong to the test goroutine, except do, which any goroutine
// may call.
type redisProc struct {
	t    *testing.T
	h    *netlab.Host
	port int
	dir  string   // working directory: configuration, nodes.conf, log
	argv []string // arguments after the binary

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when the running process has exited
}

// startRedisProc runs redis-server on host h at port with the arguments
// every test server has (no persistence, its own directory, replication
// without a delay before a full sync) and then args, waits until it
// answers PING, and kills it when the test ends.
func startRedisProc(t *testing.T, h *netlab.Host, port int, args ...string) *redisProc {
	t.Helper()
	dir := t.TempDir()
	base := []string{
		"--port", strconv.Itoa(port), "--bind", h.Addr().String(), "--dir", dir,
		"--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
		"--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
	}
	return runRedisProc(t, h, port, dir, append(base, args...))
}

// startSentinelProc runs a sentinel on host h (redis-server <conf>
// --sentinel) monitoring the primary at primary with a quorum of 2, a
// down-after of a second and failovers retried after 2 s, and waits
// until it answers PING. Its configuration file lives in its own
// directory: the sentinel rewrites it.
func startSentinelProc(t *testing.T, h *netlab.Host, primary string) *redisProc {
	t.Helper()
	dir := t.TempDir()
	host, port, _ := strings.Cut(primary, ":")
	conf := filepath.Join(dir, "sentinel.conf")
	body := strings.Join([]string{
		"port " + strconv.Itoa(sentinelPort),
		"bind " + h.Addr().String(),
		"dir " + dir,
		"protected-mode no",
		"sentinel resolve-hostnames no",
		"sentinel announce-ip " + h.Addr().String(),
		"sentinel announce-port " + strconv.Itoa(sentinelPort),
		"sentinel monitor " + sentinelMaster + " " + host + " " + port + " 2",
		"sentinel down-after-milliseconds " + sentinelMaster + " 1000",
		"sentinel failover-timeout " + sentinelMaster + " 2000",
		"sentinel parallel-syncs " + sentinelMaster + " 1",
		"",
	}, "\n")
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatalf("write the sentinel configuration: %v", err)
	}
	return runRedisProc(t, h, sentinelPort, dir, []string{conf, "--sentinel"})
}

// runRedisProc starts redis-server with argv on host h, waits until port
// answers PING, and kills the process when the test ends.
func runRedisProc(t *testing.T, h *netlab.Host, port int, dir string, argv []string) *redisProc {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server not found: install it with `apt-get install -y redis-server` (or run `make test`, which installs it)")
	}
	r := &redisProc{t: t, h: h, port: port, dir: dir, argv: argv}
	r.start()
	t.Cleanup(r.kill)
	return r
}

// start starts the process and waits until it answers PING, failing the
// test with the end of its log when it does not within 10 s.
func (r *redisProc) start() {
	r.t.Helper()
	logf, err := os.OpenFile(filepath.Join(r.dir, "redis.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		r.t.Fatal(err)
	}
	cmd := r.h.Command("redis-server", r.argv...)
	cmd.Dir = r.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		r.t.Fatalf("start redis-server on %s: %v", r.h.Name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	r.mu.Lock()
	r.cmd, r.done = cmd, done
	r.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := r.do("PING"); err == nil {
			return
		}
		select {
		case <-done:
			r.t.Fatalf("redis-server %s exited at start: %s", r.name(), r.logTail())
		default:
		}
		if time.Now().After(deadline) {
			r.kill()
			r.t.Fatalf("redis-server %s did not answer PING within 10 s: %s", r.name(), r.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill stops the process with SIGKILL, as a crash would, and waits for it
// to exit. Killing a stopped process does nothing.
func (r *redisProc) kill() {
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.cmd = nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// addr returns the server's address, "<host address>:<port>".
func (r *redisProc) addr() string { return r.h.Addr().String() + ":" + strconv.Itoa(r.port) }

// name returns the server's host and port, for messages.
func (r *redisProc) name() string { return r.h.Name + ":" + strconv.Itoa(r.port) }

// logTail returns the end of the server's log.
func (r *redisProc) logTail() string {
	b, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(bytes.TrimSpace(b))
}

// do sends one command to the server from its own host (which reaches it
// whatever the partitions) and returns the reply as nodeCommand does.
func (r *redisProc) do(args ...string) (string, error) { return nodeCommand(r.h, r.addr(), args...) }

// mustDo is do that fails the test on error.
func (r *redisProc) mustDo(args ...string) string {
	r.t.Helper()
	s, err := r.do(args...)
	if err != nil {
		r.t.Fatalf("%s on %s: %v", strings.Join(args, " "), r.name(), err)
	}
	return s
}

// info returns the value of field in what `INFO <section>` (or, for
// section "cluster", CLUSTER INFO) says ("" when absent or unreachable).
func (r *redisProc) info(section, field string) string {
	args := []string{"INFO", section}
	if section == "cluster" {
		args = []string{"CLUSTER", "INFO"}
	}
	s, err := r.do(args...)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v
		}
	}
	return ""
}

// replicates reports whether the server is a replica of master with its
// link up.
func (r *redisProc) replicates(master *redisProc) bool {
	s, err := r.do("INFO", "replication")
	return err == nil && strings.Contains(s, "role:slave") &&
		strings.Contains(s, "master_host:"+master.h.Addr().String()+"\r") &&
		strings.Contains(s, "master_port:"+strconv.Itoa(master.port)+"\r") &&
		strings.Contains(s, "master_link_status:up")
}

// clients returns, per address, how many connections the clients whose
// name starts with prefix hold to the server (CLIENT LIST).
func (r *redisProc) clients(prefix string) map[string]int {
	s, err := r.do("CLIENT", "LIST")
	out := map[string]int{}
	if err != nil {
		return out
	}
	for _, line := range strings.Split(s, "\n") {
		var addr, name string
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "addr="); ok {
				addr, _, _ = strings.Cut(v, ":")
			}
			if v, ok := strings.CutPrefix(f, "name="); ok {
				name = v
			}
		}
		if strings.HasPrefix(name, prefix) {
			out[addr]++
		}
	}
	return out
}

// nodeCommand sends one command to the Redis at addr, dialing from host h,
// waiting at most a second, and returns the reply as text: strings as
// they are, integers in decimal, arrays as their elements joined by
// newlines (nested arrays flattened), nil as "". A Redis error reply is
// returned as an error.
func nodeCommand(h *netlab.Host, addr string, args ...string) (string, error) {
	c, err := h.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	return redistest.Command(c, bufio.NewReader(c), args...)
}

// sentinelNet is a primary and a replica, each on its own host, watched
// by three sentinels on three more hosts (quorum 2). After a failover the
// replica is the primary: the fields keep the roles they were started
// with.
type sentinelNet struct {
	primary, replica *redisProc
	sentinels        []*redisProc
}

// startSentinelNet starts the primary, the replica and the sentinels on
// new hosts of lab, and waits until the replica is in sync and every
// sentinel knows the replica and the two other sentinels.
func startSentinelNet(t *testing.T, lab *netlab.Lab) *sentinelNet {
	t.Helper()
	s := &sentinelNet{}
	s.primary = startRedisProc(t, lab.Host("redis-a"), redisPort)
	s.replica = startRedisProc(t, lab.Host("redis-b"), redisPort,
		"--replicaof", s.primary.h.Addr().String(), strconv.Itoa(redisPort))
	for i := range 3 {
		s.sentinels = append(s.sentinels, startSentinelProc(t, lab.Host(fmt.Sprintf("sentinel-%d", i+1)), s.primary.addr()))
	}
	pollFor(t, "the replica to sync with the primary", topologyTimeout, func() string {
		if s.replica.replicates(s.primary) {
			return ""
		}
		return s.replica.info("replication", "master_link_status")
	})
	pollFor(t, "every sentinel to know the replica and the other sentinels", topologyTimeout, func() string {
		for _, sn := range s.sentinels {
			m := sentinelFields(sn, "MASTER")
			if m["num-slaves"] != "1" || m["num-other-sentinels"] != "2" {
				return fmt.Sprintf("%s: %q replicas, %q other sentinels", sn.name(), m["num-slaves"], m["num-other-sentinels"])
			}
		}
		return ""
	})
	return s
}

// addrs returns the sentinels' addresses, comma-separated: REDIS_ADDRS.
func (s *sentinelNet) addrs() string {
	var a []string
	for _, sn := range s.sentinels {
		a = append(a, sn.addr())
	}
	return strings.Join(a, ",")
}

// master returns the primary every sentinel names, or "" while they
// disagree (or one does not answer).
func (s *sentinelNet) master() string {
	var first string
	for i, sn := range s.sentinels {
		r, err := sn.do("SENTINEL", "GET-MASTER-ADDR-BY-NAME", sentinelMaster)
		if err != nil {
			return ""
		}
		addr := strings.Replace(r, "\n", ":", 1)
		if i == 0 {
			first = addr
		} else if addr != first {
			return ""
		}
	}
	return first
}

// sentinelFields returns what `SENTINEL <what> <master>` says, as fields
// (an empty map when the sentinel does not answer).
func sentinelFields(sn *redisProc, what string) map[string]string {
	r, err := sn.do("SENTINEL", what, sentinelMaster)
	out := map[string]string{}
	if err != nil {
		return out
	}
	f := strings.Split(r, "\n")
	for i := 0; i+1 < len(f); i += 2 {
		out[f[i]] = f[i+1]
	}
	return out
}

// clusterNet is a Redis Cluster of three masters, one on each of three
// hosts, each with a replica on the next host (master i's replica is on
// host i+1), so that a host holds a master and another master's replica.
type clusterNet struct {
	hosts    []*netlab.Host
	masters  []*redisProc // masters[i] serves the i-th third of the slots
	replicas []*redisProc // replicas[i] replicates masters[i]
}

// clusterArgs are the arguments of every Cluster node.
var clusterArgs = []string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000"}

// startClusterNet starts the six nodes on three new hosts of lab and joins
// them by hand (slots, config epochs, CLUSTER MEET, CLUSTER REPLICATE), so
// that which node is a master is the test's choice, and waits until every
// node says cluster_state:ok, knows all six, and every replica is in
// sync.
func startClusterNet(t *testing.T, lab *netlab.Lab) *clusterNet {
	t.Helper()
	c := &clusterNet{}
	for i := range 3 {
		c.hosts = append(c.hosts, lab.Host(fmt.Sprintf("cluster-%d", i+1)))
	}
	for i, h := range c.hosts {
		m := startRedisProc(t, h, clusterPort, clusterArgs...)
		from, to := i*16384/3, (i+1)*16384/3-1
		m.mustDo("CLUSTER", "ADDSLOTSRANGE", strconv.Itoa(from), strconv.Itoa(to))
		m.mustDo("CLUSTER", "SET-CONFIG-EPOCH", strconv.Itoa(i+1))
		c.masters = append(c.masters, m)
	}
	for i := range 3 {
		c.replicas = append(c.replicas, startRedisProc(t, c.hosts[(i+1)%3], clusterPort+1, clusterArgs...))
	}
	for _, n := range c.nodes()[1:] {
		c.masters[0].mustDo("CLUSTER", "MEET", n.h.Addr().String(), strconv.Itoa(n.port))
	}
	for i, r := range c.replicas {
		c.replicate(r, c.masters[i])
	}
	c.waitHealthy(t, c.nodes(), c.masters, c.replicas)
	return c
}

// nodes returns the masters and the replicas.
func (c *clusterNet) nodes() []*redisProc {
	return append(append([]*redisProc(nil), c.masters...), c.replicas...)
}

// seeds returns every node's address, comma-separated: REDIS_ADDRS.
func (c *clusterNet) seeds() string {
	var a []string
	for _, n := range c.nodes() {
		a = append(a, n.addr())
	}
	return strings.Join(a, ",")
}

// replicate makes r a replica of master (CLUSTER REPLICATE), retrying
// while r does not know master yet (gossip).
func (c *clusterNet) replicate(r, master *redisProc) {
	r.t.Helper()
	id := master.mustDo("CLUSTER", "MYID")
	pollFor(r.t, r.name()+" to replicate "+master.name(), topologyTimeout, func() string {
		if _, err := r.do("CLUSTER", "REPLICATE", id); err != nil {
			return err.Error()
		}
		return ""
	})
}

// waitHealthy waits until every node of nodes says cluster_state:ok and
// sees masters as the masters, each with its replica of replicas in sync.
func (c *clusterNet) waitHealthy(t *testing.T, nodes, masters, replicas []*redisProc) {
	t.Helper()
	pollFor(t, "the Cluster to be ok with every replica in sync", topologyTimeout, func() string {
		ids := map[string]bool{}
		for _, m := range masters {
			id, err := m.do("CLUSTER", "MYID")
			if err != nil {
				return fmt.Sprintf("%s: %v", m.name(), err)
			}
			ids[id] = true
		}
		for _, n := range nodes {
			if st, err := n.do("CLUSTER", "INFO"); err != nil || !strings.Contains(st, "cluster_state:ok") {
				return fmt.Sprintf("%s: not cluster_state:ok (%v)", n.name(), err)
			}
			view, err := n.do("CLUSTER", "NODES")
			if err != nil {
				return fmt.Sprintf("%s: %v", n.name(), err)
			}
			seen := 0
			for _, line := range strings.Split(strings.TrimSpace(view), "\n") {
				f := strings.Fields(line)
				if len(f) < 3 || strings.Contains(f[2], "fail") || strings.Contains(f[2], "handshake") {
					continue
				}
				if ids[f[0]] && strings.Contains(f[2], "master") {
					seen++
				}
			}
			if seen != len(masters) {
				return fmt.Sprintf("%s sees %d of the %d masters", n.name(), seen, len(masters))
			}
		}
		for i, r := range replicas {
			if !r.replicates(masters[i]) {
				return fmt.Sprintf("%s does not replicate %s yet", r.name(), masters[i].name())
			}
		}
		return ""
	})
}

// pollFor polls cond every 100 ms until it returns "" (done), failing the
// test after within with cond's last answer, which says what is missing.
func pollFor(t *testing.T, what string, within time.Duration, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		why := cond()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %s", within, what, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
