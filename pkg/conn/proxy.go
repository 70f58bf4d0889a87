package conn

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Trusted proxies and the client's real address.
//
// A connection from a trusted proxy (Config.TrustedProxies) may name the
// client it forwards for, and the server then treats that address as the
// connection's (Conn.Remote): in per-address caps and the Handler's
// per-address limits, in logs and metrics. Two ways are understood:
//
//   - the PROXY protocol, version 1 (text) or 2 (binary), as the first
//     bytes of the connection (HAProxy send-proxy[-v2], nginx
//     proxy_protocol, cloud network balancers);
//   - X-Forwarded-For and Forwarded headers of the upgrade request: the
//     client is the rightmost address that is not itself a trusted proxy.
//
// From any other peer both are ignored, so a client cannot claim another
// address. A trusted proxy that names no client (no PROXY header, no
// forwarding header, or PROXY LOCAL) is counted by no per-address limit:
// the server cannot tell its clients apart (Conn.ClientKnown).

// DefaultTrustedProxies are the peers trusted when Config.TrustedProxies
// is empty: loopback and the private ranges (RFC 1918, RFC 4193), where
// reverse proxies, ingresses and load balancers of a deployment live, and
// which clients on the internet do not have.
var DefaultTrustedProxies = []string{"127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"}

// proxyList is the parsed Config.TrustedProxies.
type proxyList []netip.Prefix

// parseProxies parses CIDRs and single addresses; "none" alone means no
// trusted proxy, and an empty list the defaults.
func parseProxies(v []string) (proxyList, error) {
	if len(v) == 0 {
		v = DefaultTrustedProxies
	}
	if len(v) == 1 && strings.EqualFold(strings.TrimSpace(v[0]), "none") {
		return nil, nil
	}
	var l proxyList
	for _, s := range v {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("conn: TRUSTED_PROXIES entry %q is not a CIDR or an address: use e.g. 10.0.0.0/8,192.0.2.7, or none", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		l = append(l, p.Masked())
	}
	return l, nil
}

// trusts reports whether a is a trusted proxy.
func (l proxyList) trusts(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range l {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// The two signatures of the PROXY protocol.
var (
	proxyV1Sig = []byte("PROXY ")
	proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

// maxProxyV1 is the longest PROXY v1 line, CRLF included.
const maxProxyV1 = 107

// errBadProxy is a malformed PROXY header from a trusted peer.
var errBadProxy = errors.New("malformed PROXY protocol header")

// parseProxyHeader reads a PROXY protocol header (v1 or v2) at the start
// of b. It returns the bytes the header takes and the client's address
// (zero for LOCAL, UNKNOWN, or a family other than TCP over IPv4 or IPv6);
// n is 0 when b holds no header (then it is a plain request), need is set
// when b holds the start of one but not all of it yet.
func parseProxyHeader(b []byte) (n int, client netip.AddrPort, need bool, err error) {
	switch {
	case len(b) < len(proxyV2Sig) && bytes.HasPrefix(proxyV2Sig, b), len(b) < len(proxyV1Sig) && bytes.HasPrefix(proxyV1Sig, b):
		return 0, netip.AddrPort{}, true, nil
	case bytes.HasPrefix(b, proxyV1Sig):
		end := bytes.Index(b, []byte("\r\n"))
		if end < 0 {
			if len(b) >= maxProxyV1 {
				return 0, netip.AddrPort{}, false, errBadProxy
			}
			return 0, netip.AddrPort{}, true, nil
		}
		client, err := parseProxyV1(string(b[len(proxyV1Sig):end]))
		return end + 2, client, false, err
	case bytes.HasPrefix(b, proxyV2Sig):
		if len(b) < 16 {
			return 0, netip.AddrPort{}, true, nil
		}
		size := 16 + int(binary.BigEndian.Uint16(b[14:16]))
		if len(b) < size {
			return 0, netip.AddrPort{}, true, nil
		}
		client, err := parseProxyV2(b[12], b[13], b[16:size])
		return size, client, false, err
	}
	return 0, netip.AddrPort{}, false, nil
}

// parseProxyV1 parses the fields of a v1 line after "PROXY ":
// "TCP4 <src> <dst> <sport> <dport>", "TCP6 …" or "UNKNOWN …".
func parseProxyV1(line string) (netip.AddrPort, error) {
	f := strings.Split(line, " ")
	if len(f) > 0 && f[0] == "UNKNOWN" {
		return netip.AddrPort{}, nil
	}
	if len(f) != 5 || f[0] != "TCP4" && f[0] != "TCP6" {
		return netip.AddrPort{}, errBadProxy
	}
	a, err := netip.ParseAddr(f[1])
	if err != nil || a.Is4() != (f[0] == "TCP4") {
		return netip.AddrPort{}, errBadProxy
	}
	port, err := strconv.ParseUint(f[3], 10, 16)
	if err != nil {
		return netip.AddrPort{}, errBadProxy
	}
	return netip.AddrPortFrom(a, uint16(port)), nil
}

// parseProxyV2 parses a v2 header's version and command byte, its family
// and protocol byte and its address block.
func parseProxyV2(verCmd, famProto byte, addr []byte) (netip.AddrPort, error) {
	if verCmd>>4 != 2 {
		return netip.AddrPort{}, errBadProxy
	}
	switch verCmd & 0x0f {
	case 0: // LOCAL: the proxy's own connection, such as a health check
		return netip.AddrPort{}, nil
	case 1: // PROXY
	default:
		return netip.AddrPort{}, errBadProxy
	}
	switch famProto {
	case 0x11: // TCP over IPv4: src, dst, sport, dport
		if len(addr) < 12 {
			return netip.AddrPort{}, errBadProxy
		}
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(addr[0:4])), binary.BigEndian.Uint16(addr[8:10])), nil
	case 0x21: // TCP over IPv6
		if len(addr) < 36 {
			return netip.AddrPort{}, errBadProxy
		}
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(addr[0:16])).Unmap(), binary.BigEndian.Uint16(addr[32:34])), nil
	}
	return netip.AddrPort{}, nil // UNSPEC, UDP, unix sockets: no client address
}

// forwardedClient returns the client named by the X-Forwarded-For and
// Forwarded values of a request from a trusted proxy (xff: the X-Forwarded-
// For values joined by commas; fwd: the Forwarded ones): the rightmost
// address that is not a trusted proxy, or, when all are, the leftmost.
// Forwarded wins when both are present (RFC 7239). ok is false when there
// is none, or a value cannot be read (an obfuscated or unknown node).
func (l proxyList) forwardedClient(xff, fwd string) (netip.Addr, bool) {
	var hops []string
	if fwd != "" {
		for _, elem := range strings.Split(fwd, ",") {
			for _, pair := range strings.Split(elem, ";") {
				k, v, found := strings.Cut(strings.TrimSpace(pair), "=")
				if found && strings.EqualFold(k, "for") {
					hops = append(hops, strings.Trim(v, `"`))
				}
			}
		}
	} else if xff != "" {
		hops = strings.Split(xff, ",")
	}
	var client netip.Addr
	for i := len(hops) - 1; i >= 0; i-- {
		a, ok := parseHop(strings.TrimSpace(hops[i]))
		if !ok {
			return netip.Addr{}, false
		}
		client = a
		if !l.trusts(a) {
			return a, true
		}
	}
	return client, client.IsValid()
}

// parseHop reads one node of a forwarding header: an address, with a port
// or in brackets as Forwarded writes IPv6.
func parseHop(s string) (netip.Addr, bool) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), true
	}
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	a, err := netip.ParseAddr(s)
	return a.Unmap(), err == nil
}
