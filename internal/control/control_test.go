package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func serve(t *testing.T, path string, h Handler) {
	t.Helper()
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Serve(ctx, ln, h, slog.New(slog.DiscardHandler)); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestCallRoundTripAndErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "tandem.sock")
	serve(t, path, func(_ context.Context, r Request) (any, error) {
		if r.Op == "status" {
			return map[string]any{"state": "ACTIVE", "force": r.Force}, nil
		}
		return nil, errors.New("failover refused: the peer is OUT_OF_SYNC")
	})
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want 0600 (root-only)", fi.Mode().Perm())
	}
	if di, _ := os.Stat(filepath.Dir(path)); di.Mode().Perm() != 0o700 {
		t.Fatalf("socket directory mode %v, want 0700", di.Mode().Perm())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var out struct {
		State string
		Force bool
	}
	if err := Call(ctx, path, Request{Op: "status", Force: true}, &out); err != nil || out.State != "ACTIVE" || !out.Force {
		t.Fatalf("status: %v %+v", err, out)
	}
	err = Call(ctx, path, Request{Op: "failover"}, nil)
	if err == nil || !strings.Contains(err.Error(), "OUT_OF_SYNC") {
		t.Fatalf("the daemon's refusal must come back as the error: %v", err)
	}
}

func TestBadRequestIsAnsweredNotFatal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.sock")
	serve(t, path, func(context.Context, Request) (any, error) { return "ok", nil })
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("{not json\n"))
	buf := make([]byte, 512)
	n, _ := c.Read(buf)
	c.Close()
	if !strings.Contains(string(buf[:n]), "bad request") {
		t.Fatalf("got %q", buf[:n])
	}
	// The server still answers.
	if err := Call(context.Background(), path, Request{Op: "status"}, nil); err != nil {
		t.Fatal(err)
	}
}

func TestListenReplacesStaleSocketRefusesLiveOne(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "another tandem daemon") {
		t.Fatalf("a live socket must be refused: %v", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // a crashed daemon leaves the file
	ln2, err := Listen(path)
	if err != nil {
		t.Fatalf("a stale socket must be replaced: %v", err)
	}
	ln2.Close()
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("a regular file in the way must be an error: %v", err)
	}
}

func TestCallWithoutDaemonNamesTheFix(t *testing.T) {
	err := Call(context.Background(), filepath.Join(t.TempDir(), "none.sock"), Request{Op: "status"}, nil)
	if err == nil || !strings.Contains(err.Error(), "tandem run") {
		t.Fatalf("got %v", err)
	}
}

// A payload crosses byte for byte, whatever it holds (newlines, JSON,
// bytes that are not UTF-8), beside JSON arguments.
func TestCallCarriesPayload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tandem.sock")
	serve(t, path, func(_ context.Context, r Request) (any, error) {
		return map[string]any{"args": string(r.Args), "payload": r.Payload}, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, payload := range [][]byte{nil, []byte("\n"), []byte("{\"op\":\"x\"}\n"), bytes.Repeat([]byte{0xff, 0, '\n', '"'}, 300_000)} {
		var out struct {
			Args    string
			Payload []byte
		}
		if err := Call(ctx, path, Request{Op: "config.publish", Args: json.RawMessage(`{"name":"n"}`), Payload: payload}, &out); err != nil {
			t.Fatal(err)
		}
		if out.Args != `{"name":"n"}` || !bytes.Equal(out.Payload, payload) {
			t.Errorf("payload of %d bytes came through as %d bytes, args %q", len(payload), len(out.Payload), out.Args)
		}
	}
}

// A payload shorter than announced, a length out of bounds, or no
// newline before it: a clear error, and the server goes on.
func TestBadPayloadIsAnswered(t *testing.T) {
	for _, raw := range []string{
		`{"op":"x","payload_len":10}` + "\nshort",
		`{"op":"x","payload_len":-1}` + "\n",
		`{"op":"x","payload_len":999999999}` + "\n",
		`{"op":"x","payload_len":3} abc`,
	} {
		var req Request
		err := readRequest(bufio.NewReader(strings.NewReader(raw)), &req)
		if err == nil || !strings.Contains(err.Error(), "payload") {
			t.Errorf("%q: %v, want an error about the payload", raw, err)
		}
	}
}

func FuzzReadRequest(f *testing.F) {
	f.Add([]byte(`{"op":"status"}` + "\n"))
	f.Add([]byte(`{"op":"config.publish","args":{"name":"n"},"payload_len":3}` + "\nabc"))
	f.Add([]byte(`{"op":"x","payload_len":5}` + "\nab"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var req Request
		if err := readRequest(bufio.NewReader(bytes.NewReader(b)), &req); err == nil && len(req.Payload) != req.PayloadLen {
			t.Fatalf("payload of %d bytes, payload_len %d", len(req.Payload), req.PayloadLen)
		}
	})
}
