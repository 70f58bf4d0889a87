// Package auth verifies the JSON Web Tokens (RFC 7519) that clients may be
// required to present when they join a room. It is off unless a key is
// configured, so the original clients keep working.
//
// A Verifier holds one key: an HS256 shared secret, or an RSA (RS256) or
// P-256 ECDSA (ES256) public key in PEM. Tokens signed with any other
// algorithm, "none" included, are refused. A token must carry an
// expiry ("exp"); two optional claims restrict what it grants:
//
//	{
//	  "exp": 1767225600,
//	  "rooms": ["lobby", "team-*"],   // rooms it may join (path.Match patterns); absent: any room
//	  "username": "ana"               // the username members see on every message; absent: as sent
//	}
//
// Usage:
//
//	v, err := auth.New(auth.Config{HS256Secret: secret}) // nil, nil when no key is set
//	claims, err := v.Verify(token)
//	if err == nil && claims.AllowsRoom("lobby") { ... }
package auth
