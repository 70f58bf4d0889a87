package conn

import "testing"

// TestHostList: the rules of Config.AllowedHosts, which the upgrade and
// cmd/gateway's plain-HTTP check both apply through HostList.
func TestHostList(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []string
		host    string
		want    bool
	}{
		{"no entries allow any", nil, "evil.example", true},
		{"star allows any", []string{"a.example", "*"}, "evil.example", true},
		{"exact", []string{"chat.example.com"}, "chat.example.com", true},
		{"port ignored", []string{"chat.example.com"}, "chat.example.com:8080", true},
		{"case ignored", []string{"Chat.Example.COM"}, "CHAT.example.com", true},
		{"trailing dot", []string{"chat.example.com"}, "chat.example.com.", true},
		{"other host", []string{"chat.example.com"}, "example.com", false},
		{"subdomain of an exact entry", []string{"example.com"}, "chat.example.com", false},
		{"dot entry allows the domain", []string{".example.com"}, "example.com", true},
		{"dot entry allows subdomains", []string{".example.com"}, "a.b.example.com", true},
		{"dot entry, single label", []string{".localhost"}, "localhost", true},
		{"dot entry, other domain", []string{".example.com"}, "badexample.com", false},
		{"IPv6 with port", []string{"[::1]"}, "[::1]:80", true},
		{"IPv6 bare entry", []string{"::1"}, "[::1]", true},
		{"empty host", []string{"example.com"}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := NewHostList(tc.entries).Allows(tc.host); got != tc.want {
				t.Fatalf("NewHostList(%q).Allows(%q) = %v, want %v", tc.entries, tc.host, got, tc.want)
			}
		})
	}
}
