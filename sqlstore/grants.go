package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/lapsehq/lapse"
)

func scanGrant(sc scanner) (*lapse.Grant, error) {
	g := new(lapse.Grant)
	var (
		pc                                                 principalCols
		state, endReason                                   string
		info                                               sql.NullString
		startsAt, expiresAt, dueAt, leaseUntil             sql.NullInt64
		createdAt, activatedAt, revokeStartedAt, revokedAt sql.NullInt64
	)
	p := &g.Principal
	err := sc.Scan(&g.ID, &g.RequestID, &p.ID, &pc.kind, &p.Name, &pc.groups, &pc.scopes, &p.CredentialID,
		&g.Entitlement, &g.Target, &g.TaskID, &state, &endReason,
		&startsAt, &expiresAt, &dueAt, &g.ConnectorState, &info, &g.SealedCredentials, &g.SealedProbe, &g.CredentialsClaimed,
		&g.Attempts, &g.LastError, &g.LeaseOwner, &leaseUntil, &g.Fence,
		&createdAt, &activatedAt, &revokeStartedAt, &revokedAt, &g.Version, &pc.act, &g.RequestHash)
	if err != nil {
		return nil, err
	}
	var d dec
	pc.fill(&d, p)
	g.State = lapse.GrantState(state)
	g.EndReason = lapse.EndReason(endReason)
	g.StartsAt = timeOf(startsAt)
	g.ExpiresAt = timeOf(expiresAt)
	g.DueAt = timeOf(dueAt)
	g.ConnectorState = bytesOf(g.ConnectorState)
	g.Info = d.stringMap(info)
	g.SealedCredentials = bytesOf(g.SealedCredentials)
	g.SealedProbe = bytesOf(g.SealedProbe)
	g.LeaseUntil = timeOf(leaseUntil)
	g.CreatedAt = timeOf(createdAt)
	g.ActivatedAt = timeOf(activatedAt)
	g.RevokeStartedAt = timeOf(revokeStartedAt)
	g.RevokedAt = timeOf(revokedAt)
	if d.err != nil {
		return nil, fmt.Errorf("decode grant %s: %w", g.ID, d.err)
	}
	return g, nil
}

func scanCheckpoint(sc scanner) (*lapse.Checkpoint, error) {
	cp := new(lapse.Checkpoint)
	var (
		kind                             string
		createdAt, revokedAt, verifiedAt sql.NullInt64
		evidence, residue                sql.NullString
	)
	if err := sc.Scan(&cp.GrantID, &cp.Name, &kind, &createdAt, &revokedAt, &verifiedAt, &evidence, &residue); err != nil {
		return nil, err
	}
	var d dec
	cp.Kind = lapse.CheckpointKind(kind)
	cp.CreatedAt = timeOf(createdAt)
	cp.RevokedAt = timeOf(revokedAt)
	cp.VerifiedAt = timeOf(verifiedAt)
	cp.Evidence = rawOf(evidence)
	cp.Residue = d.strings(residue)
	if d.err != nil {
		return nil, fmt.Errorf("decode checkpoint %s/%s: %w", cp.GrantID, cp.Name, d.err)
	}
	return cp, nil
}

// getGrant reads one grant and its checkpoints.
func (c *conn) getGrant(ctx context.Context, id string, forUpdate bool) (*lapse.Grant, error) {
	if err := noNUL("id", id); err != nil {
		return nil, err
	}
	q := qGetGrant
	if forUpdate {
		q = qGetGrantForUpdate
	}
	g, err := scanGrant(c.queryRow(ctx, q, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, lapse.Errorf(lapse.ENOTFOUND, "grant %s not found", id)
	} else if err != nil {
		return nil, c.fail("get grant", err)
	}
	rows, err := c.query(ctx, qCheckpointsOf, id)
	if err != nil {
		return nil, c.fail("get checkpoints", err)
	}
	defer rows.Close()
	for rows.Next() {
		cp, err := scanCheckpoint(rows)
		if err != nil {
			return nil, c.fail("get checkpoints", err)
		}
		g.Checkpoints = append(g.Checkpoints, cp)
	}
	if err := rows.Err(); err != nil {
		return nil, c.fail("get checkpoints", err)
	}
	return g, nil
}

// GetGrant implements lapse.Store.
func (s *Store) GetGrant(ctx context.Context, id string) (*lapse.Grant, error) {
	var g *lapse.Grant
	err := s.read(ctx, func(c *conn) error {
		var err error
		g, err = c.getGrant(ctx, id, false)
		return err
	})
	return g, err
}

// ListGrants implements lapse.Store: newest first, without checkpoints.
func (s *Store) ListGrants(ctx context.Context, f lapse.GrantFilter) ([]*lapse.Grant, error) {
	var w where
	if f.State != "" {
		w.addText("state = ?", "state", string(f.State))
	}
	if f.PrincipalID != "" {
		w.addText("principal_id = ?", "principal_id", f.PrincipalID)
	}
	if f.Target != "" {
		w.addText("target = ?", "target", f.Target)
	}
	if f.Entitlement != "" {
		w.addText("entitlement = ?", "entitlement", f.Entitlement)
	}
	if f.RequestID != "" {
		w.addText("request_id = ?", "request_id", f.RequestID)
	}
	if f.Live {
		w.add("state NOT IN ('scheduled', 'revoked')")
	}
	if w.err != nil {
		return nil, w.err
	}
	q := "SELECT " + grantCols + " FROM grants" + w.String() + " ORDER BY created_at DESC, id DESC LIMIT ?"
	args := append(w.args, listLimit(f.Limit))
	return listRows(ctx, s, "list grants", q, args, scanGrant)
}

// CountGrantsByState implements lapse.Store. Every known state is present,
// with 0 when no grant is in it.
func (s *Store) CountGrantsByState(ctx context.Context) (map[lapse.GrantState]int, error) {
	c, err := s.reader()
	if err != nil {
		return nil, err
	}
	rows, err := c.query(ctx, qCountByState)
	if err != nil {
		return nil, c.fail("count grants", err)
	}
	defer rows.Close()
	out := make(map[lapse.GrantState]int, len(lapse.AllGrantStates))
	for _, st := range lapse.AllGrantStates {
		out[st] = 0
	}
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return nil, c.fail("count grants", err)
		}
		out[lapse.GrantState(st)] = n
	}
	if err := rows.Err(); err != nil {
		return nil, c.fail("count grants", err)
	}
	return out, nil
}

// ClaimDueGrants implements lapse.Store. One statement leases the grants:
// on PostgreSQL its row locks are taken with SKIP LOCKED, so concurrent
// claimers never wait on or share a grant; on SQLite claims are serialised
// by the writer. The claimed grants come back with their checkpoints,
// oldest due first (returned in deadline order).
// Returns EINVALID if Owner, Now, Lease or Limit is missing.
func (s *Store) ClaimDueGrants(ctx context.Context, in lapse.ClaimInput) ([]*lapse.Grant, error) {
	now, until, err := checkClaim(in)
	if err != nil {
		return nil, err
	}
	var out []*lapse.Grant
	err = s.Update(ctx, func(ltx lapse.Tx) error {
		var err error
		out, err = ltx.(*tx).claim(ctx, in, now, until)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ClaimDueGrants implements lapse.Tx; see Store.ClaimDueGrants.
func (t *tx) ClaimDueGrants(ctx context.Context, in lapse.ClaimInput) ([]*lapse.Grant, error) {
	now, until, err := checkClaim(in)
	if err != nil {
		return nil, err
	}
	return t.claim(ctx, in, now, until)
}

// checkClaim validates a claim and encodes its now and lease end.
// Returns EINVALID if Owner, Now, Lease or Limit is missing.
func checkClaim(in lapse.ClaimInput) (now, until any, err error) {
	switch {
	case in.Owner == "":
		return nil, nil, lapse.FieldErrorf(lapse.EINVALID, "owner", "owner is required")
	case in.Now.IsZero():
		return nil, nil, lapse.FieldErrorf(lapse.EINVALID, "now", "now is required")
	case in.Lease <= 0:
		return nil, nil, lapse.FieldErrorf(lapse.EINVALID, "lease", "lease must be positive")
	case in.Limit <= 0:
		return nil, nil, lapse.FieldErrorf(lapse.EINVALID, "limit", "limit must be positive")
	}
	if err := noNUL("owner", in.Owner); err != nil {
		return nil, nil, err
	}
	if err := noNUL("target", in.Target); err != nil {
		return nil, nil, err
	}
	var e enc
	now = e.time("now", in.Now)
	until = e.time("lease", in.Now.Add(in.Lease))
	return now, until, e.err
}

func (t *tx) claim(ctx context.Context, in lapse.ClaimInput, now, until any) ([]*lapse.Grant, error) {
	args := []any{in.Owner, until, until}
	if in.Expire {
		args = append(args, now, now, now, now)
	}
	args = append(args, now, now)
	var q qid
	switch {
	case in.Expire && in.Target != "":
		q = qClaimTargetExpire
	case in.Expire:
		q = qClaimExpire
	case in.Target != "":
		q = qClaimTarget
	default:
		q = qClaim
	}
	if in.Target != "" {
		args = append(args, in.Target)
	}
	args = append(args, in.Limit)
	return t.claimed(ctx, q, args...)
}

// ClaimExpiring implements lapse.Store.
func (s *Store) ClaimExpiring(ctx context.Context, in lapse.ClaimInput) ([]*lapse.Grant, error) {
	now, _, err := checkClaim(in)
	if err != nil {
		return nil, err
	}
	switch {
	case in.Ahead <= 0:
		return nil, lapse.FieldErrorf(lapse.EINVALID, "ahead", "ahead must be positive")
	case in.Target == "":
		return nil, lapse.FieldErrorf(lapse.EINVALID, "target", "target is required")
	}
	var e enc
	horizon := e.time("ahead", in.Now.Add(in.Ahead))
	if e.err != nil {
		return nil, e.err
	}
	var out []*lapse.Grant
	err = s.Update(ctx, func(ltx lapse.Tx) error {
		var err error
		out, err = ltx.(*tx).claimed(ctx, qClaimExpiring, in.Owner, int64(in.Lease), int64(in.Lease), now, horizon, now, in.Target, in.Limit)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// claimed runs a claim statement and returns the grants it leased, with
// their checkpoints, in deadline order.
func (t *tx) claimed(ctx context.Context, q qid, args ...any) ([]*lapse.Grant, error) {
	rows, err := t.query(ctx, q, args...)
	if err != nil {
		return nil, t.fail("claim grants", err)
	}
	defer rows.Close()
	var out []*lapse.Grant
	for rows.Next() {
		g, err := scanGrant(rows)
		if err != nil {
			return nil, t.fail("claim grants", err)
		}
		out = append(out, g)
	}
	if err := rows.Err(); err != nil {
		return nil, t.fail("claim grants", err)
	}
	rows.Close()
	if err := t.loadCheckpoints(ctx, out); err != nil {
		return nil, err
	}
	// RETURNING follows no ORDER BY, and the claim moved every DueAt to
	// the lease end; return the grants in deadline order.
	slices.SortFunc(out, func(a, b *lapse.Grant) int {
		if c := a.ExpiresAt.Compare(b.ExpiresAt); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return out, nil
}

// loadCheckpoints fills the checkpoints of gs with one query.
func (c *conn) loadCheckpoints(ctx context.Context, gs []*lapse.Grant) error {
	if len(gs) == 0 {
		return nil
	}
	ids := make([]string, len(gs))
	byID := make(map[string]*lapse.Grant, len(gs))
	for i, g := range gs {
		ids[i] = g.ID
		byID[g.ID] = g
	}
	rows, err := c.query(ctx, qCheckpointsOfMany, c.idList(ids))
	if err != nil {
		return c.fail("load checkpoints", err)
	}
	defer rows.Close()
	for rows.Next() {
		cp, err := scanCheckpoint(rows)
		if err != nil {
			return c.fail("load checkpoints", err)
		}
		if g := byID[cp.GrantID]; g != nil {
			g.Checkpoints = append(g.Checkpoints, cp)
		}
	}
	if err := rows.Err(); err != nil {
		return c.fail("load checkpoints", err)
	}
	return nil
}

// NextDueAt implements lapse.Store.
func (s *Store) NextDueAt(ctx context.Context) (time.Time, bool, error) {
	c, err := s.reader()
	if err != nil {
		return time.Time{}, false, err
	}
	var n sql.NullInt64
	if err := c.queryRow(ctx, qNextDueAt).Scan(&n); err != nil {
		return time.Time{}, false, c.fail("next due", err)
	}
	return timeOf(n), n.Valid, nil
}

// DueCounts implements lapse.Store: grants that are not revoked and due at
// or before now, per target.
func (s *Store) DueCounts(ctx context.Context, now time.Time) (map[string]int, error) {
	var e enc
	n := e.time("now", now)
	if e.err != nil {
		return nil, e.err
	}
	c, err := s.reader()
	if err != nil {
		return nil, err
	}
	rows, err := c.query(ctx, qDueCounts, n)
	if err != nil {
		return nil, c.fail("due counts", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var target string
		var k int
		if err := rows.Scan(&target, &k); err != nil {
			return nil, c.fail("due counts", err)
		}
		out[target] = k
	}
	if err := rows.Err(); err != nil {
		return nil, c.fail("due counts", err)
	}
	return out, nil
}

// GetGrant implements lapse.Tx.
func (t *tx) GetGrant(ctx context.Context, id string) (*lapse.Grant, error) {
	if err := t.flushCheckpoints(ctx); err != nil {
		return nil, err
	}
	return t.getGrant(ctx, id, true)
}

// InsertGrant implements lapse.Tx.
func (t *tx) InsertGrant(ctx context.Context, g *lapse.Grant) error {
	if g == nil {
		return lapse.Errorf(lapse.EINVALID, "no grant")
	}
	if err := nonEmpty("id", g.ID); err != nil {
		return err
	}
	var e enc
	id, requestID := e.text("id", g.ID), e.text("request_id", g.RequestID)
	p := e.principal("principal", &g.Principal)
	startsAt, expiresAt, dueAt := e.time("starts_at", g.StartsAt), e.time("expires_at", g.ExpiresAt), e.time("due_at", g.DueAt)
	leaseUntil, createdAt, activatedAt := e.time("lease_until", g.LeaseUntil), e.time("created_at", g.CreatedAt), e.time("activated_at", g.ActivatedAt)
	revokeStartedAt, revokedAt := e.time("revoke_started_at", g.RevokeStartedAt), e.time("revoked_at", g.RevokedAt)
	info := e.stringMap(g.Info)
	text := [...]string{e.text("entitlement", g.Entitlement), e.text("target", g.Target), e.text("task_id", g.TaskID),
		e.text("state", string(g.State)), e.text("end_reason", string(g.EndReason)), e.text("lease_owner", g.LeaseOwner)}
	if e.err != nil {
		return e.err
	}
	res, err := t.exec(ctx, qInsertGrant, id, requestID, p[0], p[1], p[2], p[3], p[4], p[5],
		text[0], text[1], text[2], text[3], text[4],
		startsAt, expiresAt, dueAt, blob(g.ConnectorState), info, blob(g.SealedCredentials), blob(g.SealedProbe), g.CredentialsClaimed,
		g.Attempts, diagnostic(g.LastError), text[5], leaseUntil, g.Fence,
		createdAt, activatedAt, revokeStartedAt, revokedAt, int64(1), e.strings(g.Principal.Act), e.text("request_hash", g.RequestHash))
	if err != nil {
		return t.fail("insert grant", err)
	}
	if n, err := t.rowsAffected("insert grant", res); err != nil {
		return err
	} else if n == 0 {
		return lapse.Errorf(lapse.ECONFLICT, "grant %s already exists", g.ID)
	}
	t.set(&g.Version, 1)
	for _, cp := range g.Checkpoints {
		if cp.GrantID == "" {
			cp.GrantID = g.ID
		}
		if err := t.PutCheckpoint(ctx, cp); err != nil {
			return err
		}
	}
	return nil
}

// UpdateGrant implements lapse.Tx.
func (t *tx) UpdateGrant(ctx context.Context, g *lapse.Grant) error {
	if g == nil {
		return lapse.Errorf(lapse.EINVALID, "no grant")
	}
	var e enc
	startsAt, expiresAt, dueAt := e.time("starts_at", g.StartsAt), e.time("expires_at", g.ExpiresAt), e.time("due_at", g.DueAt)
	leaseUntil, activatedAt := e.time("lease_until", g.LeaseUntil), e.time("activated_at", g.ActivatedAt)
	revokeStartedAt, revokedAt := e.time("revoke_started_at", g.RevokeStartedAt), e.time("revoked_at", g.RevokedAt)
	info := e.stringMap(g.Info)
	state, endReason, owner, id := e.text("state", string(g.State)), e.text("end_reason", string(g.EndReason)), e.text("lease_owner", g.LeaseOwner), e.text("id", g.ID)
	if e.err != nil {
		return e.err
	}
	res, err := t.exec(ctx, qUpdateGrant, state, endReason, startsAt, expiresAt, dueAt,
		blob(g.ConnectorState), info, blob(g.SealedCredentials), blob(g.SealedProbe), g.CredentialsClaimed, g.Attempts,
		diagnostic(g.LastError), owner, leaseUntil, g.Fence, activatedAt, revokeStartedAt, revokedAt,
		id, g.Version)
	if err != nil {
		return t.fail("update grant", err)
	}
	n, err := t.rowsAffected("update grant", res)
	if err != nil {
		return err
	}
	if n == 0 {
		return t.missOrConflict(ctx, qGrantExists, "grant", g.ID)
	}
	t.set(&g.Version, g.Version+1)
	return nil
}

// PutCheckpoint implements lapse.Tx. The row is written with the
// transaction's other checkpoints when it commits or next reads the grant; a
// checkpoint of a grant that does not exist then fails with ENOTFOUND.
func (t *tx) PutCheckpoint(ctx context.Context, cp *lapse.Checkpoint) error {
	if cp == nil {
		return lapse.Errorf(lapse.EINVALID, "no checkpoint")
	}
	if err := nonEmpty("grant_id", cp.GrantID); err != nil {
		return err
	}
	if err := nonEmpty("name", cp.Name); err != nil {
		return err
	}
	var e enc
	grantID, name, kind := e.text("grant_id", cp.GrantID), e.text("name", cp.Name), e.text("kind", string(cp.Kind))
	createdAt, revokedAt, verifiedAt := e.time("created_at", cp.CreatedAt), e.time("revoked_at", cp.RevokedAt), e.time("verified_at", cp.VerifiedAt)
	evidence, residue := e.rawJSON("evidence", cp.Evidence), e.strings(cp.Residue)
	if e.err != nil {
		return e.err
	}
	t.buf.putCheckpoint([8]any{grantID, name, kind, createdAt, revokedAt, verifiedAt, evidence, residue})
	return nil
}
