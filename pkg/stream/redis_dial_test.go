package stream

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"testing"
	"time"
)

// TestRawConn checks the connection rueidis gets from dialRedis against
// net.Conn's contract: data both ways, a write larger than the socket
// buffers while the peer reads slowly, EOF when the peer closes, and read
// deadlines reported as timeouts.
func TestRawConn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(peer)
			return
		}
		peer <- c
	}()
	c, err := dialRedis(context.Background(), ln.Addr().String(), &net.Dialer{Timeout: time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(*rawConn); !ok {
		t.Fatalf("dialRedis returned %T, want *rawConn", c)
	}
	p := <-peer
	if p == nil {
		t.Fatal("accept failed")
	}

	// A deadline with nothing to read: a timeout, as net.Conn reports it.
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	var nerr net.Error
	if _, err := c.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &nerr) || !nerr.Timeout() {
		t.Fatalf("read past its deadline: %v, want a timeout", err)
	}
	c.SetReadDeadline(time.Time{})

	// 8 MiB one way: far more than the socket buffers, so Write waits.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<19)
	got := make(chan []byte, 1)
	go func() {
		b := make([]byte, 0, len(big))
		buf := make([]byte, 4096)
		for len(b) < len(big) {
			n, err := p.Read(buf)
			if err != nil {
				break
			}
			b = append(b, buf[:n]...)
			if len(b) < 1<<20 {
				time.Sleep(time.Millisecond) // slow at first
			}
		}
		got <- b
	}()
	if n, err := c.Write(big); err != nil || n != len(big) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(big))
	}
	if b := <-got; !bytes.Equal(b, big) {
		t.Fatalf("peer read %d bytes, not what was written", len(b))
	}

	// The other way, then EOF.
	if _, err := p.Write([]byte("+PONG\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := io.ReadAtLeast(c, buf, 7)
	if err != nil || string(buf[:n]) != "+PONG\r\n" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	p.Close()
	if _, err := c.Read(buf); err != io.EOF {
		t.Fatalf("read after the peer closed: %v, want io.EOF", err)
	}
	c.Close()
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close: %v, want net.ErrClosed", err)
	}
}

// TestRawConnTLS runs TLS over the raw connection and checks that the
// server's name is verified against the host dialled, as tls.Dialer does.
func TestRawConnTLS(t *testing.T) {
	cert, pool := selfSigned(t, "127.0.0.1")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	d := &net.Dialer{Timeout: time.Second}
	c, err := dialRedis(context.Background(), ln.Addr().String(), d, &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatalf("TLS dial with the right CA: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 14)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "*1\r\n$4\r\nPING\r\n" {
		t.Fatalf("echo over TLS: %q, %v", buf, err)
	}
	// A name the certificate does not hold is refused.
	if c, err := dialRedis(context.Background(), ln.Addr().String(), d, &tls.Config{RootCAs: pool, ServerName: "redis.example"}); err == nil {
		c.Close()
		t.Fatal("TLS dial accepted a certificate for another name")
	}
}

// selfSigned makes a certificate for ip and a pool that trusts it.
func selfSigned(t *testing.T, ip string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "test redis"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP(ip)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}
