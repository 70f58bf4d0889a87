package main

import (
	"bufio"
	"bytes"
	"strings"
	"testing"

	"github.com/gobwas/ws"
)

func TestAppendClientFrame(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 65535, 65536} {
		payload := bytes.Repeat([]byte("a"), n)
		b := appendClientFrame(nil, ws.OpText, payload, [4]byte{1, 2, 3, 4})
		f, err := ws.ReadFrame(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("len %d: gobwas cannot read our frame: %v", n, err)
		}
		f = ws.UnmaskFrameInPlace(f)
		if !f.Header.Fin || f.Header.OpCode != ws.OpText || !bytes.Equal(f.Payload, payload) {
			t.Fatalf("len %d: got header %+v and %d payload bytes", n, f.Header, len(f.Payload))
		}
	}
}

func TestReadFrame(t *testing.T) {
	server := func(op ws.OpCode, fin bool, p string) []byte {
		b, err := ws.CompileFrame(ws.NewFrame(op, fin, []byte(p)))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	big := strings.Repeat("x", 1000)
	tests := []struct {
		name    string
		stream  []byte
		bufSize int
		want    []string
	}{
		{"one small", server(ws.OpText, true, "hi"), 256, []string{"hi"}},
		{"two in a buffer", append(server(ws.OpText, true, "a"), server(ws.OpPing, true, "p")...), 256, []string{"a", "p"}},
		{"larger than buffer is copied", server(ws.OpText, true, big), 256, []string{big}},
		{"16-bit length in buffer", server(ws.OpText, true, big), 2048, []string{big}},
		{"masked by mistake", appendClientFrame(nil, ws.OpText, []byte("m"), [4]byte{9, 8, 7, 6}), 256, []string{"m"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// One byte at a time, like partial reads from the socket.
			br := bufio.NewReaderSize(&oneByteReader{tt.stream}, tt.bufSize)
			for _, want := range tt.want {
				f, err := readFrame(br)
				if err != nil {
					t.Fatalf("readFrame: %v", err)
				}
				if string(f.payload) != want {
					t.Fatalf("payload %q, want %q", f.payload, want)
				}
				if _, err := br.Discard(f.discard); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := readFrame(br); err == nil {
				t.Fatal("read past the end without error")
			}
		})
	}
}

// oneByteReader returns its data one byte per Read.
type oneByteReader struct{ b []byte }

func (r *oneByteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, bytes.ErrTooLarge // any error ends the stream
	}
	p[0] = r.b[0]
	r.b = r.b[1:]
	return 1, nil
}

func BenchmarkReceivePath(b *testing.B) {
	frame, _ := ws.CompileFrame(ws.NewTextFrame(appendChatMessage(nil, stamp{run: 1, sender: 2, seq: 3, nanos: 4}, 0, false)))
	stream := bytes.Repeat(frame, 64)
	rd := bytes.NewReader(stream)
	br := bufio.NewReaderSize(rd, 2048)
	var tr seqTracker
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%64 == 0 {
			rd.Reset(stream)
			br.Reset(rd)
		}
		f, err := readFrame(br)
		if err != nil {
			b.Fatal(err)
		}
		sb, _ := findStamp(f.payload)
		st, _ := parseStamp(sb)
		tr.record(st.seq)
		_, _ = br.Discard(f.discard)
	}
}
