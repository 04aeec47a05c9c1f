package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"hash/fnv"

	"github.com/lapsehq/lapse"
)

// The agent lane's queries: mandates (migration 0004) and a principal's
// unrevoked grants of one entitlement. They are not hot — one lookup per
// agent request, one per fenced grant start — so they run as dynamic
// queries rather than as prepared fixed ones.

const mandateCols = "id, agent_id, sponsor_id, sponsor_kind, sponsor_name, sponsor_groups, sponsor_scopes, " +
	"sponsor_credential_id, entitlements, max_duration_ns, channel, created_at, expires_at, revoked_at, revoked_by"

const (
	sqlGetMandate          = "SELECT " + mandateCols + " FROM mandates WHERE id = ?"
	sqlGetMandateForUpdate = "SELECT " + mandateCols + " FROM mandates WHERE id = ?{FOR UPDATE}"
	sqlInsertMandate       = "INSERT INTO mandates (" + mandateCols + ") VALUES " +
		"(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
	sqlUpdateMandate = "UPDATE mandates SET revoked_at = ?, revoked_by = ? WHERE id = ?"
	// The predicate repeats grants_fence's, so the partial index serves it.
	sqlUnrevokedGrants = "SELECT " + grantCols + " FROM grants " +
		"WHERE principal_id = ? AND entitlement = ? AND state <> 'revoked' ORDER BY created_at, id"
)

// pairLockClass is the first key of the PostgreSQL advisory locks that
// LockGrantsOf takes ("laps" in ASCII). Two-key advisory locks do not share
// a key space with the one-key migration lock.
const pairLockClass = 0x6c617073

func scanMandate(sc scanner) (*lapse.Mandate, error) {
	m := new(lapse.Mandate)
	var (
		pc                              principalCols
		ents                            sql.NullString
		maxDuration                     int64
		createdAt, expiresAt, revokedAt sql.NullInt64
	)
	p := &m.Sponsor
	if err := sc.Scan(&m.ID, &m.AgentID, &p.ID, &pc.kind, &p.Name, &pc.groups, &pc.scopes, &p.CredentialID,
		&ents, &maxDuration, &m.Channel, &createdAt, &expiresAt, &revokedAt, &m.RevokedBy); err != nil {
		return nil, err
	}
	var d dec
	pc.fill(&d, p)
	m.Entitlements = d.strings(ents)
	m.MaxDuration = lapse.Duration(maxDuration)
	m.CreatedAt = timeOf(createdAt)
	m.ExpiresAt = timeOf(expiresAt)
	m.RevokedAt = timeOf(revokedAt)
	if d.err != nil {
		return nil, fmt.Errorf("decode mandate %s: %w", m.ID, d.err)
	}
	return m, nil
}

func (c *conn) getMandate(ctx context.Context, id string, forUpdate bool) (*lapse.Mandate, error) {
	if err := noNUL("id", id); err != nil {
		return nil, err
	}
	q := sqlGetMandate
	if forUpdate {
		q = sqlGetMandateForUpdate
	}
	rows, err := c.queryDynamic(ctx, q, id)
	if err != nil {
		return nil, c.fail("get mandate", err)
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return nil, c.fail("get mandate", err)
		}
		return nil, lapse.Errorf(lapse.ENOTFOUND, "mandate %s not found", id)
	}
	m, err := scanMandate(rows)
	if err != nil {
		return nil, c.fail("get mandate", err)
	}
	return m, nil
}

// GetMandate implements lapse.Store.
func (s *Store) GetMandate(ctx context.Context, id string) (*lapse.Mandate, error) {
	c, err := s.reader()
	if err != nil {
		return nil, err
	}
	return c.getMandate(ctx, id, false)
}

// ListMandates implements lapse.Store: newest first.
func (s *Store) ListMandates(ctx context.Context, f lapse.MandateFilter) ([]*lapse.Mandate, error) {
	var w where
	if f.AgentID != "" {
		w.addText("agent_id = ?", "agent_id", f.AgentID)
	}
	if f.SponsorID != "" {
		w.addText("sponsor_id = ?", "sponsor_id", f.SponsorID)
	}
	if !f.LiveAt.IsZero() {
		var e enc
		at := e.time("live_at", f.LiveAt)
		if e.err != nil {
			return nil, e.err
		}
		w.add("revoked_at IS NULL AND expires_at > ?", at)
	}
	if w.err != nil {
		return nil, w.err
	}
	q := "SELECT " + mandateCols + " FROM mandates" + w.String() + " ORDER BY created_at DESC, id DESC LIMIT ?"
	args := append(w.args, listLimit(f.Limit))
	return listRows(ctx, s, "list mandates", q, args, scanMandate)
}

// GetMandate implements lapse.Tx.
func (t *tx) GetMandate(ctx context.Context, id string) (*lapse.Mandate, error) {
	return t.getMandate(ctx, id, true)
}

// InsertMandate implements lapse.Tx.
func (t *tx) InsertMandate(ctx context.Context, m *lapse.Mandate) error {
	if m == nil {
		return lapse.Errorf(lapse.EINVALID, "no mandate")
	}
	if err := nonEmpty("id", m.ID); err != nil {
		return err
	}
	if m.Entitlements == nil {
		return lapse.FieldErrorf(lapse.EINVALID, "entitlements", "a mandate names its entitlements")
	}
	var e enc
	id, agent := e.text("id", m.ID), e.text("agent_id", m.AgentID)
	p := e.principal("sponsor", &m.Sponsor)
	ents := e.strings(m.Entitlements)
	channel, revokedBy := e.text("channel", m.Channel), e.text("revoked_by", m.RevokedBy)
	createdAt, expiresAt, revokedAt := e.time("created_at", m.CreatedAt), e.time("expires_at", m.ExpiresAt), e.time("revoked_at", m.RevokedAt)
	if e.err != nil {
		return e.err
	}
	res, err := t.execDynamic(ctx, sqlInsertMandate, id, agent, p[0], p[1], p[2], p[3], p[4], p[5],
		ents, int64(m.MaxDuration), channel, createdAt, expiresAt, revokedAt, revokedBy)
	if err != nil {
		return t.fail("insert mandate", err)
	}
	if n, err := t.rowsAffected("insert mandate", res); err != nil {
		return err
	} else if n == 0 {
		return lapse.Errorf(lapse.ECONFLICT, "mandate %s already exists", m.ID)
	}
	return nil
}

// UpdateMandate implements lapse.Tx.
func (t *tx) UpdateMandate(ctx context.Context, m *lapse.Mandate) error {
	if m == nil {
		return lapse.Errorf(lapse.EINVALID, "no mandate")
	}
	var e enc
	revokedAt, revokedBy, id := e.time("revoked_at", m.RevokedAt), e.text("revoked_by", m.RevokedBy), e.text("id", m.ID)
	if e.err != nil {
		return e.err
	}
	res, err := t.execDynamic(ctx, sqlUpdateMandate, revokedAt, revokedBy, id)
	if err != nil {
		return t.fail("update mandate", err)
	}
	if n, err := t.rowsAffected("update mandate", res); err != nil {
		return err
	} else if n == 0 {
		return lapse.Errorf(lapse.ENOTFOUND, "mandate %s not found", m.ID)
	}
	return nil
}

// LockGrantsOf implements lapse.Tx. On PostgreSQL it takes a transaction
// advisory lock keyed by a hash of the pair (a collision only makes two
// pairs wait for each other); on SQLite the single writer already runs
// transactions one after the other.
func (t *tx) LockGrantsOf(ctx context.Context, principalID, entitlement string) error {
	if err := noNUL("principal_id", principalID); err != nil {
		return err
	}
	if err := noNUL("entitlement", entitlement); err != nil {
		return err
	}
	if t.s.driver != DriverPostgres {
		return nil
	}
	h := fnv.New32a()
	h.Write([]byte(principalID))
	h.Write([]byte{0})
	h.Write([]byte(entitlement))
	if _, err := t.tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1, $2)", int32(pairLockClass), int32(h.Sum32())); err != nil {
		return t.fail("lock grants of a principal", err)
	}
	return nil
}

// UnrevokedGrants implements lapse.Tx.
func (t *tx) UnrevokedGrants(ctx context.Context, principalID, entitlement string) ([]*lapse.Grant, error) {
	if err := noNUL("principal_id", principalID); err != nil {
		return nil, err
	}
	if err := noNUL("entitlement", entitlement); err != nil {
		return nil, err
	}
	rows, err := t.queryDynamic(ctx, sqlUnrevokedGrants, principalID, entitlement)
	if err != nil {
		return nil, t.fail("unrevoked grants", err)
	}
	defer rows.Close()
	var out []*lapse.Grant
	for rows.Next() {
		g, err := scanGrant(rows)
		if err != nil {
			return nil, t.fail("unrevoked grants", err)
		}
		out = append(out, g)
	}
	if err := rows.Err(); err != nil {
		return nil, t.fail("unrevoked grants", err)
	}
	return out, nil
}
