package main

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/redistest"
	"github.com/chatgw/gateway/internal/testutil"
	"github.com/gobwas/ws"
	"go.yaml.in/yaml/v3"
)

// spec is docs/asyncapi.yaml, decoded, with a validator for the subset
// of JSON Schema it uses: type, properties, required,
// additionalProperties, enum, pattern, minLength, maxLength, minimum and
// $ref to #/ paths.
type spec struct {
	root    map[string]any
	send    map[string]map[string]any // message name -> payload schema
	receive map[string]map[string]any

	mu   sync.Mutex
	seen map[string]int
}

func loadSpec(t *testing.T) *spec {
	t.Helper()
	b, err := os.ReadFile("../../docs/asyncapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var root map[string]any
	if err := yaml.Unmarshal(b, &root); err != nil {
		t.Fatalf("docs/asyncapi.yaml: %v", err)
	}
	if v, _ := root["asyncapi"].(string); !strings.HasPrefix(v, "3.") {
		t.Fatalf("asyncapi: %q, want 3.x", v)
	}
	s := &spec{root: root, send: map[string]map[string]any{}, receive: map[string]map[string]any{}, seen: map[string]int{}}
	ch, _ := s.get("#/channels/chat").(map[string]any)
	if ch["address"] != "/ws/chat/{room}/" {
		t.Fatalf("channel address %v, want /ws/chat/{room}/", ch["address"])
	}
	if _, ok := s.get("#/channels/chat/parameters/room").(map[string]any); !ok {
		t.Fatal("the channel has no room parameter")
	}
	query, _ := s.get("#/channels/chat/bindings/ws/query/properties").(map[string]any)
	for _, opt := range []string{"ids", "since", "history", "ack", "presence", "token"} {
		if query[opt] == nil {
			t.Errorf("the ws binding's query lacks the option %q", opt)
		}
	}
	ops, _ := root["operations"].(map[string]any)
	for name, o := range ops {
		op, _ := o.(map[string]any)
		list, _ := op["messages"].([]any)
		for _, m := range list {
			ref, _ := m.(map[string]any)["$ref"].(string)
			msg, ok := s.resolve(s.get(ref)).(map[string]any)
			if !ok {
				t.Fatalf("operation %s: unresolved message %q", name, ref)
			}
			payload, ok := s.resolve(msg["payload"]).(map[string]any)
			if !ok {
				t.Fatalf("message %s has no payload schema", ref)
			}
			key := msg["name"].(string)
			switch op["action"] {
			case "send":
				s.send[key] = payload
			case "receive":
				s.receive[key] = payload
			default:
				t.Fatalf("operation %s: action %v", name, op["action"])
			}
		}
	}
	msgs, _ := s.get("#/channels/chat/messages").(map[string]any)
	if len(s.send)+len(s.receive) != len(msgs) {
		t.Fatalf("operations use %d messages, the channel has %d", len(s.send)+len(s.receive), len(msgs))
	}
	return s
}

// get returns the node at a "#/a/b" reference.
func (s *spec) get(ref string) any {
	var node any = s.root
	for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
		m, ok := node.(map[string]any)
		if !ok {
			return nil
		}
		node = m[part]
	}
	return node
}

// resolve follows $ref until a node that is not one.
func (s *spec) resolve(node any) any {
	for range 10 {
		m, ok := node.(map[string]any)
		if !ok {
			return node
		}
		ref, ok := m["$ref"].(string)
		if !ok {
			return node
		}
		node = s.get(ref)
	}
	return nil
}

// validate checks v (decoded JSON) against schema and returns the first
// mismatch, or nil.
func (s *spec) validate(schema any, v any, at string) error {
	sc, ok := s.resolve(schema).(map[string]any)
	if !ok {
		return fmt.Errorf("%s: schema %v unresolved", at, schema)
	}
	if typ, ok := sc["type"].(string); ok {
		if !hasType(v, typ) {
			return fmt.Errorf("%s: %v is not %s", at, v, typ)
		}
	}
	if enum, ok := sc["enum"].([]any); ok {
		found := false
		for _, e := range enum {
			if fmt.Sprint(e) == fmt.Sprint(v) {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("%s: %v not in %v", at, v, enum)
		}
	}
	if str, ok := v.(string); ok {
		if p, ok := sc["pattern"].(string); ok && !regexp.MustCompile(p).MatchString(str) {
			return fmt.Errorf("%s: %q does not match %s", at, str, p)
		}
		if n, ok := sc["minLength"].(int); ok && len(str) < n {
			return fmt.Errorf("%s: %q shorter than %d", at, str, n)
		}
		if n, ok := sc["maxLength"].(int); ok && len(str) > n {
			return fmt.Errorf("%s: %q longer than %d", at, str, n)
		}
	}
	if f, ok := v.(float64); ok {
		if n, ok := sc["minimum"].(int); ok && f < float64(n) {
			return fmt.Errorf("%s: %v below %d", at, f, n)
		}
	}
	obj, isObj := v.(map[string]any)
	if !isObj {
		return nil
	}
	props, _ := sc["properties"].(map[string]any)
	if req, ok := sc["required"].([]any); ok {
		for _, r := range req {
			if _, ok := obj[r.(string)]; !ok {
				return fmt.Errorf("%s: required %q missing", at, r)
			}
		}
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if p, ok := props[k]; ok {
			if err := s.validate(p, obj[k], at+"."+k); err != nil {
				return err
			}
			continue
		}
		switch ap := sc["additionalProperties"].(type) {
		case bool:
			if !ap {
				return fmt.Errorf("%s: unexpected key %q", at, k)
			}
		case map[string]any:
			if err := s.validate(ap, obj[k], at+"."+k); err != nil {
				return err
			}
		}
	}
	return nil
}

func hasType(v any, typ string) bool {
	switch typ {
	case "object":
		_, ok := v.(map[string]any)
		return ok
	case "string":
		_, ok := v.(string)
		return ok
	case "integer":
		f, ok := v.(float64)
		return ok && f == float64(int64(f))
	case "number":
		_, ok := v.(float64)
		return ok
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "array":
		_, ok := v.([]any)
		return ok
	case "null":
		return v == nil
	}
	return false
}

// check finds the one message of the direction (send or receive) that
// frame matches, marks it seen and returns its name.
func (s *spec) check(t *testing.T, send bool, frame string) string {
	t.Helper()
	msgs := s.receive
	if send {
		msgs = s.send
	}
	var v any
	if err := json.Unmarshal([]byte(frame), &v); err != nil {
		t.Fatalf("frame %s is not JSON: %v", frame, err)
	}
	var match []string
	var why []string
	for name, schema := range msgs {
		if err := s.validate(schema, v, name); err != nil {
			why = append(why, err.Error())
			continue
		}
		match = append(match, name)
	}
	sort.Strings(why)
	switch len(match) {
	case 0:
		t.Fatalf("frame %s matches no message of docs/asyncapi.yaml:\n  %s", frame, strings.Join(why, "\n  "))
	case 1:
	default:
		t.Fatalf("frame %s matches several messages: %v", frame, match)
	}
	s.mu.Lock()
	s.seen[match[0]]++
	s.mu.Unlock()
	return match[0]
}

// specClient sends and receives frames, checking each against the spec.
type specClient struct {
	*client
	s *spec
	t *testing.T
}

func (c specClient) out(frame string) {
	c.t.Helper()
	if json.Valid([]byte(frame)) {
		var v map[string]any
		if json.Unmarshal([]byte(frame), &v) == nil && v["username"] != nil && v["message"] != nil {
			c.s.check(c.t, true, frame)
		}
	}
	c.send(frame)
}

// in receives the next text frame, checks it and returns its message name
// and the decoded frame.
func (c specClient) in() (string, map[string]any) {
	c.t.Helper()
	f := c.recv()
	name := c.s.check(c.t, false, f)
	var v map[string]any
	_ = json.Unmarshal([]byte(f), &v)
	return name, v
}

// expect receives frames until one of message name, checking each.
func (c specClient) expect(name string) map[string]any {
	c.t.Helper()
	for range 50 {
		if got, v := c.in(); got == name {
			return v
		}
	}
	c.t.Fatalf("no %s frame in 50", name)
	return nil
}

// TestAsyncAPIMatchesServer: docs/asyncapi.yaml is AsyncAPI 3 with the
// chat channel, its room parameter and query options, and every frame a
// real gateway sends for each provoked case validates against exactly one
// of its messages; every message of the file is seen.
func TestAsyncAPIMatchesServer(t *testing.T) {
	s := loadSpec(t)
	dial := func(g *gateway, path string) specClient {
		return specClient{g.dial(t, path), s, t}
	}

	// Embedded engine, history of 3: chat with and without id, ack,
	// presence, truncated and the decode errors.
	g := startGateway(t, withEnv(noRateLimit, map[string]string{"REDIS_MAXLEN": "3"}))
	plain := dial(g, "spec")
	opts := dial(g, "/ws/chat/spec/?ids=1&ack=1&presence=1")
	opts.expect("presence")
	plain.out(`{"username":"ana","message":"hola"}`)
	if v := opts.expect("chatOut"); v["id"] == nil {
		t.Errorf("ids=1 chat frame without id: %v", v)
	}
	opts.out(`{"username":"bob","message":{"nested":[1,2]},"cid":"bob-1"}`)
	if v := opts.expect("ack"); v["cid"] != "bob-1" {
		t.Errorf("ack %v, want cid bob-1", v)
	}
	if v := plain.expect("chatOut"); v["id"] != nil {
		t.Errorf("chat frame without ids=1 has an id: %v", v)
	}
	opts.out(`{"username":"bob","message":"no cid"}`)
	if v := opts.expect("ack"); v["cid"] != nil {
		t.Errorf("ack %v of a message without cid names one", v)
	}
	plain.expect("chatOut")
	for _, tc := range [][2]string{
		{`nope`, "errorInvalidJSON"},
		{`[1,2]`, "errorNotObject"},
		{`{"username":"ana"}`, "errorMissingField"},
		{`{"message":"who am I"}`, "errorMissingField"},
		{`{"username":"a","message":1}`, ""},
	} {
		frame, want := tc[0], tc[1]
		plain.send(frame)
		if want == "" {
			opts.expect("chatOut")
			continue
		}
		if got, v := plain.in(); got != want {
			t.Errorf("%s got %s %v, want %s", frame, got, v, want)
		}
	}
	opts.send(`{"username":"bob","cid":"bob-2"}`)
	if v := opts.expect("errorMissingField"); v["cid"] != "bob-2" {
		t.Errorf("missing_field of an ack=1 message with a cid: %v, want cid bob-2", v)
	}
	opts.send(`{"username":"bob","message":"x","cid":5}`)
	opts.expect("errorInvalidField")
	opts.send(`{"username":"bob","message":"x","cid":""}`)
	opts.expect("errorInvalidField")

	// truncated: 5 messages in a room that keeps 3, replayed since the first.
	w := dial(g, "/ws/chat/spec-trunc/?ack=1")
	var first string
	for i := range 5 {
		w.out(fmt.Sprintf(`{"username":"w","message":"m%d","cid":"w-%d"}`, i, i))
		v := w.expect("ack")
		if i == 0 {
			first = v["ack"].(string)
		}
	}
	r := dial(g, "/ws/chat/spec-trunc/?ids=1&since="+first)
	if v := r.expect("truncated"); v["truncated"].(map[string]any)["from"] == nil {
		t.Errorf("truncated frame without from though 3 are kept: %v", v)
	}
	r.expect("chatOut")
	rn := dial(g, "/ws/chat/spec-trunc/?since=0-1")
	rn.expect("truncated")

	// rate_limited, with and without cid.
	gl := startGateway(t, map[string]string{"RATE_LIMIT": "1", "RATE_BURST": "1", "RATE_CLOSE_AFTER": "100", "RATE_MODE": "drop"})
	fast := dial(gl, "/ws/chat/spec-rate/?ack=1")
	fast.out(`{"username":"f","message":"1","cid":"f-1"}`)
	fast.out(`{"username":"f","message":"2","cid":"f-2"}`)
	fast.out(`{"username":"f","message":"3"}`)
	withCID, without := false, false
	for !withCID || !without {
		switch name, v := fast.in(); {
		case name == "errorRateLimited" && v["cid"] == "f-2":
			withCID = true
		case name == "errorRateLimited" && v["cid"] == nil:
			without = true
		}
	}

	// unavailable and unconfirmed: Redis hung, a short timeout, a small
	// publish queue.
	rs := redistest.Start(t)
	gr := startNodes(t, 1, withEnv(noRateLimit, redisEnvFor(rs), map[string]string{"PUBLISH_QUEUE": "4", "REDIS_TIMEOUT": "1s"}))[0]
	hung := dial(gr, "/ws/chat/spec-hung/?ack=1")
	hung.timeout = 3 * time.Second
	// A message in flight when Redis stops answering is unconfirmed; those
	// past the full queue are unavailable. Which messages are in flight is
	// a race, so try a few rounds, each starting with a healthy pump.
	n := 0
	msg := func() string {
		n++
		return `{"username":"h","message":"` + strconv.Itoa(n) + `","cid":"h-` + strconv.Itoa(n) + `"}`
	}
	for round := 0; s.count("errorUnavailable") == 0 || s.count("errorUnconfirmed") == 0; round++ {
		if round == 5 {
			t.Fatalf("no unavailable and unconfirmed frames in 5 rounds with Redis hung: seen %v", s.seen)
		}
		hung.out(msg())
		hung.expect("ack") // the pump works
		hung.out(msg())
		rs.Pause()
		for range 12 {
			hung.out(msg())
		}
		for {
			f, err := hung.next()
			if err != nil {
				break // quiet for 3 s: this round is over
			}
			if f.op == ws.OpText {
				s.check(t, false, string(f.payload))
			}
		}
		rs.Resume()
		// The next round starts with a healthy pump: after a few failed
		// round trips it backs off (up to REDIS_BACKOFF_MAX), longer than
		// the ack's 3 s wait could allow for.
		testutil.Eventually(t, "the node to be ready again after Redis resumed", func() bool {
			status, _ := gr.httpGet(t, "/readyz")
			return status == 200
		})
	}
	var missing []string
	for _, m := range []map[string]map[string]any{s.send, s.receive} {
		for name := range m {
			if s.count(name) == 0 {
				missing = append(missing, name)
			}
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("messages of docs/asyncapi.yaml never seen from the server: %v (seen %v)", missing, s.seen)
	}
}

func (s *spec) count(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[name]
}
