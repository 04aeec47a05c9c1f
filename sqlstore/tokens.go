package sqlstore

import (
	"context"
	"database/sql"
	"errors"

	"github.com/lapsehq/lapse"
)

// AddTokenRevocation implements lapse.Tx. It also sets r.Seq.
func (t *tx) AddTokenRevocation(ctx context.Context, r *lapse.TokenRevocation) (int64, error) {
	if r == nil {
		return 0, lapse.Errorf(lapse.EINVALID, "no token revocation")
	}
	if err := nonEmpty("target", r.Target); err != nil {
		return 0, err
	}
	if err := nonEmpty("jti", r.TokenID); err != nil {
		return 0, err
	}
	var e enc
	expiresAt, revokedAt := e.time("exp", r.ExpiresAt), e.time("revoked_at", r.RevokedAt)
	e.text("target", r.Target)
	e.text("jti", r.TokenID)
	e.text("grant_id", r.GrantID)
	if e.err != nil {
		return 0, e.err
	}
	if _, err := t.exec(ctx, qLockFeed, r.Target); err != nil {
		return 0, t.fail("lock revocation feed", err)
	}
	var seq int64
	err := t.queryRow(ctx, qFindRevocation, r.Target, r.TokenID).Scan(&seq)
	switch {
	case err == nil:
		t.set(&r.Seq, seq)
		return seq, nil
	case !errors.Is(err, sql.ErrNoRows):
		return 0, t.fail("find token revocation", err)
	}
	if err := t.queryRow(ctx, qBumpFeed, r.Target).Scan(&seq); err != nil {
		return 0, t.fail("advance revocation feed", err)
	}
	if _, err := t.exec(ctx, qInsertRevocation, r.Target, seq, r.TokenID, r.GrantID, expiresAt, revokedAt); err != nil {
		return 0, t.fail("insert token revocation", err)
	}
	t.set(&r.Seq, seq)
	return seq, nil
}

// CountTokenUse implements lapse.Tx.
func (t *tx) CountTokenUse(ctx context.Context, target, tokenID string) (int64, error) {
	if err := nonEmpty("target", target); err != nil {
		return 0, err
	}
	if err := nonEmpty("jti", tokenID); err != nil {
		return 0, err
	}
	if err := noNUL("target", target); err != nil {
		return 0, err
	}
	if err := noNUL("jti", tokenID); err != nil {
		return 0, err
	}
	var uses int64
	if err := t.queryRow(ctx, qCountTokenUse, target, tokenID).Scan(&uses); err != nil {
		return 0, t.fail("count token use", err)
	}
	return uses, nil
}

// AckTokenRevocations implements lapse.Tx.
// Returns EINVALID if seq is negative or beyond the feed's last entry: a
// consumer cannot acknowledge revocations that do not exist yet.
func (t *tx) AckTokenRevocations(ctx context.Context, target, consumer string, seq int64) error {
	if err := nonEmpty("target", target); err != nil {
		return err
	}
	if err := nonEmpty("consumer", consumer); err != nil {
		return err
	}
	if err := noNUL("target", target); err != nil {
		return err
	}
	if err := noNUL("consumer", consumer); err != nil {
		return err
	}
	if seq < 0 {
		return lapse.FieldErrorf(lapse.EINVALID, "seq", "seq must not be negative")
	}
	var head int64
	if err := t.queryRow(ctx, qFeedHead, target).Scan(&head); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return t.fail("read revocation feed", err)
	}
	if seq > head {
		return lapse.FieldErrorf(lapse.EINVALID, "seq", "seq %d is beyond the feed's last entry %d", seq, head)
	}
	if _, err := t.exec(ctx, qAck, target, consumer, seq); err != nil {
		return t.fail("acknowledge revocations", err)
	}
	return nil
}

// TokenRevocations implements lapse.Store. limit defaults to
// lapse.DefaultListLimit and is capped at lapse.MaxListLimit.
func (s *Store) TokenRevocations(ctx context.Context, target string, afterSeq int64, limit int) ([]*lapse.TokenRevocation, error) {
	if err := noNUL("target", target); err != nil {
		return nil, err
	}
	c, err := s.reader()
	if err != nil {
		return nil, err
	}
	rows, err := c.query(ctx, qTokenRevocations, target, afterSeq, listLimit(limit))
	if err != nil {
		return nil, c.fail("list token revocations", err)
	}
	defer rows.Close()
	var out []*lapse.TokenRevocation
	for rows.Next() {
		r := new(lapse.TokenRevocation)
		var expiresAt, revokedAt sql.NullInt64
		if err := rows.Scan(&r.Target, &r.Seq, &r.TokenID, &r.GrantID, &expiresAt, &revokedAt); err != nil {
			return nil, c.fail("list token revocations", err)
		}
		r.ExpiresAt = timeOf(expiresAt)
		r.RevokedAt = timeOf(revokedAt)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, c.fail("list token revocations", err)
	}
	return out, nil
}

// TokenRevoked implements lapse.Store.
func (s *Store) TokenRevoked(ctx context.Context, target, tokenID string) (bool, error) {
	if err := noNUL("target", target); err != nil {
		return false, err
	}
	if err := noNUL("jti", tokenID); err != nil {
		return false, err
	}
	c, err := s.reader()
	if err != nil {
		return false, err
	}
	var one int
	err = c.queryRow(ctx, qTokenRevoked, target, tokenID).Scan(&one)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	case err != nil:
		return false, c.fail("check token revocation", err)
	}
	return true, nil
}

// ConsumerAcks implements lapse.Store.
func (s *Store) ConsumerAcks(ctx context.Context, target string) (map[string]int64, error) {
	if err := noNUL("target", target); err != nil {
		return nil, err
	}
	c, err := s.reader()
	if err != nil {
		return nil, err
	}
	rows, err := c.query(ctx, qConsumerAcks, target)
	if err != nil {
		return nil, c.fail("consumer acks", err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var consumer string
		var seq int64
		if err := rows.Scan(&consumer, &seq); err != nil {
			return nil, c.fail("consumer acks", err)
		}
		out[consumer] = seq
	}
	if err := rows.Err(); err != nil {
		return nil, c.fail("consumer acks", err)
	}
	return out, nil
}
