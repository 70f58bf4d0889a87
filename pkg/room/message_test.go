package room

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// nest wraps inner in n arrays: nest(2, "1") is [[1]].
// decodeMessage is decodeChat without "cid": the shape the decode
// tests, benchmarks and fuzz target check.
func decodeMessage(data []byte) (username, message []byte, err *decodeError) {
	f, err := decodeChat(data)
	if err != nil {
		return nil, nil, err
	}
	return f.username, f.message, nil
}

func nest(n int, inner string) string {
	return strings.Repeat("[", n) + inner + strings.Repeat("]", n)
}

// chatWith is a message whose "message" value is v.
func chatWith(v string) string { return `{"username":"u","message":` + v + `}` }

func TestDecodeMessage(t *testing.T) {
	for _, tc := range []struct {
		name      string
		in        string
		err       *decodeError
		user, msg string // raw JSON values, when err is nil
	}{
		// Valid messages.
		{name: "strings", in: `{"username":"ana","message":"hola"}`, user: `"ana"`, msg: `"hola"`},
		{name: "key order", in: `{"message":"m","username":"u"}`, user: `"u"`, msg: `"m"`},
		{name: "white space everywhere", in: " \t\r\n{ \t\r\n\"username\" \t\r\n: \t\r\n\"u\" \t\r\n, \"message\"\n:\n\"m\"\n} \t\r\n", user: `"u"`, msg: `"m"`},
		{name: "extra keys", in: `{"room":"x","username":"u","admin":true,"message":"m","n":[1,{"a":null}]}`, user: `"u"`, msg: `"m"`},
		{name: "object value", in: `{"username":"u","message":{ "x" : [ 1 , 2 , { "y" : null } ] }}`, user: `"u"`, msg: `{ "x" : [ 1 , 2 , { "y" : null } ] }`},
		{name: "empty containers", in: `{"username":{},"message":[ ]}`, user: `{}`, msg: `[ ]`},
		{name: "literals", in: `{"username":null,"message":true,"x":false}`, user: `null`, msg: `true`},
		{name: "zero", in: chatWith(`0`), user: `"u"`, msg: `0`},
		{name: "negative zero", in: chatWith(`-0`), user: `"u"`, msg: `-0`},
		{name: "integer", in: chatWith(`1234567890`), user: `"u"`, msg: `1234567890`},
		{name: "huge integer", in: chatWith(`123456789012345678901234567890`), user: `"u"`, msg: `123456789012345678901234567890`},
		{name: "fraction", in: chatWith(`-12.50`), user: `"u"`, msg: `-12.50`},
		{name: "exponents", in: `{"username":1e5,"message":[1E5,1e+5,1e-5,-0.5E-0,0e0]}`, user: `1e5`, msg: `[1E5,1e+5,1e-5,-0.5E-0,0e0]`},
		{name: "escapes", in: chatWith(`"\" \\ \/ \b \f \n \r \t \u00e9 \uD83D\uDE00 \u0000"`), user: `"u"`, msg: `"\" \\ \/ \b \f \n \r \t \u00e9 \uD83D\uDE00 \u0000"`},
		{name: "lone surrogate escape", in: chatWith(`"\ud800"`), user: `"u"`, msg: `"\ud800"`},
		{name: "raw unicode", in: `{"username":"José","message":"¡hola! 👋 \u2028"}`, user: `"José"`, msg: `"¡hola! 👋 \u2028"`},
		{name: "DEL and U+2028 raw in strings", in: "{\"username\":\"\x7f\",\"message\":\"\u2028\"}", user: "\"\x7f\"", msg: "\"\u2028\""},
		{name: "duplicate: last wins", in: `{"username":"first","message":"m1","username":"second","message":"m2"}`, user: `"second"`, msg: `"m2"`},
		{name: "duplicate of another type", in: `{"username":{"a":1},"message":"m","username":2}`, user: `2`, msg: `"m"`},
		{name: "escaped key", in: `{"user\u006eame":"u","mess\u0061ge":"m"}`, user: `"u"`, msg: `"m"`},
		{name: "fully escaped key", in: `{"\u0075\u0073\u0065\u0072\u006E\u0061\u006D\u0065":"u","message":"m"}`, user: `"u"`, msg: `"m"`},
		{name: "escaped key wins as a duplicate", in: `{"username":"a","message":"m","user\u006eame":"b"}`, user: `"b"`, msg: `"m"`},
		{name: "look-alike keys ignored", in: `{"Username":1,"usernames":2,"user":3,"username ":4,"user\/name":5,"username\u0000":6,"username":"u","message":"m"}`, user: `"u"`, msg: `"m"`},
		{name: "value depth 128", in: chatWith(nest(127, `1`)), user: `"u"`, msg: nest(127, `1`)},
		{name: "empty array at depth 128", in: chatWith(nest(128, ``)), user: `"u"`, msg: nest(128, ``)},
		{name: "deep value under another key", in: `{"x":` + nest(127, `1`) + `,"username":"u","message":"m"}`, user: `"u"`, msg: `"m"`},

		// Not an object.
		{name: "array", in: `["username","message"]`, err: errNotObject},
		{name: "string", in: `"hi"`, err: errNotObject},
		{name: "number", in: ` 42 `, err: errNotObject},
		{name: "null", in: `null`, err: errNotObject},
		{name: "true", in: `true`, err: errNotObject},
		{name: "deep array at top", in: nest(129, ``), err: errNotObject},

		// Missing fields.
		{name: "empty object", in: `{}`, err: errMissingUser},
		{name: "empty object with spaces", in: ` { } `, err: errMissingUser},
		{name: "no message", in: `{"username":"u"}`, err: errMissingMessage},
		{name: "no username", in: `{"message":"m"}`, err: errMissingUser},
		{name: "keys differ in case", in: `{"Username":"u","Message":"m"}`, err: errMissingUser},
		{name: "nested username does not count", in: `{"x":{"username":"u"},"message":"m"}`, err: errMissingUser},

		// Invalid JSON (RFC 8259).
		{name: "empty", in: ``, err: errInvalidJSON},
		{name: "only white space", in: " \t\r\n", err: errInvalidJSON},
		{name: "open brace", in: `{`, err: errInvalidJSON},
		{name: "close brace", in: `}`, err: errInvalidJSON},
		{name: "truncated", in: `{"username":"a","message":`, err: errInvalidJSON},
		{name: "unclosed object", in: `{"username":"a","message":"m"`, err: errInvalidJSON},
		{name: "trailing comma", in: `{"username":"a","message":"m",}`, err: errInvalidJSON},
		{name: "leading comma", in: `{,"username":"a","message":"m"}`, err: errInvalidJSON},
		{name: "double comma", in: `{"username":"a",,"message":"m"}`, err: errInvalidJSON},
		{name: "missing comma", in: `{"username":"a" "message":"m"}`, err: errInvalidJSON},
		{name: "missing colon", in: `{"username" "a","message":"m"}`, err: errInvalidJSON},
		{name: "missing value", in: `{"username":,"message":"m"}`, err: errInvalidJSON},
		{name: "key without value", in: `{"username"}`, err: errInvalidJSON},
		{name: "unquoted key", in: `{username:"a","message":"m"}`, err: errInvalidJSON},
		{name: "single quotes", in: `{'username':'a','message':'m'}`, err: errInvalidJSON},
		{name: "number key", in: `{1:"a"}`, err: errInvalidJSON},
		{name: "trailing garbage", in: `{"username":"a","message":"m"} x`, err: errInvalidJSON},
		{name: "two objects", in: `{"username":"a","message":"m"}{}`, err: errInvalidJSON},
		{name: "trailing comma in array", in: chatWith(`[1,]`), err: errInvalidJSON},
		{name: "unclosed array", in: chatWith(`[1`), err: errInvalidJSON},
		{name: "mismatched brackets", in: chatWith(`[1}`), err: errInvalidJSON},
		{name: "invalid non-object", in: `[1,]`, err: errInvalidJSON},
		{name: "leading zero", in: chatWith(`01`), err: errInvalidJSON},
		{name: "negative leading zero", in: chatWith(`-01`), err: errInvalidJSON},
		{name: "dot without digits", in: chatWith(`1.`), err: errInvalidJSON},
		{name: "leading dot", in: chatWith(`.5`), err: errInvalidJSON},
		{name: "plus sign", in: chatWith(`+1`), err: errInvalidJSON},
		{name: "lone minus", in: chatWith(`-`), err: errInvalidJSON},
		{name: "exponent without digits", in: chatWith(`1e`), err: errInvalidJSON},
		{name: "exponent sign without digits", in: chatWith(`1e+`), err: errInvalidJSON},
		{name: "hex number", in: chatWith(`0x10`), err: errInvalidJSON},
		{name: "NaN", in: chatWith(`NaN`), err: errInvalidJSON},
		{name: "Infinity", in: chatWith(`-Infinity`), err: errInvalidJSON},
		{name: "truncated literal", in: chatWith(`tru`), err: errInvalidJSON},
		{name: "capitalised literal", in: chatWith(`True`), err: errInvalidJSON},
		{name: "literal with a suffix", in: chatWith(`nullx`), err: errInvalidJSON},
		{name: "raw newline in string", in: chatWith("\"a\nb\""), err: errInvalidJSON},
		{name: "raw tab in string", in: chatWith("\"a\tb\""), err: errInvalidJSON},
		{name: "raw NUL in string", in: chatWith("\"a\x00b\""), err: errInvalidJSON},
		{name: "control character in key", in: "{\"user\x01\":1,\"username\":\"u\",\"message\":\"m\"}", err: errInvalidJSON},
		{name: "unknown escape", in: chatWith(`"\x41"`), err: errInvalidJSON},
		{name: "short unicode escape", in: chatWith(`"\u12"`), err: errInvalidJSON},
		{name: "non-hex unicode escape", in: chatWith(`"\u12G4"`), err: errInvalidJSON},
		{name: "bad escape in key", in: `{"user\qname":"u","message":"m"}`, err: errInvalidJSON},
		{name: "unterminated string", in: `{"username":"u","message":"m`, err: errInvalidJSON},
		{name: "backslash at the end", in: `{"username":"u","message":"m\`, err: errInvalidJSON},
		{name: "comment", in: `{"username":"u", // hi` + "\n" + `"message":"m"}`, err: errInvalidJSON},
		{name: "byte order mark", in: "\ufeff" + `{"username":"u","message":"m"}`, err: errInvalidJSON},
		{name: "form feed is not white space", in: "{\f\"username\":\"u\",\"message\":\"m\"}", err: errInvalidJSON},
		{name: "no-break space is not white space", in: "{\u00a0\"username\":\"u\",\"message\":\"m\"}", err: errInvalidJSON},
		{name: "value depth 129", in: chatWith(nest(128, `1`)), err: errInvalidJSON},
		{name: "empty array at depth 129", in: chatWith(nest(129, ``)), err: errInvalidJSON},
		{name: "too deep under another key", in: `{"x":` + nest(128, `1`) + `,"username":"u","message":"m"}`, err: errInvalidJSON},
		{name: "too deep object", in: chatWith(strings.Repeat(`{"a":`, 129) + `1` + strings.Repeat(`}`, 129)), err: errInvalidJSON},
		{name: "too deep array at top", in: nest(130, ``), err: errInvalidJSON},
		{name: "invalid JSON missing fields", in: `{"x":}`, err: errInvalidJSON},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte(tc.in)
			user, msg, err := decodeMessage(data)
			if err != tc.err {
				t.Fatalf("decodeMessage(%q) error %v, want %v", tc.in, errCode(err), errCode(tc.err))
			}
			if err == nil {
				if string(user) != tc.user || string(msg) != tc.msg {
					t.Fatalf("decodeMessage(%q) = %s, %s; want %s, %s", tc.in, user, msg, tc.user, tc.msg)
				}
				if !aliases(data, user) || !aliases(data, msg) {
					t.Fatal("the values do not point into the input")
				}
			} else if user != nil || msg != nil {
				t.Fatalf("decodeMessage returned values with error %s", err.code)
			}
			// encoding/json agrees on validity, except for values nested
			// deeper than maxDepth (encoding/json allows 10000).
			if !strings.Contains(tc.name, "deep") && !strings.Contains(tc.name, "depth") {
				if valid := json.Valid(data); valid != (err != errInvalidJSON) {
					t.Fatalf("json.Valid = %v, decodeMessage error %v", valid, errCode(err))
				}
			}
		})
	}
}

func errCode(e *decodeError) string {
	if e == nil {
		return "<nil>"
	}
	return e.code + " " + e.field
}

// aliases reports whether sub lies inside data.
func aliases(data, sub []byte) bool {
	if len(sub) == 0 {
		return true
	}
	for i := range data {
		if &data[i] == &sub[0] {
			return len(data)-i >= len(sub)
		}
	}
	return false
}

func TestDecodeErrorsAreDistinct(t *testing.T) {
	for _, e := range []*decodeError{errInvalidJSON, errNotObject, errMissingUser, errMissingMessage} {
		if e.code == "" || e.detail == "" {
			t.Errorf("error %+v has no code or detail", e)
		}
		if e.static == nil {
			t.Errorf("error %s has no pre-encoded frame", e.code)
		}
		var doc struct{ Error, Field, Detail string }
		if err := json.Unmarshal(errorJSON(&e.errorFrame), &doc); err != nil || doc.Error != e.code || doc.Field != e.field || doc.Detail != e.detail {
			t.Errorf("errorJSON(%s) = %s (%v)", e.code, errorJSON(&e.errorFrame), err)
		}
	}
}

func TestAppendCompact(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"string untouched", `"a  b \t c"`, `"a  b \t c"`},
		{"string with raw unicode", `"¡ hola 👋 "`, `"¡ hola 👋 "`},
		{"number", `-1.5e+10`, `-1.5e+10`},
		{"literal", `null`, `null`},
		{"empty object", `{ }`, `{}`},
		{"empty array", "[ \t\r\n]", `[]`},
		{"nested", `{ "x" : [ 1 , 2 , { "y" : null } ] }`, `{"x":[1,2,{"y":null}]}`},
		{"all white space kinds", "[\t1,\n2,\r3, 4 ]", `[1,2,3,4]`},
		{"strings inside containers untouched", `{ "k k" : "v  w" , "a" : [ " " , "\t" ] }`, `{"k k":"v  w","a":[" ","\t"]}`},
		{"escaped quotes", `[ "a\" , \"b" , "c" ]`, `["a\" , \"b","c"]`},
		{"escaped backslash before the quote", `[ "a\\" , "b" ]`, `["a\\","b"]`},
		{"unicode escapes", `{ "\u0022 " : "\u005c" }`, `{"\u0022 ":"\u005c"}`},
		{"deep", nest(100, ` 1 `), nest(100, `1`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := []byte("prefix:")
			got := appendCompact(prefix, []byte(tc.in))
			if string(got) != "prefix:"+tc.want {
				t.Fatalf("appendCompact(%s) = %s, want %s", tc.in, got[len(prefix):], tc.want)
			}
			var std bytes.Buffer
			if err := json.Compact(&std, []byte(tc.in)); err != nil {
				t.Fatal(err)
			}
			if std.String() != tc.want {
				t.Fatalf("json.Compact gives %s, the case wants %s", std.String(), tc.want)
			}
		})
	}
}

func TestAppendOutbound(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"strings", `{"username": "ana", "message": "hola"}`, `{"username":"ana","message":"hola"}`},
		{"extra keys dropped, order fixed", `{"message":"m","x":1,"username":"a"}`, `{"username":"a","message":"m"}`},
		{"nested values compacted", "{\"username\": 7, \"message\": {\"x\" :\n [1, 2, {\"y\": null}]}}", `{"username":7,"message":{"x":[1,2,{"y":null}]}}`},
		{"strings untouched", `{"username":"a b","message":{"k": "v w"}}`, `{"username":"a b","message":{"k":"v w"}}`},
		{"escapes kept", `{"username":"\u00e9\"q\"","message":"line\nbreak \\ tab\t"}`, `{"username":"\u00e9\"q\"","message":"line\nbreak \\ tab\t"}`},
		{"last duplicate", `{"username":"first","username":"second","message":"m"}`, `{"username":"second","message":"m"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			user, msg, derr := decodeMessage([]byte(tc.in))
			if derr != nil {
				t.Fatal(derr.code)
			}
			buf := make([]byte, 0, 256)
			out := appendOutbound(buf, user, msg)
			if string(out) != tc.want {
				t.Fatalf("appendOutbound = %s, want %s", out, tc.want)
			}
			if !json.Valid(out) {
				t.Fatalf("%s is not valid JSON", out)
			}
			if &out[0] != &buf[:1][0] {
				t.Fatal("appendOutbound did not reuse the buffer it was given")
			}
			if !utf8.Valid(out) {
				t.Fatal("output is not UTF-8")
			}
		})
	}
}
