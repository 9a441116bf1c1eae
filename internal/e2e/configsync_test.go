package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLoopbackConfigSync: a document published on the ACTIVE (fw-a) with
// `tandem config publish` is on the STANDBY (fw-b) byte for byte; a publish
// on the STANDBY is refused naming the ACTIVE; history lists the revision.
func TestLoopbackConfigSync(t *testing.T) {
	p := newPair(t, 50*time.Millisecond, 150*time.Millisecond, 600*time.Millisecond)
	p.start(t, "fw-a")
	p.start(t, "fw-b")
	p.waitElected(t)

	doc := []byte("# resolvers\nnameserver 192.0.2.53\r\n\x00\xfe binary tail")
	file := filepath.Join(p.dir, "dns.conf")
	if err := os.WriteFile(file, doc, 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := runCLI(t, "config", "publish", "--socket", p.socket("fw-a"), "--category", "system", "--name", "dns", "--file", file, "-m", "resolvers")
	if code != 0 || !strings.Contains(out, "revision 1") {
		t.Fatalf("publish on fw-a: exit %d: %s", code, out)
	}

	waitFor(t, 10*time.Second, "the document on fw-b", func() bool {
		b, err := exec.Command(tandemBin, "config", "get", "--socket", p.socket("fw-b"), "--category", "system", "--name", "dns").Output()
		return err == nil && bytes.Equal(b, doc)
	})

	out, code = runCLI(t, "config", "publish", "--socket", p.socket("fw-b"), "--category", "system", "--name", "dns", "--file", file)
	if code == 0 || !strings.Contains(out, "this unit (fw-b) is the STANDBY and read-only; make changes on the ACTIVE unit fw-a (127.0.0.1)") {
		t.Fatalf("publish on fw-b: exit %d: %s", code, out)
	}

	for _, n := range []string{"fw-a", "fw-b"} {
		out, code = runCLI(t, "config", "history", "--socket", p.socket(n))
		if code != 0 || !strings.Contains(out, "system/dns") || !strings.Contains(out, "resolvers") || !strings.Contains(out, "fw-a") {
			t.Fatalf("history on %s: exit %d: %s", n, code, out)
		}
		if lines := strings.Count(strings.TrimSpace(out), "\n"); lines != 1 {
			t.Fatalf("history on %s: want one revision:\n%s", n, out)
		}
	}

	// Both units' heartbeats carry the same head.
	waitFor(t, 5*time.Second, "both units at config revision 1 with the same hash", func() bool {
		a, errA := status(t, p.socket("fw-a"))
		b, errB := status(t, p.socket("fw-b"))
		return errA == nil && errB == nil && a.Config != nil && b.Config != nil &&
			a.Config.Revision == 1 && a.Config.PeerRevision == 1 && !a.Config.Differ && !b.Config.Differ
	})
}
