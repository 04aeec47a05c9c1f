package main

import (
	"bufio"
	"bytes"
	"database/sql"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
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

// TestAuditAPI uses the audit routes of a running server as an auditor
// would: signs a checkpoint on demand (admin only), then checks an
// inclusion proof of an entry and a consistency proof between two
// checkpoints against the roots of checkpoints opened with the pinned key.
func TestAuditAPI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	r := startLapse(t, "dev", "--data-dir", dir, "--listen", "127.0.0.1:0")
	alice := readKey(t, filepath.Join(dir, "credentials", "alice.key"))
	admin := readKey(t, filepath.Join(dir, "credentials", "admin.key"))
	v, err := audit.NewVerifier(readKey(t, filepath.Join(dir, "audit.pub")))
	if err != nil {
		t.Fatal(err)
	}
	sign := func() *audit.Checkpoint {
		t.Helper()
		var got struct {
			Size       uint64
			Checkpoint string
		}
		if code := call(t, "POST", r.url+"/v1/audit/checkpoint", admin, nil, &got); code != 200 {
			t.Fatalf("sign a checkpoint as admin: %d", code)
		}
		cp, err := audit.OpenCheckpoint([]byte(got.Checkpoint), v)
		if err != nil || cp.Size != got.Size {
			t.Fatalf("the signed checkpoint does not open with the pinned key: %v", err)
		}
		return cp
	}
	if code := call(t, "POST", r.url+"/v1/audit/checkpoint", alice, nil, nil); code != 403 {
		t.Errorf("sign a checkpoint without the admin scope: %d, want 403", code)
	}

	first := sign()
	var res lapse.RequestResult
	if code := call(t, "POST", r.url+"/v1/requests", alice, lapse.RequestInput{Entitlement: "demo-api/status"}, &res); code != 201 || res.Grant == nil {
		t.Fatalf("request: %d", code)
	}
	second := sign()
	if second.Size <= first.Size {
		t.Fatalf("the log did not grow: %d then %d", first.Size, second.Size)
	}

	var g lapse.Grant
	call(t, "GET", r.url+"/v1/grants/"+res.Grant.ID, alice, nil, &g)
	seq := g.Events[0].Seq
	var inc audit.InclusionProof
	if code := call(t, "GET", r.url+"/v1/audit/proof/inclusion?seq="+strconv.FormatInt(seq, 10)+"&size="+strconv.FormatUint(second.Size, 10), alice, nil, &inc); code != 200 {
		t.Fatalf("inclusion proof: %d", code)
	}
	if err := audit.VerifyInclusion(uint64(seq-1), second.Size, inc.LeafHash, inc.Proof, second.Root); err != nil {
		t.Errorf("inclusion proof of entry %d against the pinned checkpoint: %v", seq, err)
	}
	if bytes.Equal(inc.LeafHash, audit.LeafHash(audit.EncodeLeaf(g.Events[0]))) == false {
		t.Error("the proven leaf is not the grant's first event as the API shows it")
	}
	var cons audit.ConsistencyProof
	q := "?from=" + strconv.FormatUint(first.Size, 10) + "&to=" + strconv.FormatUint(second.Size, 10)
	if code := call(t, "GET", r.url+"/v1/audit/proof/consistency"+q, alice, nil, &cons); code != 200 {
		t.Fatalf("consistency proof: %d", code)
	}
	if err := audit.VerifyConsistency(first.Size, second.Size, cons.Proof, first.Root, second.Root); err != nil {
		t.Errorf("consistency proof: %v", err)
	}
	// A proof against another root fails: the check above can fail.
	if err := audit.VerifyConsistency(first.Size, second.Size, cons.Proof, second.Root, second.Root); err == nil {
		t.Error("a consistency proof verified against the wrong root")
	}
}
