package main

import (
	"bufio"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/audit"
	"github.com/lapsehq/lapse/config"
	"github.com/lapsehq/lapse/sqlstore"
)

// selfConfig has one entitlement that one member of the approvers' group
// decides, open to people and to agents acting for them.
const selfConfig = `data_dir: {{DIR}}
log: {level: warn}
sealing_key: {file: sealing.key}
targets:
  scratch:
    kind: fake
entitlements:
  - name: scratch/check
    target: scratch
    lanes: [human, agent]
    max_duration: 10m
    approval:
      required: 1
      approvers: ["group:approvers"]
`

// TestSelfApprovalIsRefusedThroughTheCLI runs lapse server and the real
// CLI. An admin makes keys for the requester's ID under every spelling
// (with lapse admin, and with lapse apikey through the server); with each
// of them, with an admin-scoped one, and with her agent's key, lapse
// approve and lapse deny of her own request and of the one her agent filed
// for her are refused, and the count does not move. A spelling with a
// zero-width character gets no key at all.
func TestSelfApprovalIsRefusedThroughTheCLI(t *testing.T) {
	path := writeServerConfig(t, selfConfig)
	adminKey := func(t *testing.T, args ...string) (string, error) {
		t.Helper()
		out, _, err := runLapse(t, append([]string{"admin", "apikey", "create", "--config", path}, args...)...)
		return strings.TrimSpace(out), err
	}
	mustAdminKey := func(args ...string) string {
		t.Helper()
		k, err := adminKey(t, args...)
		if err != nil {
			t.Fatalf("lapse admin apikey create %s: %v", strings.Join(args, " "), err)
		}
		return k
	}
	root := mustAdminKey("--principal", "root", "--scope", "admin")
	alice := mustAdminKey("--principal", "alice", "--group", "approvers", "--scope", "read,request")
	bob := mustAdminKey("--principal", "bob", "--group", "approvers", "--scope", "read,approve")
	agent := mustAdminKey("--principal", "helper", "--kind", "agent", "--group", "approvers", "--scope", "read,request,approve")
	r := startLapse(t, "server", "--config", path, "--listen", "127.0.0.1:0")

	cli := func(t *testing.T, tok string, args ...string) (string, error) {
		t.Helper()
		out, _, err := runLapse(t, append(args, "--server", r.url, "--token", tok)...)
		return out, err
	}
	mustCLI := func(t *testing.T, tok string, args ...string) string {
		t.Helper()
		out, err := cli(t, tok, args...)
		if err != nil {
			t.Fatalf("lapse %s: %v", strings.Join(args, " "), err)
		}
		return out
	}
	file := func(t *testing.T, tok string) *lapse.Request {
		t.Helper()
		var res lapse.RequestResult
		if err := json.Unmarshal([]byte(mustCLI(t, tok, "request", "scratch/check", "-o", "json")), &res); err != nil || res.Request == nil || res.Request.State != lapse.RequestPending {
			t.Fatalf("lapse request: %v %+v", err, res.Request)
		}
		return res.Request
	}
	mustCLI(t, alice, "mandate", "create", "--agent", "helper", "--entitlement", "scratch/check", "--max-duration", "10m", "--expires-in", "1h")

	// The store, read beside the server, to check the log after each try.
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	dsn, err := cfg.ResolveStoreDSN()
	if err != nil {
		t.Fatal(err)
	}
	store, err := sqlstore.Open(context.Background(), sqlstore.DriverSQLite, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	undecided := func(t *testing.T, id, what string) {
		t.Helper()
		var req lapse.Request
		if code := call(t, "GET", r.url+"/v1/requests/"+id, bob, nil, &req); code != 200 || req.State != lapse.RequestPending || len(req.Approvals) != 0 {
			t.Fatalf("%s: GET request: %d, %s with %d votes; want pending with none", what, code, req.State, len(req.Approvals))
		}
		evs, err := store.ListEvents(context.Background(), lapse.EventFilter{RequestID: id, Limit: lapse.MaxListLimit})
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			if ev.Type == lapse.EventRequestApproved || ev.Type == lapse.EventRequestDenied || ev.Type == lapse.EventRequestDecided {
				t.Fatalf("%s: the log holds %s by %s", what, ev.Type, ev.ActorID)
			}
		}
	}

	var decided []string // requests another approver decided, for the export check
	for _, sp := range []struct {
		name, id string
		valid    bool
	}{
		{"exact", "alice", true},
		{"upper case", "ALICE", true},
		{"surrounding spaces", " alice ", true},
		{"full-width", "ａｌｉｃｅ", true},
		{"Cyrillic a", "\u0430lice", true},
		{"zero-width space", "ali\u200bce", false},
		{"combining grapheme joiner", "ali\u034fce", false},
	} {
		t.Run(sp.name, func(t *testing.T) {
			// One key by lapse admin (the store directly), one by lapse
			// apikey (through the server, as root).
			approve, err := adminKey(t, "--principal", sp.id, "--group", "approvers", "--scope", "read,approve")
			out, apiErr := cli(t, root, "apikey", "create", "--principal", sp.id, "--kind", "human", "--group", "approvers", "--scope", "admin", "-o", "json")
			if !sp.valid {
				if lapse.ErrorCode(err) == lapse.EINVALID && lapse.ErrorCode(apiErr) == lapse.EINVALID && lapse.ErrorField(apiErr) == "principal_id" {
					return // refused at normalisation, as it must be
				}
				t.Errorf("keys for %q, which reads as \"alice\": lapse admin apikey create: %v; lapse apikey create: %v; want both refused with %s",
					sp.id, err, apiErr, lapse.EINVALID)
				// Go on: what follows shows what such a key can do.
			}
			if err != nil || apiErr != nil {
				t.Fatalf("keys for %q: lapse admin apikey create: %v; lapse apikey create: %v", sp.id, err, apiErr)
			}
			var nk lapse.NewAPIKey
			if err := json.Unmarshal([]byte(out), &nk); err != nil || nk.Secret == "" {
				t.Fatalf("lapse apikey create -o json: %v", err)
			}
			keys := []struct{ who, key string }{{"her approve key", approve}, {"her admin key", nk.Secret}, {"her agent's key", agent}}

			own := file(t, alice)
			filed := file(t, agent)
			if filed.Requester.ID != "helper" || len(filed.Requester.Act) != 1 || filed.Requester.Act[0] != "alice" {
				t.Fatalf("the agent's request was filed as %+v", filed.Requester)
			}
			for _, req := range []*lapse.Request{own, filed} {
				for _, k := range keys {
					for _, verb := range []string{"approve", "deny"} {
						_, err := cli(t, k.key, verb, req.ID)
						if code := lapse.ErrorCode(err); code != lapse.EFORBIDDEN {
							t.Errorf("lapse %s of %s's request with %s: %v, want %s", verb, req.Requester.ID, k.who, err, lapse.EFORBIDDEN)
						}
						undecided(t, req.ID, "after lapse "+verb+" with "+k.who)
					}
				}
				// Another approver decides: the refusals were about who asked.
				var out lapse.Request
				if err := json.Unmarshal([]byte(mustCLI(t, bob, "approve", req.ID, "-o", "json")), &out); err != nil || out.State != lapse.RequestApproved || len(out.Approvals) != 1 {
					t.Fatalf("bob approves: %v %+v", err, out)
				}
				decided = append(decided, req.ID)
			}
		})
	}

	// The exported log agrees: every request had one vote and one
	// decision, both bob's.
	exp, _, err := runLapse(t, "audit", "export", "--config", path)
	if err != nil {
		t.Fatal(err)
	}
	votes := map[string][]string{}
	sc := bufio.NewScanner(strings.NewReader(exp))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var rec audit.ExportRecord
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("export line %q: %v", sc.Text(), err)
		}
		switch rec.Type {
		case lapse.EventRequestApproved, lapse.EventRequestDenied, lapse.EventRequestDecided:
			votes[rec.RequestID] = append(votes[rec.RequestID], rec.Type+" by "+rec.ActorID)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	for _, id := range decided {
		want := []string{lapse.EventRequestApproved + " by bob", lapse.EventRequestDecided + " by bob"}
		if got := votes[id]; strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("request %s: the log holds %v, want %v", id, got, want)
		}
	}
}
