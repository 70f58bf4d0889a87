package conn

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// HostList matches host names against a list of allowed hosts, the
// rules of Config.AllowedHosts: "*" allows any host, ".example.com"
// example.com and its subdomains, any other entry that host; ports are
// ignored and case does not matter. The server checks upgrades with it;
// cmd/gateway checks plain-HTTP requests with the same one. The zero
// HostList allows any host.
type HostList struct {
	names map[string]bool // entries trimmed, lower-cased, without brackets; nil: any
}

// NewHostList builds the list of entries; "*" among them, or no entry,
// gives a list that allows any host.
func NewHostList(entries []string) HostList {
	var h HostList
	for _, e := range entries {
		if e == "*" {
			return HostList{}
		}
		if h.names == nil {
			h.names = make(map[string]bool)
		}
		h.names[strings.Trim(strings.ToLower(strings.TrimSpace(e)), "[]")] = true
	}
	return h
}

// Any reports whether the list allows any host.
func (h HostList) Any() bool { return h.names == nil }

// Allows reports whether a Host header value (a host with an optional
// port) is allowed. An empty host is allowed only by a list that allows
// any.
func (h HostList) Allows(host string) bool {
	if h.names == nil {
		return true
	}
	host = strings.ToLower(host)
	if hh, _, err := net.SplitHostPort(host); err == nil {
		host = hh
	}
	return h.match(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
}

// match checks a lower-case host name without port or brackets.
func (h HostList) match(host string) bool {
	if h.names == nil {
		return true
	}
	if host == "" {
		return false
	}
	// ".example.com" allows example.com and its subdomains, as Django's
	// ALLOWED_HOSTS did.
	if h.names[host] || h.names["."+host] {
		return true
	}
	for {
		i := strings.IndexByte(host, '.')
		if i < 0 {
			return false
		}
		if h.names[host[i:]] {
			return true
		}
		host = host[i+1:]
	}
}

// originList matches Origin header values against Config.AllowedOrigins.
// A nil *originList matches any origin.
type originList struct {
	exact map[string]bool // "scheme://host[:port]", normalized by origin
	hosts HostList        // bare host and .domain entries: any scheme and port; Any when none
}

// newOriginList builds the list; it returns nil (any origin) for an empty
// list or one with "*", and an error naming ALLOWED_ORIGINS for an entry
// that is neither an origin nor a host name.
func newOriginList(entries []string) (*originList, error) {
	var o originList
	var bare []string
	for _, e := range entries {
		e = strings.TrimSpace(e)
		switch {
		case e == "*":
			return nil, nil
		case e == "":
			continue
		case strings.EqualFold(e, "null"): // sandboxed frames, file: pages
			if o.exact == nil {
				o.exact = make(map[string]bool)
			}
			o.exact["null"] = true
		case strings.Contains(e, "://"):
			norm, _, ok := origin(e)
			if !ok {
				return nil, fmt.Errorf("conn: ALLOWED_ORIGINS entry %q is not an origin; write scheme://host[:port] (no path), a host name, or *", e)
			}
			if o.exact == nil {
				o.exact = make(map[string]bool)
			}
			o.exact[norm] = true
		case strings.ContainsAny(e, "/?#@ "):
			return nil, fmt.Errorf("conn: ALLOWED_ORIGINS entry %q is not a host name; write scheme://host[:port], a host name or .domain, or *", e)
		default:
			bare = append(bare, e)
		}
	}
	if o.exact == nil && bare == nil {
		return nil, nil
	}
	if bare != nil {
		o.hosts = NewHostList(bare) // not Any: "*" returned above
	}
	return &o, nil
}

// allow reports whether an Origin header value is accepted.
func (o *originList) allow(value string) bool {
	if o == nil {
		return true
	}
	norm, host, ok := origin(value)
	if !ok {
		return o.exact[strings.ToLower(value)] // such as "null", if listed
	}
	return o.exact[norm] || !o.hosts.Any() && o.hosts.match(host)
}

// origin normalizes an origin "scheme://host[:port]": lower case, the
// scheme's default port left out. It returns the normalized origin and
// its host (no brackets, no port); ok is false when s is not an origin.
func origin(s string) (norm, host string, ok bool) {
	u, err := url.Parse(strings.ToLower(strings.TrimSpace(s)))
	if err != nil || u.Scheme == "" || u.Host == "" || u.User != nil || u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.Fragment != "" {
		return "", "", false
	}
	host = strings.TrimSuffix(u.Hostname(), ".")
	port := u.Port()
	if port == defaultPort[u.Scheme] {
		port = ""
	}
	hp := host
	if strings.Contains(host, ":") {
		hp = "[" + host + "]"
	}
	if port != "" {
		hp += ":" + port
	}
	return u.Scheme + "://" + hp, host, true
}

var defaultPort = map[string]string{"http": "80", "https": "443", "ws": "80", "wss": "443"}
