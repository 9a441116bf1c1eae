// Package control is the local control socket between the tandem CLI and a
// running daemon: one JSON request and one JSON response per connection on
// a root-only Unix socket. A request may carry a binary payload (a
// document being published) after its JSON line: the bytes pass untouched,
// where a JSON string costs several scans and an unescape on each side —
// about 4 ms for 100 KB, a third of a publish's time to reach the standby.
//
// The server side only moves requests to a handler (the daemon's event loop)
// and responses back; it never decides or changes anything itself. The socket
// is created 0600 in a 0700 directory, because anyone who can write to it can
// move the cluster's ACTIVE role.
package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// DefaultSocket is where the daemon listens unless configured otherwise.
const DefaultSocket = "/run/tandem/tandem.sock"

// Request is one operation asked of the daemon.
type Request struct {
	Op    string          `json:"op"` // "status", "failover", "promote"
	Force bool            `json:"force,omitempty"`
	Args  json.RawMessage `json:"args,omitempty"`
	// Payload follows the JSON line on the socket, PayloadLen bytes.
	Payload    []byte `json:"-"`
	PayloadLen int    `json:"payload_len,omitempty"`
}

// MaxPayload bounds a request's payload (a published document is at most
// 32 MiB: configsync.MaxDocument).
const MaxPayload = 64 << 20

// Response carries either Data or Error.
type Response struct {
	OK    bool            `json:"ok"`
	Error string          `json:"error,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
}

// Handler answers one request. Its error is shown to the operator as is.
type Handler func(ctx context.Context, req Request) (any, error)

// Listen creates the socket at path: the directory is created 0700, a stale
// socket left by a crashed daemon is replaced, a live one is an error.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control socket directory %s: %w", filepath.Dir(path), err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("control socket %s: a file that is not a socket is in the way; remove it or set control.socket", path)
		}
		if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s: another tandem daemon is listening there; stop it or set control.socket", path)
		}
		_ = os.Remove(path)
	}
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return ln, nil
}

// Serve answers requests on ln until ctx ends, then closes ln and waits for
// the connections in progress.
func Serve(ctx context.Context, ln net.Listener, h Handler, logger *slog.Logger) {
	var wg sync.WaitGroup
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				logger.Warn("control accept failed", "err", err)
				continue
			}
			break
		}
		wg.Go(func() { serveConn(ctx, c, h) })
	}
	wg.Wait()
}

func serveConn(ctx context.Context, c net.Conn, h Handler) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
	var req Request
	resp := Response{}
	if err := readRequest(bufio.NewReader(c), &req); err != nil {
		resp.Error = "bad request: " + err.Error()
	} else if data, err := h(ctx, req); err != nil {
		resp.Error = err.Error()
	} else if raw, err := json.Marshal(data); err != nil {
		resp.Error = "encode response: " + err.Error()
	} else {
		resp.OK, resp.Data = true, raw
	}
	_ = json.NewEncoder(c).Encode(resp)
}

// readRequest reads the JSON line and the payload after it.
func readRequest(r io.Reader, req *Request) error {
	dec := json.NewDecoder(r)
	if err := dec.Decode(req); err != nil {
		return err
	}
	if req.PayloadLen < 0 || req.PayloadLen > MaxPayload {
		return fmt.Errorf("payload_len %d: must be 0 to %d bytes", req.PayloadLen, MaxPayload)
	}
	if req.PayloadLen == 0 {
		return nil
	}
	// The decoder may have read past the JSON: its buffer comes first.
	req.Payload = make([]byte, req.PayloadLen)
	rest := io.MultiReader(dec.Buffered(), r)
	nl := []byte{0}
	if _, err := io.ReadFull(rest, nl); err != nil || nl[0] != '\n' { // the encoder's newline
		return fmt.Errorf("payload: the JSON line must end with a newline before the %d payload bytes", req.PayloadLen)
	}
	if _, err := io.ReadFull(rest, req.Payload); err != nil {
		return fmt.Errorf("payload: got less than payload_len %d bytes: %w", req.PayloadLen, err)
	}
	return nil
}

// Call sends req to the daemon at path and decodes its data into out (which
// may be nil). A refusal by the daemon comes back as an error with its text.
func Call(ctx context.Context, path string, req Request, out any) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return fmt.Errorf("cannot reach the tandem daemon at %s (is `tandem run` running, and are you root?): %w", path, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	req.PayloadLen = len(req.Payload)
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return fmt.Errorf("send to %s: %w", path, err)
	}
	var sendErr error
	if len(req.Payload) > 0 {
		_, sendErr = c.Write(req.Payload)
	}
	// Read the answer even if the payload could not be sent: a daemon
	// that refused the request early says why.
	var resp Response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		if sendErr != nil {
			return fmt.Errorf("send to %s: %w", path, sendErr)
		}
		return fmt.Errorf("read answer from %s: %w", path, err)
	}
	if !resp.OK {
		return errors.New(resp.Error)
	}
	if out != nil && len(resp.Data) > 0 {
		return json.Unmarshal(resp.Data, out)
	}
	return nil
}
