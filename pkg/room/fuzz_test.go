package room

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// valueDepth returns the deepest nesting of a value in valid JSON: the
// number of arrays and objects around it (0 for the top-level value), as
// decodeMessage's scanner counts it.
func valueDepth(data []byte) int {
	open, deepest, inStr := 0, 0, false
	for i := 0; i < len(data); i++ {
		c := data[i]
		if inStr {
			switch c {
			case '\\':
				i++
			case '"':
				inStr = false
			}
			continue
		}
		switch c {
		case ' ', '\t', '\r', '\n', ',', ':':
		case '}', ']':
			open--
		case '{', '[':
			deepest = max(deepest, open)
			open++
		default: // a scalar or a key, at the depth of its members
			deepest = max(deepest, open)
			inStr = c == '"'
		}
	}
	return deepest
}

// FuzzDecodeMessage checks decodeMessage against encoding/json: the same
// inputs are valid, and the values it returns, re-encoded by
// appendOutbound, are the ones encoding/json decodes (the last duplicate
// winning in both).
func FuzzDecodeMessage(f *testing.F) {
	for _, s := range []string{
		`{"username":"ana","message":"hola"}`,
		`{"username": "ana", "message": "¡hola! 👋"}`,
		`{"message":"m","username":"u","room":"lobby"}`,
		`{"username":"u","message":"m","cid":"c-1"}`,
		`{"cid":"a","username":"u","c\u0069d":{"x":1}}`,
		`{"username":7,"message":{"x":[1,2.5e-3,{"y":null}],"t":true}}`,
		`{"username":"a\"b\\c\/\b\f\n\r\t\u00e9\ud83d\ude00","message":""}`,
		`{"user\u006eame":"u","message":"m","username":"last"}`,
		`{"username":"first","username":"second","message":"m"}`,
		` { "username" : [ ] , "message" : { } } `,
		`{"username":-0.0E+00,"message":123456789012345678901234567890}`,
		`{"username":"u","message":` + nest(127, `1`) + `}`,
		`{"username":"u","message":` + nest(128, `1`) + `}`,
		`{"username":"u","message":"m",}`,
		`{"username":"u"}`,
		`{}`,
		`[1,2,3]`,
		`"just a string"`,
		`01`,
		`{"username":"u","message":"m"} x`,
		"{\"username\":\"a\tb\",\"message\":\"m\"}",
		``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		in := append([]byte(nil), data...)
		user, msg, derr := decodeMessage(data)
		if !bytes.Equal(in, data) {
			t.Fatal("decodeMessage modified its input")
		}
		if derr != nil {
			if user != nil || msg != nil {
				t.Fatalf("values returned with error %s", derr.code)
			}
		}
		var out []byte
		if derr == nil {
			out = appendOutbound(nil, user, msg)
		}
		if !utf8.Valid(data) {
			// The WebSocket layer only passes UTF-8; encoding/json would
			// replace bad bytes, so there is nothing to compare.
			return
		}

		valid := json.Valid(data)
		if valid && valueDepth(data) > maxDepth {
			if derr != errInvalidJSON {
				t.Fatalf("value nested %d deep (over maxDepth %d) gave %s, want invalid_json", valueDepth(data), maxDepth, errCode(derr))
			}
			return
		}
		if valid != (derr != errInvalidJSON) {
			t.Fatalf("json.Valid = %v, decodeMessage error %s", valid, errCode(derr))
		}
		if !valid {
			return
		}

		trimmed := bytes.TrimLeft(data, " \t\r\n")
		if trimmed[0] != '{' {
			if derr != errNotObject {
				t.Fatalf("top-level %c... gave %s, want not_object", trimmed[0], errCode(derr))
			}
			return
		}
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(data, &fields); err != nil {
			t.Fatalf("encoding/json cannot decode a valid object: %v", err)
		}
		// decodeChat finds the same "cid" (ack=1), errors or not.
		f, ferr := decodeChat(data)
		if ferr != derr {
			t.Fatalf("decodeChat error %s, decodeMessage %s", errCode(ferr), errCode(derr))
		}
		if want, ok := fields["cid"]; ok != (f.cid != nil) || !bytes.Equal(f.cid, want) {
			t.Fatalf("decodeChat cid %q, encoding/json %q (present %v)", f.cid, want, ok)
		}
		wantUser, hasUser := fields["username"]
		wantMsg, hasMsg := fields["message"]
		switch {
		case !hasUser:
			if derr != errMissingUser {
				t.Fatalf("no username key, got %s", errCode(derr))
			}
			return
		case !hasMsg:
			if derr != errMissingMessage {
				t.Fatalf("no message key, got %s", errCode(derr))
			}
			return
		case derr != nil:
			t.Fatalf("valid message refused: %s", errCode(derr))
		}

		if !json.Valid(out) || !bytes.HasPrefix(out, []byte(`{"username":`)) {
			t.Fatalf("appendOutbound wrote %s", out)
		}
		var got map[string]json.RawMessage
		if err := json.Unmarshal(out, &got); err != nil || len(got) != 2 {
			t.Fatalf("outbound %s: %v, %d keys", out, err, len(got))
		}
		for _, kv := range []struct {
			key       string
			got, want []byte
		}{{"username", got["username"], wantUser}, {"message", got["message"], wantMsg}} {
			var compact bytes.Buffer
			if err := json.Compact(&compact, kv.want); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(kv.got, compact.Bytes()) {
				t.Fatalf("%s: outbound has %s, encoding/json decoded %s (compact %s)", kv.key, kv.got, kv.want, compact.Bytes())
			}
		}
	})
}
