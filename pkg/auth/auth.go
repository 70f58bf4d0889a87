package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Leeway is the clock skew allowed when checking "exp" and "nbf".
const Leeway = 30 * time.Second

// MinSecretBytes is the shortest HS256 secret accepted: RFC 7518 section
// 3.2 requires a key at least as long as the hash output (256 bits).
const MinSecretBytes = 32

// minRSABits is the smallest RSA modulus accepted for RS256 (RFC 7518
// section 3.3 requires 2048 bits or more).
const minRSABits = 2048

// ErrToken is wrapped by every error Verify returns: the token is missing,
// malformed, expired, not yet valid, signed with another key or
// algorithm, or carries claims of the wrong type.
var ErrToken = errors.New("auth: invalid token")

// Config selects the key tokens are verified with. Set at most one of its
// fields; all empty turns authentication off.
type Config struct {
	// HS256Secret is the shared secret of HS256 tokens, at least 32 bytes.
	// Empty means no secret.
	HS256Secret string `env:"AUTH_HS256_SECRET" help:"shared secret (at least 32 bytes) of HS256 tokens; when set, joining a room needs ?token=<JWT>"`
	// PublicKey is a PEM public key (or certificate): RSA for RS256 tokens,
	// ECDSA P-256 for ES256. Literal "\n" sequences stand for line breaks,
	// so it fits one line of an env file. Empty means no key.
	PublicKey string `env:"AUTH_PUBLIC_KEY" help:"PEM public key (RSA: RS256, EC P-256: ES256; \\n for line breaks); when set, joining a room needs ?token=<JWT>"`
	// PublicKeyFile is a file holding PublicKey. Empty means none.
	PublicKeyFile string `env:"AUTH_PUBLIC_KEY_FILE" help:"file holding the PEM public key, instead of AUTH_PUBLIC_KEY"`
}

// Enabled reports whether c sets a key.
func (c Config) Enabled() bool {
	return c.HS256Secret != "" || c.PublicKey != "" || c.PublicKeyFile != ""
}

// Verifier checks tokens against one key and one algorithm. It is safe
// for concurrent use.
type Verifier struct {
	alg    string
	key    any
	parser *jwt.Parser
}

// New returns a Verifier for the key c sets, or nil and no error when it
// sets none (authentication off). Errors name the variable to fix.
func New(c Config) (*Verifier, error) {
	set := 0
	for _, v := range []string{c.HS256Secret, c.PublicKey, c.PublicKeyFile} {
		if v != "" {
			set++
		}
	}
	switch {
	case set == 0:
		return nil, nil
	case set > 1:
		return nil, errors.New("auth: set only one of AUTH_HS256_SECRET, AUTH_PUBLIC_KEY and AUTH_PUBLIC_KEY_FILE")
	}
	v := &Verifier{}
	switch {
	case c.HS256Secret != "":
		if len(c.HS256Secret) < MinSecretBytes {
			return nil, fmt.Errorf("auth: AUTH_HS256_SECRET is %d bytes; use at least %d random bytes", len(c.HS256Secret), MinSecretBytes)
		}
		v.alg, v.key = jwt.SigningMethodHS256.Alg(), []byte(c.HS256Secret)
	case c.PublicKey != "":
		pemText := strings.ReplaceAll(c.PublicKey, `\n`, "\n")
		alg, key, err := parsePublicKey([]byte(pemText))
		if err != nil {
			return nil, fmt.Errorf("auth: AUTH_PUBLIC_KEY: %w", err)
		}
		v.alg, v.key = alg, key
	default:
		b, err := os.ReadFile(c.PublicKeyFile)
		if err != nil {
			return nil, fmt.Errorf("auth: AUTH_PUBLIC_KEY_FILE: %w", err)
		}
		alg, key, err := parsePublicKey(b)
		if err != nil {
			return nil, fmt.Errorf("auth: AUTH_PUBLIC_KEY_FILE %s: %w", c.PublicKeyFile, err)
		}
		v.alg, v.key = alg, key
	}
	v.parser = jwt.NewParser(
		jwt.WithValidMethods([]string{v.alg}),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(Leeway),
	)
	return v, nil
}

// parsePublicKey reads the first PEM block of b: a PKIX public key, a
// PKCS #1 RSA public key or a certificate. It returns the JWS algorithm the
// key verifies.
func parsePublicKey(b []byte) (alg string, key any, err error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return "", nil, errors.New("no PEM block found; want -----BEGIN PUBLIC KEY-----")
	}
	var pub any
	switch block.Type {
	case "PUBLIC KEY":
		pub, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
	case "CERTIFICATE":
		var cert *x509.Certificate
		if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
			pub = cert.PublicKey
		}
	default:
		return "", nil, fmt.Errorf("PEM block is %q; want a PUBLIC KEY (a private key must not be given to the gateway)", block.Type)
	}
	if err != nil {
		return "", nil, err
	}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return "", nil, fmt.Errorf("RSA key has %d bits; RS256 needs at least %d", k.N.BitLen(), minRSABits)
		}
		return jwt.SigningMethodRS256.Alg(), k, nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return "", nil, fmt.Errorf("ECDSA key is on %s; ES256 needs P-256", k.Curve.Params().Name)
		}
		return jwt.SigningMethodES256.Alg(), k, nil
	}
	return "", nil, fmt.Errorf("key type %T is not supported; use RSA (RS256) or ECDSA P-256 (ES256)", pub)
}

// Alg returns the algorithm tokens must be signed with: HS256, RS256 or
// ES256.
func (v *Verifier) Alg() string { return v.alg }

// Claims are the claims of a verified token that the gateway uses.
type Claims struct {
	// Rooms lists the rooms the token may join, as path.Match patterns
	// ("lobby", "team-*"). Absent (nil) means any room; an empty list
	// means none.
	Rooms []string `json:"rooms,omitempty"`
	// Username, when present, is the username members see on every
	// message of the connection, whatever the client sends.
	Username *string `json:"username,omitempty"`
	jwt.RegisteredClaims
}

// Verify checks token's signature, algorithm and expiry and returns its
// claims. Its errors wrap ErrToken and say what is wrong in one line that
// may be shown to the client.
func (v *Verifier) Verify(token string) (*Claims, error) {
	if token == "" {
		return nil, fmt.Errorf("%w: no token; pass one in the token query parameter", ErrToken)
	}
	var c Claims
	_, err := v.parser.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return v.key, nil })
	if err != nil {
		return nil, fmt.Errorf("%w: %s", ErrToken, reason(err, v.alg))
	}
	return &c, nil
}

// reason says in a few words why the parser refused a token.
func reason(err error, alg string) string {
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return "token expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "token not valid yet (nbf)"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "token has no expiry (exp)"
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "token malformed"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return "bad signature or algorithm; tokens must be signed " + alg + " with the gateway's key"
	}
	return "token claims invalid"
}

// AllowsRoom reports whether the claims let the holder join room.
func (c *Claims) AllowsRoom(room string) bool {
	if c.Rooms == nil {
		return true
	}
	for _, p := range c.Rooms {
		if ok, err := path.Match(p, room); ok && err == nil {
			return true
		}
	}
	return false
}
