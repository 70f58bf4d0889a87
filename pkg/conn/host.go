package conn

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// hostList matches host names against Config.AllowedHosts entries, or
// the bare-host entries of AllowedOrigins. A nil list matches any host.
type hostList map[string]bool

// newHostList builds the list of entries; "*" among them (or no entry)
// gives nil, which matches any host. Entries are trimmed, lower-cased and
// stripped of IPv6 brackets.
func newHostList(entries []string) hostList {
	var h hostList
	for _, e := range entries {
		if e == "*" {
			return nil
		}
		if h == nil {
			h = make(hostList)
		}
		h[strings.Trim(strings.ToLower(strings.TrimSpace(e)), "[]")] = true
	}
	return h
}

// matchHeader checks a Host header value (a host with an optional port).
func (h hostList) matchHeader(host string) bool {
	if h == nil {
		return true
	}
	host = strings.ToLower(host)
	if hh, _, err := net.SplitHostPort(host); err == nil {
		host = hh
	}
	return h.match(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
}

// match checks a lower-case host name without port or brackets.
func (h hostList) match(host string) bool {
	if h == nil {
		return true
	}
	if h[host] {
		return true
	}
	// ".example.com" allows example.com and its subdomains, as Django's
	// ALLOWED_HOSTS did.
	for {
		i := strings.IndexByte(host, '.')
		if i < 0 {
			return false
		}
		if h[host[i:]] || h["."+host] {
			return true
		}
		host = host[i+1:]
	}
}

// originList matches Origin header values against Config.AllowedOrigins.
// A nil *originList matches any origin.
type originList struct {
	exact map[string]bool // "scheme://host[:port]", normalized by origin
	hosts hostList        // bare host and .domain entries: any scheme and port; nil when none
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
		o.hosts = newHostList(bare) // not nil: "*" returned above
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
	return o.exact[norm] || len(o.hosts) > 0 && o.hosts.match(host)
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
