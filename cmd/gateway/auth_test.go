package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestTokenAuthentication: with AUTH_PUBLIC_KEY set (an ES256 key, on one
// line), an upgrade needs a valid unexpired token signed by its private
// key (else 401 with a reason) that allows the room (else 403); a
// username claim is what members see, whatever the client sends. Without
// a key (the default), no token is needed.
func TestTokenAuthentication(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	pemLine := strings.ReplaceAll(string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), "\n", `\n`)
	g := startGateway(t, map[string]string{"AUTH_PUBLIC_KEY": pemLine})

	sign := func(m jwt.SigningMethod, k any, claims jwt.MapClaims) string {
		t.Helper()
		s, err := jwt.NewWithClaims(m, claims).SignedString(k)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	hour := time.Now().Add(time.Hour).Unix()
	for _, tc := range []struct {
		name   string
		token  string
		status int
		reason string
	}{
		{"valid", sign(jwt.SigningMethodES256, key, jwt.MapClaims{"exp": hour}), 101, ""},
		{"room allowed by pattern", sign(jwt.SigningMethodES256, key, jwt.MapClaims{"exp": hour, "rooms": []string{"au*"}}), 101, ""},
		{"no token", "", 401, "no token"},
		{"expired", sign(jwt.SigningMethodES256, key, jwt.MapClaims{"exp": time.Now().Add(-time.Hour).Unix()}), 401, "expired"},
		{"no expiry", sign(jwt.SigningMethodES256, key, jwt.MapClaims{"sub": "x"}), 401, "exp"},
		{"wrong key", sign(jwt.SigningMethodES256, other, jwt.MapClaims{"exp": hour}), 401, "signature"},
		{"alg none", sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, jwt.MapClaims{"exp": hour}), 401, "ES256"},
		{"HS256 with the public key as secret", sign(jwt.SigningMethodHS256, []byte(strings.ReplaceAll(pemLine, `\n`, "\n")), jwt.MapClaims{"exp": hour}), 401, "ES256"},
		{"room not allowed", sign(jwt.SigningMethodES256, key, jwt.MapClaims{"exp": hour, "rooms": []string{"lobby"}}), 403, "auth-room"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := upgrade(t, g.addr, "/ws/chat/auth-room/?token="+tc.token, g.addr)
			if status != tc.status || !strings.Contains(body, tc.reason) {
				t.Fatalf("upgrade: %d %q, want %d with %q", status, body, tc.status, tc.reason)
			}
		})
	}

	t.Run("username forced", func(t *testing.T) {
		ana := g.dial(t, "/ws/chat/auth-chat/?token="+sign(jwt.SigningMethodES256, key, jwt.MapClaims{"exp": hour, "username": "ana"}))
		peer := g.dial(t, "/ws/chat/auth-chat/?token="+sign(jwt.SigningMethodES256, key, jwt.MapClaims{"exp": hour}))
		ana.sendChat("admin", "trust me")
		if got := peer.recv(); got != chat("ana", "trust me") {
			t.Fatalf("peer got %s, want the token's username", got)
		}
		peer.sendChat("bo", "hi ana")
		if got := ana.recv(); got != chat("bo", "hi ana") {
			t.Fatalf("ana got %s; a token without a username claim keeps the sent one", got)
		}
	})

	t.Run("off by default", func(t *testing.T) {
		open := startGateway(t, nil)
		if status, body := upgrade(t, open.addr, "/ws/chat/auth-room/", open.addr); status != 101 {
			t.Fatalf("upgrade without a token and no key: %d %q", status, body)
		}
	})
}
