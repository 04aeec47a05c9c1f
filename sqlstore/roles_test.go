package sqlstore_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/audit"
	"github.com/lapsehq/lapse/sqlstore"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
	"github.com/lapsehq/lapse/sqlstore/storetest"
)

// roles is sqltest.Roles with the steps of the documented setup.
type roles struct{ *sqltest.Roles }

func newRoles(t *testing.T) roles { return roles{sqltest.PostgresRoles(t)} }

// migrateAsOwner applies the migrations as the owner in schema and grants
// the server role its privileges there.
func (r roles) migrateAsOwner(t *testing.T, schema string) {
	t.Helper()
	ctx := context.Background()
	dsn := r.OwnerDSN
	if schema != "" {
		owner := sqltest.OpenRaw(t, r.OwnerDSN)
		if _, err := owner.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
			t.Fatal(err)
		}
		dsn = sqltest.WithSchema(dsn, schema)
	}
	s, err := sqlstore.Open(ctx, sqlstore.DriverPostgres, dsn)
	if err != nil {
		t.Fatalf("migrate as the owner: %v", err)
	}
	defer s.Close()
	if err := s.GrantServerRole(ctx, r.Server); err != nil {
		t.Fatalf("grant the server role: %v", err)
	}
}

// openAsServer opens the store as the server role, without migrating.
func (r roles) openAsServer(t *testing.T, schema string) *sqlstore.Store {
	t.Helper()
	dsn := r.ServerDSN
	if schema != "" {
		dsn = sqltest.WithSchema(dsn, schema)
	}
	s, err := sqlstore.OpenWith(context.Background(), sqlstore.DriverPostgres, dsn, sqlstore.Options{SkipMigrations: true})
	if err != nil {
		t.Fatalf("open as the server role: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// wantRefused fails unless running q as db fails for lack of privilege.
func wantRefused(t *testing.T, db *sql.DB, q string) {
	t.Helper()
	_, err := db.Exec(q)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42501" { // insufficient_privilege
		t.Errorf("%s as the server role: %v, want permission denied", q, err)
	}
}

// TestServerRoleIsInsertOnlyOnAuditTables is the documented setup: the
// schema's owner migrates and grants; the server's role runs the store and
// the sequencer, and cannot update, delete or truncate an audit row.
func TestServerRoleIsInsertOnlyOnAuditTables(t *testing.T) {
	r := newRoles(t)
	ctx := context.Background()

	// Before migrating, the server role cannot create the schema itself,
	// and a server that only checks the schema says what to do.
	if s, err := sqlstore.Open(ctx, sqlstore.DriverPostgres, r.ServerDSN); err == nil {
		s.Close()
		t.Fatal("the server role could migrate (create tables)")
	}
	_, err := sqlstore.OpenWith(ctx, sqlstore.DriverPostgres, r.ServerDSN, sqlstore.Options{SkipMigrations: true})
	if lapse.ErrorCode(err) != lapse.EUNAVAILABLE || !strings.Contains(lapse.ErrorMessage(err), "lapse admin migrate") {
		t.Fatalf("open an unmigrated schema without migrating: %v", err)
	}

	r.migrateAsOwner(t, "")
	s := r.openAsServer(t, "")

	// Store operations as the server role: a request, an approval, a
	// grant with checkpoints, its updates, events, a claim, an API key and
	// a token feed entry.
	now := time.Date(2026, 4, 1, 9, 0, 0, 0, time.UTC)
	req := &lapse.Request{ID: lapse.NewID(lapse.PrefixRequest, now), Requester: lapse.Principal{ID: "alice", Kind: lapse.KindHuman},
		Entitlement: "db/read", State: lapse.RequestPending, Required: 1, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
	g := &lapse.Grant{ID: lapse.NewID(lapse.PrefixGrant, now), RequestID: req.ID, Principal: req.Requester, Entitlement: "db/read",
		Target: "db", State: lapse.GrantScheduled, StartsAt: now, ExpiresAt: now.Add(time.Hour), DueAt: now, CreatedAt: now,
		Checkpoints: []*lapse.Checkpoint{{Name: "role", Kind: lapse.CheckpointTarget, CreatedAt: now}}}
	err = s.Update(ctx, func(tx lapse.Tx) error {
		if err := tx.InsertRequest(ctx, req); err != nil {
			return err
		}
		if err := tx.InsertApproval(ctx, &lapse.Approval{RequestID: req.ID, Approver: lapse.Principal{ID: "bob", Kind: lapse.KindHuman},
			Decision: lapse.DecisionApprove, RequestHash: "h", CreatedAt: now}); err != nil {
			return err
		}
		req.State, req.GrantID = lapse.RequestApproved, g.ID
		if err := tx.UpdateRequest(ctx, req); err != nil {
			return err
		}
		if err := tx.InsertGrant(ctx, g); err != nil {
			return err
		}
		if err := tx.InsertAPIKey(ctx, &lapse.APIKey{ID: "aaaabbbbcccc", Principal: req.Requester, Scopes: []string{lapse.ScopeRead}, Hash: []byte{1}, CreatedAt: now}); err != nil {
			return err
		}
		if _, err := tx.AddTokenRevocation(ctx, &lapse.TokenRevocation{Target: "api", TokenID: "t1", GrantID: g.ID, ExpiresAt: now, RevokedAt: now}); err != nil {
			return err
		}
		if err := tx.AckTokenRevocations(ctx, "api", "consumer", 1); err != nil {
			return err
		}
		return tx.AppendEvent(ctx, &lapse.Event{Time: now, Type: lapse.EventGrantCreated, GrantID: g.ID, RequestID: req.ID})
	})
	if err != nil {
		t.Fatalf("write as the server role: %v", err)
	}
	claimed, err := s.ClaimDueGrants(ctx, lapse.ClaimInput{Owner: "replica", Now: now, Lease: time.Minute, Limit: 10, Expire: true})
	if err != nil || len(claimed) != 1 {
		t.Fatalf("claim as the server role: %v, %v", claimed, err)
	}
	err = s.Update(ctx, func(tx lapse.Tx) error {
		cur, err := tx.GetGrant(ctx, g.ID)
		if err != nil {
			return err
		}
		cur.State, cur.RevokedAt = lapse.GrantRevoked, now
		cur.Checkpoints[0].VerifiedAt = now
		if err := tx.PutCheckpoint(ctx, cur.Checkpoints[0]); err != nil {
			return err
		}
		if err := tx.UpdateGrant(ctx, cur); err != nil {
			return err
		}
		// As the engine records it: the evidence digest binds a receipt's
		// checkpoints to this entry.
		data, err := json.Marshal(map[string]any{"checkpoints": len(cur.Checkpoints), "evidence_digest": lapse.EvidenceDigest(cur.Checkpoints)})
		if err != nil {
			return err
		}
		return tx.AppendEvent(ctx, &lapse.Event{Time: now, Type: lapse.EventGrantRevoked, GrantID: g.ID, RequestID: req.ID, Data: data})
	})
	if err != nil {
		t.Fatalf("revoke as the server role: %v", err)
	}

	// The sequencer as the server role: integrate, sign, store the
	// checkpoint, prove, issue a receipt (which appends an event).
	skey, vkey, err := audit.GenerateKey("lapse.test/roles")
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.NewLog(audit.Config{Backend: s.Audit(), SigningKey: skey})
	if err != nil {
		t.Fatal(err)
	}
	if cp, err := l.Sync(ctx); err != nil || cp.Size != 2 {
		t.Fatalf("sync as the server role: %v, %v", cp, err)
	}
	if err := l.CheckKey(ctx); err != nil {
		t.Fatal(err)
	}
	revoked, err := s.GetGrant(ctx, g.ID)
	if err != nil {
		t.Fatal(err)
	}
	file, err := l.Receipt(ctx, revoked)
	if err != nil {
		t.Fatalf("receipt as the server role: %v", err)
	}
	v, _ := audit.NewVerifier(vkey)
	if _, err := audit.VerifyReceipt(file, v); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Verify(ctx, s.Audit(), audit.VerifyOptions{Verifier: v})
	if err != nil || !rep.OK() || rep.Entries != 3 || rep.Signed != 3 {
		t.Fatalf("verify as the server role: %+v, %v", rep, err)
	}

	// What the role cannot do: rewrite or remove audit rows, or the
	// approvals and token feed, however it connects.
	raw := sqltest.OpenRaw(t, r.ServerDSN)
	for _, table := range sqlstore.AuditTables {
		wantRefused(t, raw, "DELETE FROM "+table)
		wantRefused(t, raw, "TRUNCATE "+table)
	}
	wantRefused(t, raw, "UPDATE events SET outcome = 'forged'")
	wantRefused(t, raw, "UPDATE audit_leaves SET hash = hash")
	wantRefused(t, raw, "UPDATE audit_nodes SET hash = hash")
	wantRefused(t, raw, "UPDATE audit_checkpoints SET note = note")
	wantRefused(t, raw, "UPDATE approvals SET comment = 'x'")
	wantRefused(t, raw, "DELETE FROM grants")
	wantRefused(t, raw, "DROP TABLE events")
	wantRefused(t, raw, "ALTER TABLE events ADD COLUMN x TEXT")
	wantRefused(t, raw, "CREATE TABLE mine (x INT)")
	// Nor can it give itself more: it owns nothing, so PostgreSQL grants
	// nothing (with a warning, not an error).
	_, _ = raw.Exec("GRANT UPDATE, DELETE ON events TO " + r.Server)
	wantRefused(t, raw, "UPDATE events SET outcome = 'forged'")
	wantRefused(t, raw, "DELETE FROM events")
	if rep, err := audit.Verify(ctx, s.Audit(), audit.VerifyOptions{Verifier: v}); err != nil || !rep.OK() {
		t.Fatalf("the log changed: %+v, %v", rep, err)
	}
}

// TestServerRoleConformance runs the whole store conformance suite as the
// server role, each test in a schema the owner migrated: every store
// operation works with the privileges GrantServerRole gives, and no more.
func TestServerRoleConformance(t *testing.T) {
	r := newRoles(t)
	storetest.Run(t, func(t *testing.T) lapse.Store {
		schema := "lapse_test_" + strings.ToLower(lapse.NewID("s", time.Now())[2:14])
		r.migrateAsOwner(t, schema)
		return r.openAsServer(t, schema)
	})
}
