package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
)

// errNoAddress: the -url host has no address of the family of the -src
// address a connection binds.
var errNoAddress = errors.New("loadgen: the -url host has no address of the -src address's family")

// target is one gateway URL, resolved once for the whole connect phase:
// where its connections go and the fixed parts of their upgrade requests.
type target struct {
	ip4, ip6 netip.Addr // its first address of each family; zero if none
	port     int
	reqHead  string // the upgrade request up to the room number
	reqTail  string // the upgrade request after the room number, up to the key
	err      error  // why it has no address: every dial to it fails with it
}

// resolveTarget prepares the connections to base, a -url that parseURLs
// accepted, whose rooms are named prefix<n>, with the -options query.
// The host is looked up once, here; a failed look-up is kept in err, so
// that each dial to it counts as failed under its dial_dns kind, as it
// did when every dial looked it up.
func resolveTarget(ctx context.Context, base, prefix, query string) target {
	u, err := url.Parse(base)
	if err != nil {
		return target{err: err}
	}
	var t target
	t.reqHead, t.reqTail = requestParts(u.Host, u.EscapedPath(), prefix, query)
	port := u.Port()
	if port == "" {
		port = "80" // ws:// without a port, as ws.Dialer assumes
	}
	if t.port, err = strconv.Atoi(port); err != nil || t.port < 1 || t.port > 65535 {
		t.err = fmt.Errorf("loadgen: -url %q: port %q is not a TCP port (1-65535)", base, port)
		return t
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", u.Hostname())
	if err != nil {
		t.err = err
		return t
	}
	for _, a := range addrs {
		switch a = a.Unmap(); {
		case a.Is4() && !t.ip4.IsValid():
			t.ip4 = a
		case a.Is6() && !t.ip6.IsValid():
			t.ip6 = a
		}
	}
	return t
}

// addr returns the address to connect to from src: one of src's family,
// or without src the IPv4 one if there is one (like localhost resolving
// to 127.0.0.1 and ::1, where the gateway usually listens on the first).
func (t *target) addr(src netip.Addr) (netip.Addr, error) {
	if t.err != nil {
		return netip.Addr{}, t.err
	}
	want4 := t.ip4.IsValid()
	if src.IsValid() {
		want4 = src.Is4()
	}
	a := t.ip6
	if want4 {
		a = t.ip4
	}
	if !a.IsValid() {
		return a, errNoAddress
	}
	return a, nil
}
