package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
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
		pc                                        principalCols
		duration                                  int64
		state, reviewState                        string
		createdAt, expiresAt, decidedAt, startsAt sql.NullInt64
		breakGlass                                int64
		review                                    sql.NullString
	)
	p := &r.Requester
	err := sc.Scan(&r.ID, &p.ID, &pc.kind, &p.Name, &pc.groups, &pc.scopes, &p.CredentialID,
		&r.Entitlement, &duration, &r.Reason, &r.Ticket, &r.TaskID, &r.Channel, &r.Hash, &state,
		&r.Required, &r.GrantID, &r.DecisionNote, &createdAt, &expiresAt, &decidedAt, &r.Version, &pc.act,
		&breakGlass, &startsAt, &r.Extends, &review, &reviewState, &r.Privilege, &r.Delegation)
	if err != nil {
		return nil, err
	}
	var d dec
	pc.fill(&d, p)
	r.BreakGlass = breakGlass != 0
	r.StartsAt = timeOf(startsAt)
	if review.Valid && review.String != "" {
		r.Review = new(lapse.Review)
		if err := json.Unmarshal([]byte(review.String), r.Review); err != nil {
			return nil, fmt.Errorf("decode review of request %s: %w", r.ID, err)
		}
	}
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
		&decision, &a.Comment, &a.RequestHash, &a.Channel, &createdAt, &pc.act)
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
	if err := noNUL("id", id); err != nil {
		return nil, err
	}
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
		w.addText("state = ?", "state", string(f.State))
	}
	if f.RequesterID != "" {
		w.addText("requester_id = ?", "requester_id", f.RequesterID)
	}
	if f.ReviewPending {
		w.addText("review_state = ?", "review_pending", lapse.ReviewPending)
	}
	if w.err != nil {
		return nil, w.err
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
	id := e.text("id", r.ID)
	p := e.principal("requester", &r.Requester)
	createdAt, expiresAt, decidedAt := e.time("created_at", r.CreatedAt), e.time("expires_at", r.ExpiresAt), e.time("decided_at", r.DecidedAt)
	text := [...]string{e.text("entitlement", r.Entitlement), e.text("reason", r.Reason), e.text("ticket", r.Ticket),
		e.text("task_id", r.TaskID), e.text("channel", r.Channel), e.text("hash", r.Hash), e.text("state", string(r.State)),
		e.text("grant_id", r.GrantID), e.text("decision_note", r.DecisionNote), e.text("extends", r.Extends), e.text("privilege", r.Privilege), e.text("delegation", r.Delegation)}
	startsAt := e.time("starts_at", r.StartsAt)
	review, reviewState := e.review(r.Review)
	if e.err != nil {
		return e.err
	}
	res, err := t.exec(ctx, qInsertRequest, id, p[0], p[1], p[2], p[3], p[4], p[5],
		text[0], int64(r.Duration), text[1], text[2], text[3], text[4], text[5], text[6],
		r.Required, text[7], text[8], createdAt, expiresAt, decidedAt, int64(1), e.strings(r.Requester.Act),
		boolInt(r.BreakGlass), startsAt, text[9], review, reviewState, text[10], text[11])
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
	state, grantID, note, id := e.text("state", string(r.State)), e.text("grant_id", r.GrantID), e.text("decision_note", r.DecisionNote), e.text("id", r.ID)
	review, reviewState := e.review(r.Review)
	if e.err != nil {
		return e.err
	}
	res, err := t.exec(ctx, qUpdateRequest, state, r.Required, grantID, note,
		expiresAt, decidedAt, review, reviewState, id, r.Version)
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

// review encodes a break-glass review as JSON, and its state apart for
// the index that lists pending reviews.
func (e *enc) review(r *lapse.Review) (any, string) {
	if r == nil {
		return nil, ""
	}
	b, err := json.Marshal(r)
	if err != nil && e.err == nil {
		e.err = err
	}
	return string(b), e.text("review_state", r.State)
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
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
	requestID := e.text("request_id", a.RequestID)
	p := e.principal("approver", &a.Approver)
	createdAt := e.time("created_at", a.CreatedAt)
	text := [...]string{e.text("decision", string(a.Decision)), e.text("comment", a.Comment),
		e.text("request_hash", a.RequestHash), e.text("channel", a.Channel)}
	if e.err != nil {
		return e.err
	}
	// Checked first: on PostgreSQL a foreign key violation would abort the
	// whole transaction, where a missing request is an ordinary answer.
	var one int
	if err := t.queryRow(ctx, qRequestExists, requestID).Scan(&one); errors.Is(err, sql.ErrNoRows) {
		return lapse.Errorf(lapse.ENOTFOUND, "request %s not found", a.RequestID)
	} else if err != nil {
		return t.fail("check request", err)
	}
	res, err := t.exec(ctx, qInsertApproval, requestID, p[0], p[1], p[2], p[3], p[4], p[5],
		text[0], text[1], text[2], text[3], createdAt, e.strings(a.Approver.Act))
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
