package fake

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
)

// A process killed between its journal entry and the change it records
// leaves the entry; the process that makes the change next adds none. The
// journal then says exactly what happened on the target: one grant, one
// revocation.
func TestJournalOnceAcrossAKill(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: filepath.Join(dir, "records"), Journal: filepath.Join(dir, "journal")}
	if err := os.Mkdir(opts.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	a, b := New(opts), New(opts)
	defer a.Close()
	defer b.Close()
	ctx := context.Background()
	id := lapse.NewID(lapse.PrefixGrant, time.Now())
	req := &connector.GrantRequest{GrantID: id, Principal: lapse.Principal{ID: "alice"}, ExpiresAt: time.Now().Add(time.Hour)}
	if _, err := a.Grant(ctx, req); err != nil {
		t.Fatal(err)
	}
	// b retries the same Grant (a's answer was lost): no second entry.
	if _, err := b.Grant(ctx, req); err != nil {
		t.Fatal(err)
	}
	// a recorded its revocation and was killed before removing the record.
	if err := a.writeJournal("revoke", id); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Revoke(ctx, &connector.RevokeRequest{GrantID: id}); err != nil {
		t.Fatal(err)
	}
	if b.Has(id) {
		t.Fatal("the record survived the revocation")
	}
	if _, err := a.Revoke(ctx, &connector.RevokeRequest{GrantID: id}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(opts.Journal)
	if err != nil {
		t.Fatal(err)
	}
	if g, r := strings.Count(string(data), `"op":"grant"`), strings.Count(string(data), `"op":"revoke"`); g != 1 || r != 1 {
		t.Fatalf("journal has %d grants and %d revocations, want 1 and 1:\n%s", g, r, data)
	}
}
