package redistest

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/testutil"
)

// clusterTimeout bounds cluster creation and convergence.
const clusterTimeout = 30 * time.Second

// Cluster is a Redis Cluster of masters without replicas, each a Server.
type Cluster struct {
	// Servers are the masters, in the order their slot ranges were assigned.
	Servers []*Server
}

// StartCluster starts masters redis-server processes with
// `--cluster-enabled yes` (each on a free port whose bus port is free too),
// joins them with `redis-cli --cluster create ... --cluster-yes`, and waits
// until every node reports cluster_state:ok. A Redis Cluster needs at least
// three masters.
func StartCluster(t testing.TB, masters int) *Cluster {
	t.Helper()
	if masters < 3 {
		t.Fatalf("redistest: StartCluster(%d): a Redis Cluster needs at least 3 masters", masters)
	}
	cli := lookPath(t, "redis-cli")
	c := &Cluster{}
	create := []string{"--cluster", "create"}
	for range masters {
		s := start(t, true, func(port int, dir string) []string {
			return append(serverArgs(port, dir),
				"--cluster-enabled", "yes",
				"--cluster-config-file", "nodes.conf",
				"--cluster-node-timeout", "2000",
			)
		})
		c.Servers = append(c.Servers, s)
		create = append(create, s.Addr())
	}
	create = append(create, "--cluster-replicas", "0", "--cluster-yes")
	cmd := exec.Command(cli, create...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("redistest: redis-cli %s: %v\n%s", strings.Join(create, " "), err, out)
	}
	testutil.EventuallyWithin(t, clusterTimeout, "cluster_state:ok on every node", func() bool {
		for _, s := range c.Servers {
			info, err := s.Do("CLUSTER", "INFO")
			if err != nil || !strings.Contains(info, "cluster_state:ok") {
				return false
			}
			// Every node must also know every other node, or clients
			// that ask it for slots get a partial map.
			nodes, err := s.Do("CLUSTER", "NODES")
			if err != nil || strings.Count(nodes, "master") < masters || strings.Contains(nodes, "handshake") {
				return false
			}
		}
		return true
	})
	return c
}

// Addrs returns the masters' addresses.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Servers))
	for i, s := range c.Servers {
		addrs[i] = s.Addr()
	}
	return addrs
}

// Sentinel is a master, one replica of it, and one sentinel monitoring
// them under the name MasterName with a quorum of 1, so that killing the
// master promotes the replica within a couple of seconds.
type Sentinel struct {
	// Master is the initial master; Replica replicates it.
	Master, Replica *Server
	// Sentinel is the sentinel process; clients connect to its Addr.
	Sentinel *Server
	// Link carries the replication from the master to the replica:
	// closing it cuts the replica off (a partition), so that writes the
	// master takes afterwards are not replicated.
	Link *Proxy
	// MasterName is the name the sentinel monitors the master under.
	MasterName string
}

// StartSentinel starts a master, a replica (`--replicaof`, through Link) and a sentinel
// (`redis-server <conf> --sentinel`) whose generated configuration uses a
// down-after-milliseconds of downAfter, waits until the replica is in sync
// and the sentinel knows it, and kills them all when the test ends.
func StartSentinel(t testing.TB, downAfter time.Duration) *Sentinel {
	t.Helper()
	st := &Sentinel{MasterName: "chatgw"}
	st.Master = Start(t)
	st.Link = StartProxy(t, st.Master.Addr())
	_, linkPort, _ := net.SplitHostPort(st.Link.Addr())
	st.Replica = Start(t, "--replicaof", "127.0.0.1", linkPort)
	testutil.EventuallyWithin(t, clusterTimeout, "the replica to sync with the master", func() bool {
		info, err := st.Replica.Do("INFO", "replication")
		return err == nil && strings.Contains(info, "master_link_status:up")
	})

	ms := strconv.FormatInt(downAfter.Milliseconds(), 10)
	st.Sentinel = start(t, false, func(port int, dir string) []string {
		conf := filepath.Join(dir, "sentinel.conf")
		body := strings.Join([]string{
			"sentinel monitor " + st.MasterName + " 127.0.0.1 " + strconv.Itoa(st.Master.Port()) + " 1",
			"sentinel down-after-milliseconds " + st.MasterName + " " + ms,
			"sentinel failover-timeout " + st.MasterName + " 5000",
			"sentinel parallel-syncs " + st.MasterName + " 1",
			"",
		}, "\n")
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatalf("redistest: write sentinel config: %v", err)
		}
		return []string{conf, "--sentinel", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir, "--protected-mode", "no"}
	})
	testutil.EventuallyWithin(t, clusterTimeout, "the sentinel to discover the replica", func() bool {
		r, err := st.Sentinel.Do("SENTINEL", "REPLICAS", st.MasterName)
		return err == nil && strings.Contains(r, strconv.Itoa(st.Replica.Port()))
	})
	return st
}

// MasterAddr returns the master address the sentinel currently announces.
func (st *Sentinel) MasterAddr() (string, error) {
	r, err := st.Sentinel.Do("SENTINEL", "GET-MASTER-ADDR-BY-NAME", st.MasterName)
	if err != nil {
		return "", err
	}
	host, port, _ := strings.Cut(r, "\n")
	return host + ":" + port, nil
}
