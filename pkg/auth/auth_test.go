package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const secret = "0123456789abcdef0123456789abcdef" // 32 bytes

// keys are generated once: RSA generation is slow under -race.
var (
	rsaKey = mustRSA(2048)
	ecKey  = mustEC(elliptic.P256())
)

func mustRSA(bits int) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		panic(err)
	}
	return k
}

func mustEC(c elliptic.Curve) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

// pemOf encodes a public key as a PKIX PEM block.
func pemOf(t testing.TB, pub crypto.PublicKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// sign makes a token with claims, signed by method with key.
func sign(t testing.TB, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func valid(extra jwt.MapClaims) jwt.MapClaims {
	c := jwt.MapClaims{"exp": time.Now().Add(time.Hour).Unix(), "sub": "u1"}
	for k, v := range extra {
		c[k] = v
	}
	return c
}

func mustNew(t testing.TB, c Config) *Verifier {
	t.Helper()
	v, err := New(c)
	if err != nil || v == nil {
		t.Fatalf("New(%+v) = %v, %v", c, v, err)
	}
	return v
}

func TestNewOffWithoutKey(t *testing.T) {
	v, err := New(Config{})
	if v != nil || err != nil {
		t.Fatalf("New(Config{}) = %v, %v; want nil, nil (authentication off)", v, err)
	}
	if (Config{}).Enabled() || !(Config{HS256Secret: secret}).Enabled() {
		t.Fatal("Enabled is wrong")
	}
}

func TestNewRefusesBadKeys(t *testing.T) {
	small := mustRSA(1024)
	p384 := mustEC(elliptic.P384())
	privDER, _ := x509.MarshalPKCS8PrivateKey(ecKey)
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // part of the error, naming the variable
	}{
		{"two keys", Config{HS256Secret: secret, PublicKey: pemOf(t, &rsaKey.PublicKey)}, "only one"},
		{"short secret", Config{HS256Secret: "short"}, "AUTH_HS256_SECRET"},
		{"not PEM", Config{PublicKey: "hello"}, "AUTH_PUBLIC_KEY: no PEM block"},
		{"private key", Config{PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}))}, "must not be given"},
		{"small RSA key", Config{PublicKey: pemOf(t, &small.PublicKey)}, "1024 bits"},
		{"P-384 key", Config{PublicKey: pemOf(t, &p384.PublicKey)}, "P-256"},
		{"missing file", Config{PublicKeyFile: filepath.Join(dir, "nope.pem")}, "AUTH_PUBLIC_KEY_FILE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := New(tc.cfg)
			if err == nil || v != nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, %v; want an error with %q", v, err, tc.want)
			}
		})
	}
}

func TestKeyForms(t *testing.T) {
	rsaPEM := pemOf(t, &rsaKey.PublicKey)
	pkcs1 := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&rsaKey.PublicKey)}))
	file := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(file, []byte(pemOf(t, &ecKey.PublicKey)), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		alg  string
		tok  string
	}{
		{"HS256", Config{HS256Secret: secret}, "HS256", sign(t, jwt.SigningMethodHS256, []byte(secret), valid(nil))},
		{"RS256 PKIX", Config{PublicKey: rsaPEM}, "RS256", sign(t, jwt.SigningMethodRS256, rsaKey, valid(nil))},
		{"RS256 PKCS1", Config{PublicKey: pkcs1}, "RS256", sign(t, jwt.SigningMethodRS256, rsaKey, valid(nil))},
		{"RS256 one line with \\n", Config{PublicKey: strings.ReplaceAll(rsaPEM, "\n", `\n`)}, "RS256", sign(t, jwt.SigningMethodRS256, rsaKey, valid(nil))},
		{"ES256 file", Config{PublicKeyFile: file}, "ES256", sign(t, jwt.SigningMethodES256, ecKey, valid(nil))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := mustNew(t, tc.cfg)
			if v.Alg() != tc.alg {
				t.Fatalf("Alg = %s, want %s", v.Alg(), tc.alg)
			}
			c, err := v.Verify(tc.tok)
			if err != nil || c.Subject != "u1" {
				t.Fatalf("Verify = %+v, %v", c, err)
			}
		})
	}
}

func TestVerifyRefuses(t *testing.T) {
	hs := mustNew(t, Config{HS256Secret: secret})
	rs := mustNew(t, Config{PublicKey: pemOf(t, &rsaKey.PublicKey)})
	other := mustRSA(2048)
	now := time.Now()
	// alg=none: an unsigned token, which the library only signs with this
	// explicit opt-in.
	none := sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, valid(nil))
	// Key confusion: an HS256 token whose secret is the RSA public key's
	// PEM, against the RS256 verifier.
	confused := sign(t, jwt.SigningMethodHS256, []byte(pemOf(t, &rsaKey.PublicKey)), valid(nil))
	for _, tc := range []struct {
		name string
		v    *Verifier
		tok  string
		want string
	}{
		{"empty", hs, "", "no token"},
		{"garbage", hs, "not.a.token", "malformed"},
		{"expired", hs, sign(t, jwt.SigningMethodHS256, []byte(secret), jwt.MapClaims{"exp": now.Add(-time.Hour).Unix()}), "expired"},
		{"expired beyond the leeway", hs, sign(t, jwt.SigningMethodHS256, []byte(secret), jwt.MapClaims{"exp": now.Add(-2 * Leeway).Unix()}), "expired"},
		{"no exp", hs, sign(t, jwt.SigningMethodHS256, []byte(secret), jwt.MapClaims{"sub": "u"}), "no expiry"},
		{"not valid yet", hs, sign(t, jwt.SigningMethodHS256, []byte(secret), valid(jwt.MapClaims{"nbf": now.Add(time.Hour).Unix()})), "not valid yet"},
		{"wrong secret", hs, sign(t, jwt.SigningMethodHS256, []byte(strings.Repeat("x", 32)), valid(nil)), "bad signature"},
		{"wrong RSA key", rs, sign(t, jwt.SigningMethodRS256, other, valid(nil)), "bad signature"},
		{"alg none on HS256", hs, none, "bad signature or algorithm"},
		{"alg none on RS256", rs, none, "bad signature or algorithm"},
		{"HS384 on HS256", hs, sign(t, jwt.SigningMethodHS384, []byte(secret), valid(nil)), "signed HS256"},
		{"HS256 with the public key as secret", rs, confused, "signed RS256"},
		{"rooms of the wrong type", hs, sign(t, jwt.SigningMethodHS256, []byte(secret), valid(jwt.MapClaims{"rooms": "lobby"})), "malformed"},
		{"username of the wrong type", hs, sign(t, jwt.SigningMethodHS256, []byte(secret), valid(jwt.MapClaims{"username": 7})), "malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.v.Verify(tc.tok)
			if c != nil || !errors.Is(err, ErrToken) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Verify = %+v, %v; want ErrToken with %q", c, err, tc.want)
			}
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("error %q is not one line", err)
			}
		})
	}
	t.Run("expired within the leeway", func(t *testing.T) {
		tok := sign(t, jwt.SigningMethodHS256, []byte(secret), jwt.MapClaims{"exp": now.Add(-Leeway / 3).Unix()})
		if _, err := hs.Verify(tok); err != nil {
			t.Fatalf("a token expired %v ago (clock skew) was refused: %v", Leeway/3, err)
		}
	})
}

func TestClaims(t *testing.T) {
	hs := mustNew(t, Config{HS256Secret: secret})
	verify := func(extra jwt.MapClaims) *Claims {
		t.Helper()
		c, err := hs.Verify(sign(t, jwt.SigningMethodHS256, []byte(secret), valid(extra)))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	t.Run("no rooms claim allows any room", func(t *testing.T) {
		if c := verify(nil); !c.AllowsRoom("lobby") || c.Username != nil {
			t.Fatalf("claims %+v", c)
		}
	})
	t.Run("empty rooms allows none", func(t *testing.T) {
		if verify(jwt.MapClaims{"rooms": []string{}}).AllowsRoom("lobby") {
			t.Fatal("an empty rooms list allowed lobby")
		}
	})
	t.Run("patterns", func(t *testing.T) {
		c := verify(jwt.MapClaims{"rooms": []string{"lobby", "team-*", "[", "v?.x"}})
		for room, want := range map[string]bool{
			"lobby": true, "team-a": true, "team-": true, "v1.x": true,
			"lobby2": false, "xteam-a": false, "team": false, "v10.x": false, "[": false,
		} {
			if got := c.AllowsRoom(room); got != want {
				t.Errorf("AllowsRoom(%q) = %v, want %v", room, got, want)
			}
		}
	})
	t.Run("username", func(t *testing.T) {
		if c := verify(jwt.MapClaims{"username": "ana"}); c.Username == nil || *c.Username != "ana" {
			t.Fatalf("username claim: %+v", c.Username)
		}
	})
}
