package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/lapsehq/lapse"
)

type scanner interface {
	Scan(dest ...any) error
}

func scanRequest(sc scanner) (*lapse.Request, error) {
	r := new(lapse.Request)
	var (
		pc                              principalCols
		duration                        int64
		state                           string
		createdAt, expiresAt, decidedAt sql.NullInt64
	)
	p := &r.Requester
	err := sc.Scan(&r.ID, &p.ID, &pc.kind, &p.Name, &pc.groups, &pc.scopes, &p.CredentialID,
		&r.Entitlement, &duration, &r.Reason, &r.Ticket, &r.TaskID, &r.Channel, &r.Hash, &state,
		&r.Required, &r.GrantID, &r.DecisionNote, &createdAt, &expiresAt, &decidedAt, &r.Version)
	if err != nil {
		return nil, err
	}
	var d dec
	pc.fill(&d, p)
	r.Duration = lapse.Duration(duration)
	r.State = lapse.RequestState(state)
	r.CreatedAt = timeOf(createdAt)
	r.ExpiresAt = timeOf(expiresAt)
	r.DecidedAt = timeOf(decidedAt)
	if d.err != nil {
		return nil, fmt.Errorf("decode request %s: %w", r.ID, d.err)
	}
	return r, nil
}

func scanApproval(sc scanner) (*lapse.Approval, error) {
	a := new(lapse.Approval)
	var (
		pc        principalCols
		decision  string
		createdAt sql.NullInt64
	)
	p := &a.Approver
	err := sc.Scan(&a.RequestID, &p.ID, &pc.kind, &p.Name, &pc.groups, &pc.scopes, &p.CredentialID,
		&decision, &a.Comment, &a.RequestHash, &a.Channel, &createdAt)
	if err != nil {
		return nil, err
	}
	var d dec
	pc.fill(&d, p)
	a.Decision = lapse.Decision(decision)
	a.CreatedAt = timeOf(createdAt)
	if d.err != nil {
		return nil, fmt.Errorf("decode approval of %s: %w", a.RequestID, d.err)
	}
	return a, nil
}

// getRequest reads one request and its approvals.
func (c *conn) getRequest(ctx context.Context, id string, forUpdate bool) (*lapse.Request, error) {
	q := qGetRequest
	if forUpdate {
		q = qGetRequestForUpdate
	}
	r, err := scanRequest(c.queryRow(ctx, q, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, lapse.Errorf(lapse.ENOTFOUND, "request %s not found", id)
	} else if err != nil {
		return nil, c.fail("get request", err)
	}
	rows, err := c.query(ctx, qApprovalsOf, id)
	if err != nil {
		return nil, c.fail("get approvals", err)
	}
	defer rows.Close()
	for rows.Next() {
		a, err := scanApproval(rows)
		if err != nil {
			return nil, c.fail("get approvals", err)
		}
		r.Approvals = append(r.Approvals, a)
	}
	if err := rows.Err(); err != nil {
		return nil, c.fail("get approvals", err)
	}
	return r, nil
}

// GetRequest implements lapse.Store.
func (s *Store) GetRequest(ctx context.Context, id string) (*lapse.Request, error) {
	var r *lapse.Request
	err := s.read(ctx, func(c *conn) error {
		var err error
		r, err = c.getRequest(ctx, id, false)
		return err
	})
	return r, err
}

// ListRequests implements lapse.Store: newest first, with approvals.
func (s *Store) ListRequests(ctx context.Context, f lapse.RequestFilter) ([]*lapse.Request, error) {
	var w where
	if f.State != "" {
		w.add("state = ?", string(f.State))
	}
	if f.RequesterID != "" {
		w.add("requester_id = ?", f.RequesterID)
	}
	q := "SELECT " + requestCols + " FROM requests" + w.String() + " ORDER BY created_at DESC, id DESC LIMIT ?"
	args := append(w.args, listLimit(f.Limit))
	var out []*lapse.Request
	err := s.read(ctx, func(c *conn) error {
		rows, err := c.queryDynamic(ctx, q, args...)
		if err != nil {
			return c.fail("list requests", err)
		}
		defer rows.Close()
		byID := map[string]*lapse.Request{}
		ids := []string{}
		for rows.Next() {
			r, err := scanRequest(rows)
			if err != nil {
				return c.fail("list requests", err)
			}
			out = append(out, r)
			byID[r.ID] = r
			ids = append(ids, r.ID)
		}
		if err := rows.Err(); err != nil {
			return c.fail("list requests", err)
		}
		rows.Close()
		if len(ids) == 0 {
			return nil
		}
		arows, err := c.query(ctx, qApprovalsOfMany, c.idList(ids))
		if err != nil {
			return c.fail("list approvals", err)
		}
		defer arows.Close()
		for arows.Next() {
			a, err := scanApproval(arows)
			if err != nil {
				return c.fail("list approvals", err)
			}
			if r := byID[a.RequestID]; r != nil {
				r.Approvals = append(r.Approvals, a)
			}
		}
		if err := arows.Err(); err != nil {
			return c.fail("list approvals", err)
		}
		return nil
	})
	return out, err
}

// GetRequest implements lapse.Tx.
func (t *tx) GetRequest(ctx context.Context, id string) (*lapse.Request, error) {
	return t.getRequest(ctx, id, true)
}

// InsertRequest implements lapse.Tx. Approvals already attached to r are
// inserted too.
func (t *tx) InsertRequest(ctx context.Context, r *lapse.Request) error {
	if r == nil {
		return lapse.Errorf(lapse.EINVALID, "no request")
	}
	if err := nonEmpty("id", r.ID); err != nil {
		return err
	}
	var e enc
	p := e.principal(&r.Requester)
	createdAt, expiresAt, decidedAt := e.time("created_at", r.CreatedAt), e.time("expires_at", r.ExpiresAt), e.time("decided_at", r.DecidedAt)
	if e.err != nil {
		return e.err
	}
	res, err := t.exec(ctx, qInsertRequest, r.ID, p[0], p[1], p[2], p[3], p[4], p[5],
		r.Entitlement, int64(r.Duration), r.Reason, r.Ticket, r.TaskID, r.Channel, r.Hash, string(r.State),
		r.Required, r.GrantID, r.DecisionNote, createdAt, expiresAt, decidedAt, int64(1))
	if err != nil {
		return t.fail("insert request", err)
	}
	if n, err := t.rowsAffected("insert request", res); err != nil {
		return err
	} else if n == 0 {
		return lapse.Errorf(lapse.ECONFLICT, "request %s already exists", r.ID)
	}
	t.set(&r.Version, 1)
	for _, a := range r.Approvals {
		if a.RequestID == "" {
			a.RequestID = r.ID
		}
		if err := t.InsertApproval(ctx, a); err != nil {
			return err
		}
	}
	return nil
}

// UpdateRequest implements lapse.Tx.
func (t *tx) UpdateRequest(ctx context.Context, r *lapse.Request) error {
	if r == nil {
		return lapse.Errorf(lapse.EINVALID, "no request")
	}
	var e enc
	expiresAt, decidedAt := e.time("expires_at", r.ExpiresAt), e.time("decided_at", r.DecidedAt)
	if e.err != nil {
		return e.err
	}
	res, err := t.exec(ctx, qUpdateRequest, string(r.State), r.Required, r.GrantID, r.DecisionNote,
		expiresAt, decidedAt, r.ID, r.Version)
	if err != nil {
		return t.fail("update request", err)
	}
	n, err := t.rowsAffected("update request", res)
	if err != nil {
		return err
	}
	if n == 0 {
		return t.missOrConflict(ctx, qRequestExists, "request", r.ID)
	}
	t.set(&r.Version, r.Version+1)
	return nil
}

// missOrConflict explains a compare-and-swap that changed no row.
func (t *tx) missOrConflict(ctx context.Context, exists qid, noun, id string) error {
	var one int
	err := t.queryRow(ctx, exists, id).Scan(&one)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return lapse.Errorf(lapse.ENOTFOUND, "%s %s not found", noun, id)
	case err != nil:
		return t.fail("check "+noun, err)
	}
	return lapse.Errorf(lapse.ECONFLICT, "%s %s was changed by someone else", noun, id)
}

// InsertApproval implements lapse.Tx.
// Returns ENOTFOUND if the request does not exist.
func (t *tx) InsertApproval(ctx context.Context, a *lapse.Approval) error {
	if a == nil {
		return lapse.Errorf(lapse.EINVALID, "no approval")
	}
	if err := nonEmpty("request_id", a.RequestID); err != nil {
		return err
	}
	if err := nonEmpty("approver", a.Approver.ID); err != nil {
		return err
	}
	var e enc
	p := e.principal(&a.Approver)
	createdAt := e.time("created_at", a.CreatedAt)
	if e.err != nil {
		return e.err
	}
	// Checked first: on PostgreSQL a foreign key violation would abort the
	// whole transaction, where a missing request is an ordinary answer.
	var one int
	if err := t.queryRow(ctx, qRequestExists, a.RequestID).Scan(&one); errors.Is(err, sql.ErrNoRows) {
		return lapse.Errorf(lapse.ENOTFOUND, "request %s not found", a.RequestID)
	} else if err != nil {
		return t.fail("check request", err)
	}
	res, err := t.exec(ctx, qInsertApproval, a.RequestID, p[0], p[1], p[2], p[3], p[4], p[5],
		string(a.Decision), a.Comment, a.RequestHash, a.Channel, createdAt)
	if err != nil {
		return t.fail("insert approval", err)
	}
	if n, err := t.rowsAffected("insert approval", res); err != nil {
		return err
	} else if n == 0 {
		return lapse.Errorf(lapse.ECONFLICT, "%s already decided request %s", a.Approver.ID, a.RequestID)
	}
	return nil
}
