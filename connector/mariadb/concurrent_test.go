package mariadb_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/connector"
	"github.com/lapsehq/lapse/connector/mariadb"
)

// TestConcurrentRevokeAndVerify runs Verify and Revoke for several grants
// at once, so that their reads and drops are batched together, and checks
// that each grant gets its own answer: the objects, passed-on grants and
// sessions of one grant are reported for that grant only, Revoke removes
// each grant's own, and afterwards every grant verifies.
func TestConcurrentRevokeAndVerify(t *testing.T) {
	f := newFixture(t)
	other := "lt_" + rnd(6) + "_other"
	f.exec(t, "CREATE USER `"+other+"`@`%` ACCOUNT LOCK")
	t.Cleanup(func() { f.execQuiet(t, "DROP USER IF EXISTS `"+other+"`@`%`") })
	c := f.open(t)
	ctx := context.Background()

	type grant struct {
		id       string
		g        *connector.GrantResponse
		objects  int  // views and routines it made
		passed   bool // passed a privilege on to other
		sessions bool // holds a session open (as well as what its pool keeps)
	}
	q := "`" + f.db + "`."
	var grants []*grant
	for i := range 8 {
		spec := f.definerSpec()
		// One grantee passes a privilege on (the server keeps only the
		// last grantor of a row, so only one can be told apart).
		if i == 1 {
			spec["grants"] = append(spec["grants"].([]any),
				map[string]any{"database": f.db, "table": "items", "privileges": []any{"SELECT"}})
			spec["grant_option"] = true
		}
		id, g := f.grant(t, c, spec)
		gr := &grant{id: id, g: g}
		db := grantee(t, g)
		if i%2 == 0 {
			for _, s := range []string{
				fmt.Sprintf("CREATE SQL SECURITY DEFINER VIEW %sv_%d AS SELECT id FROM %sitems", q, i, q),
				fmt.Sprintf("CREATE PROCEDURE %sp_%d() SELECT 1", q, i),
			} {
				if _, err := db.Exec(s); err != nil {
					t.Fatalf("grantee %d: %s: %v", i, s, err)
				}
			}
			gr.objects = 2
		}
		if i == 1 {
			if _, err := db.Exec("GRANT SELECT ON " + q + "items TO `" + other + "`@`%`"); err != nil {
				t.Fatalf("grantee %d passes SELECT on: %v", i, err)
			}
			gr.passed = true
		}
		if i%3 == 0 {
			conn, err := db.Conn(ctx)
			if err != nil {
				t.Fatalf("grantee %d login: %v", i, err)
			}
			t.Cleanup(func() { conn.Close() })
			gr.sessions = true
		}
		grants = append(grants, gr)
	}

	each := func(op func(gr *grant) error) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make([]error, len(grants))
		for i, gr := range grants {
			wg.Go(func() { errs[i] = op(gr) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("grant %d: %v", i, err)
			}
		}
	}
	verify := func(gr *grant) (*connector.VerifyResponse, error) {
		return c.Verify(ctx, &connector.VerifyRequest{GrantID: gr.id, State: gr.g.State, Probe: gr.g.Probe})
	}

	each(func(gr *grant) error {
		v, err := verify(gr)
		if err != nil {
			return err
		}
		var acct connector.CheckpointResult
		for _, cp := range v.Checkpoints {
			if cp.Kind == lapse.CheckpointTarget {
				acct = cp
			}
		}
		if n := acct.Evidence["definer_objects"]; n != gr.objects {
			return fmt.Errorf("definer_objects while active = %v, want %d", n, gr.objects)
		}
		want := 0
		if gr.passed {
			want = 1
		}
		if n := acct.Evidence["grants_made_to_others"]; n != want {
			return fmt.Errorf("grants_made_to_others while active = %v, want %d ", n, want)
		}
		if n := acct.Evidence["accounts"]; n != 1 {
			return fmt.Errorf("accounts while active = %v, want 1", n)
		}
		if p, _ := acct.Evidence["login_probe"].(string); !strings.HasPrefix(p, "accepted") {
			return fmt.Errorf("login probe while active = %q", p)
		}
		// Connections the grantee's pool left idle may be listed too; the
		// held one must be, and every row listed must be this grant's.
		res := residueOf(v, lapse.CheckpointSessions)
		if gr.sessions && len(res) == 0 {
			return fmt.Errorf("no sessions residue while a session is open")
		}
		for _, r := range res {
			if !strings.Contains(r, " of "+gr.g.Info["user"]+" ") {
				return fmt.Errorf("sessions residue %q is not this grant's", r)
			}
		}
		return nil
	})

	each(func(gr *grant) error {
		r, err := c.Revoke(ctx, &connector.RevokeRequest{GrantID: gr.id, State: gr.g.State})
		if err != nil {
			return err
		}
		dropped := slices.ContainsFunc(r.Actions, func(a string) bool { return strings.HasPrefix(a, "dropped view") })
		if dropped != (gr.objects > 0) {
			return fmt.Errorf("Revoke actions %q: dropped a view = %v, want %v", r.Actions, dropped, gr.objects > 0)
		}
		if !slices.Contains(r.Actions, "dropped user "+gr.g.Info["account"]) {
			return fmt.Errorf("Revoke actions %q do not report dropping %s", r.Actions, gr.g.Info["account"])
		}
		return nil
	})

	each(func(gr *grant) error {
		v, err := verify(gr)
		if err != nil {
			return err
		}
		if !v.Gone() {
			return fmt.Errorf("not gone after Revoke: %+v", v.Checkpoints)
		}
		return nil
	})

	tr, pl, dr := mariadb.LargestBatches(c)
	t.Logf("largest batches: catalog reads %d, process list reads %d, drops %d", tr, pl, dr)

	var left int
	if err := f.admin.QueryRow("SELECT COUNT(*) FROM information_schema.VIEWS WHERE TABLE_SCHEMA = ?", f.db).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d views made by the grantees survive Revoke", left)
	}
	if err := f.admin.QueryRow("SELECT COUNT(*) FROM mysql.tables_priv WHERE User = ?", other).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Error("a privilege passed on survives Revoke")
	}
}
