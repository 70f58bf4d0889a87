//go:build network

// Package network holds the tests that run the gateway on a network of
// several hosts built inside this machine (internal/netlab): partitions,
// half-open connections, shaped links. They need root; `make network`
// runs them (`go test -tags network ./test/network/`), and `make test`
// calls it.
package network

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/chatgw/gateway/internal/netlab"
)

// gatewayPort is where the gateway listens on its host.
const gatewayPort = 8000

var gatewayBin struct {
	once      sync.Once
	dir, path string
	err       error
}

// buildGateway builds cmd/gateway once for the tests and returns the
// binary's path.
func buildGateway(t *testing.T) string {
	t.Helper()
	gatewayBin.once.Do(func() {
		dir, err := os.MkdirTemp("", "gateway-network-test-")
		if err != nil {
			gatewayBin.err = err
			return
		}
		gatewayBin.dir = dir
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		path := filepath.Join(dir, "gateway")
		if out, err := exec.Command(goBin, "build", "-o", path, "../../cmd/gateway").CombinedOutput(); err != nil {
			gatewayBin.err = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		gatewayBin.path = path
	})
	if gatewayBin.err != nil {
		t.Fatal(gatewayBin.err)
	}
	return gatewayBin.path
}

// TestMain removes the gateway binary the tests built.
func TestMain(m *testing.M) {
	code := m.Run()
	if gatewayBin.dir != "" {
		os.RemoveAll(gatewayBin.dir)
	}
	os.Exit(code)
}

// startGateway runs the gateway on host h (embedded engine unless env
// names a Redis) with env added, waits until it answers /healthz, stops
// it when the test ends, and returns its host:port.
func startGateway(t *testing.T, h *netlab.Host, env map[string]string) string {
	t.Helper()
	return startGatewayProc(t, h, env).addr
}

// gatewayProc is a gateway process on a lab host: its address and what it
// logged.
type gatewayProc struct {
	addr  string
	logMu sync.Mutex
	logs  strings.Builder
}

// log returns what the gateway logged so far.
func (g *gatewayProc) log() string {
	g.logMu.Lock()
	defer g.logMu.Unlock()
	return g.logs.String()
}

// startGatewayProc is startGateway, returning the process so that the
// test can read its log; the log is printed when the test fails.
func startGatewayProc(t *testing.T, h *netlab.Host, env map[string]string) *gatewayProc {
	t.Helper()
	g := &gatewayProc{}
	cmd := h.Command(buildGateway(t))
	cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", gatewayPort), "LOG_LEVEL=warn", "SHUTDOWN_TIMEOUT=2s", "DRAIN_DELAY=0s", "DRAIN_WINDOW=0s")
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdout, cmd.Stderr = lockedWriter{&g.logMu, &g.logs}, lockedWriter{&g.logMu, &g.logs}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the gateway on %s: %v", h.Name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("gateway log (%s):\n%s", h.Name, g.log())
		}
	})
	g.addr = fmt.Sprintf("%s:%d", h.Addr(), gatewayPort)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := httpGet(h, g.addr, "/healthz"); err == nil {
			return g
		}
		select {
		case <-done:
			t.Fatalf("the gateway on %s exited: %s", h.Name, g.log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the gateway on %s did not answer /healthz within 10 s", h.Name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// lockedWriter serialises the writes of a process's stdout and stderr.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

// Write writes p under the lock.
func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// httpGet fetches path from addr, dialing from host h, and returns the
// body of a 200 answer.
func httpGet(h *netlab.Host, addr, path string) ([]byte, error) {
	client := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext:       func(context.Context, string, string) (net.Conn, error) { return h.Dial("tcp", addr) },
		DisableKeepAlives: true,
	}}
	resp, err := client.Get("http://" + addr + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", path, resp.Status, body)
	}
	return body, nil
}

// wsClient is a WebSocket client on a lab host. A goroutine reads its
// frames: it answers pings (so the client is alive as long as its host
// can reach the gateway) and hands text messages to msgs.
type wsClient struct {
	c    net.Conn
	wmu  sync.Mutex // frames are written whole: the test's and the pongs
	msgs chan string
}

// dialWS opens a WebSocket to path on the gateway at addr from host h,
// and closes it when the test ends.
func dialWS(t *testing.T, h *netlab.Host, addr, path string) *wsClient {
	t.Helper()
	w, err := openWS(h, addr, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.c.Close() })
	return w
}

// openWS is dialWS for any goroutine: it returns the error, and the
// caller closes the client.
func openWS(h *netlab.Host, addr, path string) (*wsClient, error) {
	d := ws.Dialer{Timeout: 5 * time.Second, NetDial: func(context.Context, string, string) (net.Conn, error) {
		return h.Dial("tcp", addr)
	}}
	c, br, _, err := d.Dial(context.Background(), "ws://"+addr+path)
	if err != nil {
		return nil, fmt.Errorf("dial %s from %s: %w", path, h.Name, err)
	}
	w := &wsClient{c: c, msgs: make(chan string, 1024)}
	var r io.Reader = c
	if br != nil {
		r = io.MultiReader(br, c)
	}
	go w.read(bufio.NewReader(r))
	return w, nil
}

// read reads frames until the connection ends.
func (w *wsClient) read(r *bufio.Reader) {
	defer close(w.msgs)
	for {
		f, err := ws.ReadFrame(r)
		if err != nil {
			return
		}
		if f.Header.Masked {
			ws.Cipher(f.Payload, f.Header.Mask, 0)
		}
		switch f.Header.OpCode {
		case ws.OpPing:
			w.write(ws.NewPongFrame(f.Payload))
		case ws.OpText:
			w.msgs <- string(f.Payload)
		case ws.OpClose:
			return
		}
	}
}

// write writes frame f, masked as a client's must be.
func (w *wsClient) write(f ws.Frame) error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	return ws.WriteFrame(w.c, ws.MaskFrame(f))
}

// textFrame is a text frame of s.
func textFrame(s string) ws.Frame { return ws.NewTextFrame([]byte(s)) }

// send sends a text message.
func (w *wsClient) send(t *testing.T, text string) {
	t.Helper()
	if err := w.write(ws.NewTextFrame([]byte(text))); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// recv returns the next text message, failing the test after timeout.
func (w *wsClient) recv(t *testing.T, timeout time.Duration) string {
	t.Helper()
	select {
	case m, ok := <-w.msgs:
		if !ok {
			t.Fatal("the connection closed")
		}
		return m
	case <-time.After(timeout):
		t.Fatalf("no message within %v", timeout)
		return ""
	}
}

// parsePresence returns the member count of a presence frame
// ({"presence":{"members":N}}); ok is false for any other frame.
func parsePresence(text string) (n int, ok bool) {
	var f struct {
		Presence *struct {
			Members int `json:"members"`
		} `json:"presence"`
	}
	if err := json.Unmarshal([]byte(text), &f); err != nil || f.Presence == nil {
		return 0, false
	}
	return f.Presence.Members, true
}
