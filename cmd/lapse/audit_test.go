package main

import (
	"bufio"
	"bytes"
	"database/sql"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/audit"
)

// TestAuditEndToEnd runs lapse dev, revokes a grant, fetches its receipt
// with the CLI, checks it offline, then verifies and exports the log
// directly from the store, and finds a tampered entry.
func TestAuditEndToEnd(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	r := startLapse(t, "dev", "--data-dir", dir, "--listen", "127.0.0.1:0")
	alice := readKey(t, filepath.Join(dir, "credentials", "alice.key"))
	checkMode(t, filepath.Join(dir, "audit.key"), 0o600)
	pub := filepath.Join(dir, "audit.pub")

	var res lapse.RequestResult
	if code := call(t, "POST", r.url+"/v1/requests", alice, lapse.RequestInput{Entitlement: "demo-api/status"}, &res); code != 201 || res.Grant == nil {
		t.Fatalf("request: status %d", code)
	}
	id := res.Grant.ID
	var g lapse.Grant
	if code := call(t, "POST", r.url+"/v1/grants/"+id+"/release", alice, lapse.ReleaseInput{Wait: true}, &g); code != 200 || g.State != lapse.GrantRevoked {
		t.Fatalf("release: status %d, state %s", code, g.State)
	}

	receipt := filepath.Join(t.TempDir(), "receipt.json")
	if _, stderr, err := runLapse(t, "receipt", id, "--server", r.url, "--token", alice, "--out", receipt); err != nil {
		t.Fatalf("lapse receipt: %v\n%s", err, stderr)
	}
	out, _, err := runLapse(t, "receipt", "verify", receipt, "--key", pub)
	if err != nil || !strings.Contains(out, "OK: the receipt of grant "+id) {
		t.Fatalf("lapse receipt verify: %v\n%s", err, out)
	}
	file, _ := os.ReadFile(receipt)
	bad := bytes.Replace(file, []byte(`"end_reason":"released"`), []byte(`"end_reason":"expired"`), 1)
	if bytes.Equal(bad, file) {
		t.Fatal("the receipt has no end reason to alter")
	}
	os.WriteFile(receipt, bad, 0o644)
	if _, _, err := runLapse(t, "receipt", "verify", receipt, "--key", pub); err == nil {
		t.Fatal("an altered receipt verified")
	}
	// The token must never reach the log.
	token := res.Credentials.Secret["token"]

	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "lapse.yaml")
	out, stderr, err := runLapse(t, "audit", "verify", "--config", cfg)
	if err != nil || !strings.Contains(out, "result        OK") {
		t.Fatalf("audit verify: %v\n%s%s", err, out, stderr)
	}

	exp, _, err := runLapse(t, "audit", "export", "--config", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(exp, token) {
		t.Fatal("the export holds the grant's token")
	}
	var n int
	var revokedSeq int64
	sc := bufio.NewScanner(strings.NewReader(exp))
	for sc.Scan() {
		var rec audit.ExportRecord
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil || rec.Schema != audit.ExportSchema || rec.LeafHash == "" {
			t.Fatalf("export line %q: %v", sc.Text(), err)
		}
		n++
		if rec.Seq != int64(n) {
			t.Fatalf("export line %d has seq %d", n, rec.Seq)
		}
		if rec.Type == lapse.EventGrantRevoked && rec.GrantID == id {
			revokedSeq = rec.Seq
		}
	}
	if n == 0 || revokedSeq == 0 {
		t.Fatalf("export has %d lines, grant.revoked at %d", n, revokedSeq)
	}
	tail, _, err := runLapse(t, "audit", "tail", "--config", cfg, "-n", "2")
	if err != nil || strings.Count(tail, "\n") != 2 {
		t.Fatalf("audit tail: %v\n%q", err, tail)
	}

	// Alter the grant.revoked entry in the database: verify names it.
	db := openRawSQLite(t, filepath.Join(dir, "lapse.db"))
	if _, err := db.Exec("UPDATE events SET outcome = 'forged' WHERE seq = ?", revokedSeq); err != nil {
		t.Fatal(err)
	}
	db.Close()
	out, _, err = runLapse(t, "audit", "verify", "--config", cfg, "--json")
	if err == nil {
		t.Fatal("audit verify passed a tampered log")
	}
	var rep audit.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.FirstBad != revokedSeq {
		t.Fatalf("report first bad = %d (%v), want %d", rep.FirstBad, err, revokedSeq)
	}
}

// openRawSQLite opens a SQLite database directly, as an attacker with
// access to the file would.
func openRawSQLite(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	return db
}
