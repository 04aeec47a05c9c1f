package main

import (
	"bufio"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/audit"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/mariadb"
	"github.com/lapsehq/lapse/zsp"
)

// driftConfig has a PostgreSQL, a MariaDB and a Redis target, each with an
// auto-approved entitlement, and the drift reconciler on a short schedule
// in lapse server (reporting only).
const driftConfig = `data_dir: {{DIR}}
sealing_key: {file: sealing.key}
audit:
  interval: 50ms
zsp:
  drift:
    interval: 1s
targets:
  pg:
    kind: postgres
    config:
      dsn: "{{PG_DSN}}"
      prefix: {{PG_PREFIX}}
      databases: [{{PG_DATABASE}}]
  maria:
    kind: mariadb
    config:
      dsn: "{{MARIA_DSN}}"
      prefix: {{MARIA_PREFIX}}
  cache:
    kind: redis
    config:
      prefix: {{REDIS_PREFIX}}
      nodes:
        - name: main
          addr: {{REDIS_ADDR}}
entitlements:
  - name: pg/read
    target: pg
    max_duration: 10m
    approval: {auto: true}
    spec:
      roles: [{{PG_GROUP}}]
  - name: maria/read
    target: maria
    max_duration: 10m
    approval: {auto: true}
    spec:
      roles: [{{MARIA_ROLE}}]
  - name: cache/use
    target: cache
    max_duration: 10m
    approval: {auto: true}
    spec:
      commands: [get]
      keys: ["{{REDIS_KEYS}}"]
`

// TestZSPDriftOnRealTargets: a standing member added by hand to an
// entitled PostgreSQL role, an orphaned broker-made user left on MariaDB
// and a leftover Redis user are all found by lapse zsp drift, while the
// principals of active grants are not; lapse server's scheduled pass finds
// them too; --remove removes the orphans with the connectors' own Revoke
// and Verify and records it, and leaves the standing member reported.
func TestZSPDriftOnRealTargets(t *testing.T) {
	id := secretsSuffix(t)
	pg := newSecretsPostgres(t, id)
	maria := newSecretsMariaDB(t, id)
	redisAddr := newSecretsRedis(t, id)
	redisPrefix := "ls" + id + "_"
	path := writeServerConfig(t, strings.NewReplacer(
		"{{PG_DSN}}", pg.dsn, "{{PG_PREFIX}}", pg.prefix, "{{PG_DATABASE}}", pg.database, "{{PG_GROUP}}", pg.group,
		"{{MARIA_DSN}}", maria.dsn, "{{MARIA_PREFIX}}", maria.prefix, "{{MARIA_ROLE}}", maria.role,
		"{{REDIS_PREFIX}}", redisPrefix, "{{REDIS_ADDR}}", redisAddr, "{{REDIS_KEYS}}", "ldr"+id+":*",
	).Replace(driftConfig))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	out, stderr, err := runLapse(t, "admin", "apikey", "create", "--config", path, "--principal", "alice", "--scope", "read,request")
	if err != nil {
		t.Fatalf("admin apikey create: %v\n%s", err, stderr)
	}
	alice := strings.TrimSpace(out)
	r := startLapse(t, "server", "--config", path, "--listen", "127.0.0.1:0")

	// Active grants on every target: their principals are explained.
	active := map[string]*lapse.RequestResult{}
	for _, ent := range []string{"pg/read", "maria/read", "cache/use"} {
		var res lapse.RequestResult
		if code := call(t, "POST", r.url+"/v1/requests", alice, lapse.RequestInput{Entitlement: ent}, &res); code != 201 || res.Grant == nil || res.Grant.State != lapse.GrantActive {
			t.Fatalf("request %s: status %d, %+v\n%s", ent, code, res.Grant, r.stderr.String())
		}
		active[res.Grant.ID] = &res
	}
	defer func() {
		for gid := range active {
			var g lapse.Grant
			if code := call(t, "POST", r.url+"/v1/grants/"+gid+"/release", alice, lapse.ReleaseInput{Wait: true}, &g); code != 200 || g.State != lapse.GrantRevoked {
				t.Errorf("release %s: status %d, state %s", gid, code, g.State)
			}
		}
	}()

	// A standing member of the entitled PostgreSQL role, added by hand.
	standing := "ldr_" + id + "_standing"
	if _, err := pg.admin.ExecContext(ctx, `CREATE ROLE "`+standing+`" LOGIN`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.admin.ExecContext(context.Background(), `DROP ROLE IF EXISTS "`+standing+`"`) })
	if _, err := pg.admin.ExecContext(ctx, `GRANT "`+pg.group+`" TO "`+standing+`"`); err != nil {
		t.Fatal(err)
	}
	// An orphaned MariaDB user made by the connector for a grant the store
	// has never heard of (a restored backup, another deployment).
	mariaOrphan := lapse.NewID(lapse.PrefixGrant, time.Now())
	mc, err := mariadb.New(ctx, mariadb.Config{DSN: lapse.SecretRef{Value: maria.dsn}, Prefix: maria.prefix}, connector.Env{Name: "maria"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mc.Grant(ctx, &connector.GrantRequest{GrantID: mariaOrphan, Principal: lapse.Principal{ID: "mallory", Kind: lapse.KindHuman},
		Entitlement: "maria/read", Spec: map[string]any{"roles": []any{maria.role}}, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	mc.Close()
	mariaUser := mariadb.UserName(maria.prefix, mariaOrphan) + "@%"
	// A leftover Redis user of the same form.
	redisOrphan := lapse.NewID(lapse.PrefixGrant, time.Now())
	rc := goredis.NewClient(&goredis.Options{Addr: redisAddr, Protocol: 2, DisableIdentity: true})
	defer rc.Close()
	if err := rc.Do(ctx, "ACL", "SETUSER", redisPrefix+redisOrphan, "on", ">"+id+"-leftover-password", "+get", "~ldr"+id+":*").Err(); err != nil {
		t.Fatal(err)
	}

	// lapse zsp drift finds all three, and nothing of the active grants.
	rep, code := runDrift(t, "zsp", "drift", "--config", path, "-o", "json")
	if code != exitError {
		t.Fatalf("exit %d, want %d when drift is found", code, exitError)
	}
	for _, tr := range rep.Targets {
		if tr.Error != "" {
			t.Fatalf("target %s not checked: %s", tr.Name, tr.Error)
		}
	}
	for _, f := range rep.Findings {
		if active[f.GrantID] != nil {
			t.Errorf("the principal %s of active grant %s is flagged: %+v", f.Principal, f.GrantID, f)
		}
	}
	want := []struct{ target, principal, kind, grant string }{
		{"pg", standing, zsp.DriftStanding, ""},
		{"maria", mariaUser, zsp.DriftOrphan, mariaOrphan},
		{"cache", redisPrefix + redisOrphan, zsp.DriftOrphan, redisOrphan},
	}
	for _, w := range want {
		f := findDrift(rep, w.target, w.principal)
		if f == nil {
			t.Fatalf("%s on %s is not found; findings: %+v", w.principal, w.target, rep.Findings)
		}
		if f.Kind != w.kind || f.GrantID != w.grant || f.Action != zsp.ActionReported {
			t.Errorf("finding for %s = %+v, want kind %s, grant %q, reported", w.principal, f, w.kind, w.grant)
		}
	}
	if f := findDrift(rep, "pg", standing); f != nil && !strings.Contains(strings.Join(f.Privileges, " "), pg.group) {
		t.Errorf("the standing member's privileges %v do not name %s", f.Privileges, pg.group)
	}

	// The table says the same for people.
	table, _, err := runLapse(t, "zsp", "drift", "--config", path)
	if err == nil || !strings.Contains(table, standing) || !strings.Contains(table, mariaUser) || !strings.Contains(table, "standing") || !strings.Contains(table, "orphan") {
		t.Errorf("table output (err %v):\n%s", err, table)
	}

	// The server's own schedule found them too, as the server.
	waitForEvent(t, path, func(e *audit.ExportRecord) bool {
		return e.Type == lapse.EventDriftFound && e.ActorID == "lapse" && e.Channel == lapse.ChannelEngine && strings.Contains(string(e.Data), mariaUser)
	})

	// --remove removes the orphans and verifies it; the standing member
	// stays, reported.
	rep, code = runDrift(t, "zsp", "drift", "--config", path, "--remove", "-o", "json")
	if code != exitError || !rep.Remove {
		t.Fatalf("exit %d remove %v, want %d and true", code, rep.Remove, exitError)
	}
	for _, w := range want {
		f := findDrift(rep, w.target, w.principal)
		wantAction := zsp.ActionRemoved
		if w.kind == zsp.DriftStanding {
			wantAction = zsp.ActionReported
		}
		if f == nil || f.Action != wantAction {
			t.Fatalf("finding for %s = %+v, want action %s", w.principal, f, wantAction)
		}
		if wantAction == zsp.ActionRemoved && (f.Removal == nil || f.Removal.Error != "" || len(f.Removal.Checkpoints) == 0) {
			t.Errorf("removal of %s = %+v", w.principal, f.Removal)
		}
	}
	var n int
	if err := maria.admin.QueryRowContext(ctx, "SELECT COUNT(*) FROM mysql.global_priv WHERE User = ?", mariadb.UserName(maria.prefix, mariaOrphan)).Scan(&n); err != nil || n != 0 {
		t.Fatalf("the MariaDB orphan is still there (%d rows, %v)", n, err)
	}
	if u, err := rc.Do(ctx, "ACL", "GETUSER", redisPrefix+redisOrphan).Result(); err != goredis.Nil {
		t.Fatalf("the Redis orphan is still there: %v, %v", u, err)
	}
	var member bool
	if err := pg.admin.QueryRowContext(ctx, `SELECT pg_has_role($1, $2, 'MEMBER')`, standing, pg.group).Scan(&member); err != nil || !member {
		t.Fatalf("the standing member was changed (member %v, %v): it must only be reported", member, err)
	}
	actor := localActor()
	waitForEvent(t, path, func(e *audit.ExportRecord) bool {
		return e.Type == lapse.EventDriftRemoved && e.Outcome == "removed" && e.ActorID == actor.ID && e.Channel == lapse.ChannelCLI && strings.Contains(string(e.Data), mariaUser)
	})

	// What is left is the standing member only: the orphans are gone.
	rep, code = runDrift(t, "zsp", "drift", "--config", path, "-o", "json")
	if code != exitError || findDrift(rep, "maria", mariaUser) != nil || findDrift(rep, "cache", redisPrefix+redisOrphan) != nil || findDrift(rep, "pg", standing) == nil {
		t.Fatalf("after removal: exit %d, findings %+v", code, rep.Findings)
	}
}

// runDrift runs a lapse zsp drift command line with -o json and returns
// its report and exit status.
func runDrift(t *testing.T, args ...string) (*zsp.DriftReport, int) {
	t.Helper()
	out, stderr, err := runLapse(t, args...)
	m := NewMain()
	var errb lockedBuffer
	m.Stderr = &errb
	code := m.ExitStatus(err)
	var rep zsp.DriftReport
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil {
		t.Fatalf("lapse %s: not a JSON report (%v); exit %d\nstdout:\n%s\nstderr:\n%s%s", strings.Join(args, " "), jerr, code, out, stderr, errb.String())
	}
	return &rep, code
}

func findDrift(rep *zsp.DriftReport, target, principal string) *zsp.Finding {
	for i := range rep.Findings {
		if f := &rep.Findings[i]; f.Target == target && f.Principal == principal {
			return f
		}
	}
	return nil
}

// waitForEvent waits until lapse audit export shows an event match
// accepts.
func waitForEvent(t *testing.T, path string, match func(*audit.ExportRecord) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, stderr, err := runLapse(t, "audit", "export", "--config", path)
		if err != nil {
			t.Fatalf("audit export: %v\n%s", err, stderr)
		}
		sc := bufio.NewScanner(strings.NewReader(out))
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			var e audit.ExportRecord
			if json.Unmarshal(sc.Bytes(), &e) == nil && match(&e) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no matching event in the audit log:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
