package configsync

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"testing"

	"github.com/tandem-ha/tandem/internal/configstore"
)

// TestConflictContentReadable: a revision set aside after a partition is
// readable byte for byte with config.conflict (`tandem config conflicts
// --id`), not only listed.
func TestConflictContentReadable(t *testing.T) {
	a, b, l := pair(t, nil)
	publish(t, a, "system", "dns", []byte("shared"))
	waitFor(t, "the first revision on fw-b", func() bool { return sameHead(a, b) })

	l.cut(a, b)
	b.SetActive(true)
	mine := []byte("b's change\x00\xff\r\n")
	publish(t, b, "system", "dns", mine)
	publish(t, a, "system", "dns", []byte("a's change"))
	b.SetActive(false)
	connect(a, b)
	waitFor(t, "fw-b to converge to fw-a's head", func() bool { return sameHead(a, b) })

	v, err := b.Handle("config.conflicts", nil, false, "", "")
	if err != nil {
		t.Fatal(err)
	}
	cs := v.([]ConflictView)
	if len(cs) != 1 {
		t.Fatalf("fw-b conflicts = %+v, want its one divergent revision", cs)
	}
	args, _ := json.Marshal(ConflictArgs{ID: cs[0].ID})
	v, err = b.Handle("config.conflict", args, false, "", "")
	if err != nil {
		t.Fatal(err)
	}
	doc := v.(Document)
	got, _ := base64.StdEncoding.DecodeString(doc.ContentBase64)
	if string(got) != string(mine) || doc.Revision.Category != "system" || doc.Revision.Name != "dns" || doc.Revision.Origin != "fw-b" {
		t.Fatalf("conflict %d = %+v %q, want fw-b's system/dns %q", cs[0].ID, doc.Revision, got, mine)
	}
	args, _ = json.Marshal(ConflictArgs{ID: cs[0].ID + 100})
	if _, err := b.Handle("config.conflict", args, false, "", ""); !errors.Is(err, configstore.ErrNotFound) {
		t.Fatalf("an unknown conflict: err = %v, want ErrNotFound", err)
	}
}
