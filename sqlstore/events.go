package sqlstore

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/lapsehq/lapse"
)

// AppendEvent implements lapse.Tx. The event's sequence number is fixed
// now; the row is written with the transaction's other events when it
// commits.
func (t *tx) AppendEvent(ctx context.Context, ev *lapse.Event) error {
	if ev == nil {
		return lapse.Errorf(lapse.EINVALID, "no event")
	}
	if err := nonEmpty("type", ev.Type); err != nil {
		return err
	}
	var e enc
	at := e.time("time", ev.Time)
	text := [...]string{e.text("type", ev.Type), e.text("actor_id", ev.ActorID), e.text("actor_kind", string(ev.ActorKind)),
		e.text("channel", ev.Channel), e.text("request_id", ev.RequestID), e.text("grant_id", ev.GrantID), e.text("outcome", ev.Outcome)}
	data := e.rawJSON("data", ev.Data)
	// An empty chain is NULL, never "[]": the log hashes the stored bytes
	// (audit.Entry.Act), so one chain has exactly one stored form.
	var act any
	if len(ev.Act) > 0 {
		act = e.strings(ev.Act)
	}
	requestHash, policy := e.text("request_hash", ev.RequestHash), e.text("policy_version", ev.PolicyVersion)
	if e.err != nil {
		return e.err
	}
	if t.buf.nextSeq == 0 {
		// On PostgreSQL this locks the counter until the transaction ends:
		// appenders queue here, so sequence order is commit order and a
		// rollback leaves no gap.
		var cur int64
		if err := t.queryRow(ctx, qLockEventSeq).Scan(&cur); err != nil {
			return t.fail("read event sequence", err)
		}
		t.buf.nextSeq = cur + 1
	}
	seq := t.buf.nextSeq
	t.buf.nextSeq++
	t.buf.events = append(t.buf.events, seq, at, text[0], text[1], text[2], text[3],
		text[4], text[5], text[6], data, act, requestHash, policy)
	t.set(&ev.Seq, seq)
	return nil
}

func scanEvent(sc scanner) (*lapse.Event, error) {
	ev := new(lapse.Event)
	var (
		at        sql.NullInt64
		actorKind string
		data, act sql.NullString
	)
	if err := sc.Scan(&ev.Seq, &at, &ev.Type, &ev.ActorID, &actorKind, &ev.Channel, &ev.RequestID,
		&ev.GrantID, &ev.Outcome, &data, &act, &ev.RequestHash, &ev.PolicyVersion); err != nil {
		return nil, err
	}
	ev.Time = timeOf(at)
	ev.ActorKind = lapse.PrincipalKind(actorKind)
	ev.Data = rawOf(data)
	var d dec
	ev.Act = d.strings(act)
	if d.err != nil {
		return nil, fmt.Errorf("decode event %d: %w", ev.Seq, d.err)
	}
	return ev, nil
}

// ListEvents implements lapse.Store: events in sequence order.
func (s *Store) ListEvents(ctx context.Context, f lapse.EventFilter) ([]*lapse.Event, error) {
	var w where
	if f.AfterSeq > 0 {
		w.add("seq > ?", f.AfterSeq)
	}
	if f.GrantID != "" {
		w.addText("grant_id = ?", "grant_id", f.GrantID)
	}
	if f.RequestID != "" {
		w.addText("request_id = ?", "request_id", f.RequestID)
	}
	if w.err != nil {
		return nil, w.err
	}
	q := "SELECT " + eventCols + " FROM events" + w.String() + " ORDER BY seq LIMIT ?"
	args := append(w.args, listLimit(f.Limit))
	return listRows(ctx, s, "list events", q, args, scanEvent)
}
