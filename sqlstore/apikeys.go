package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/lapsehq/lapse"
)

func scanAPIKey(sc scanner) (*lapse.APIKey, error) {
	k := new(lapse.APIKey)
	var (
		pc                                          principalCols
		scopes                                      sql.NullString
		createdAt, expiresAt, revokedAt, lastUsedAt sql.NullInt64
	)
	p := &k.Principal
	if err := sc.Scan(&k.Prefix, &k.ID, &p.ID, &pc.kind, &p.Name, &pc.groups, &pc.scopes, &p.CredentialID,
		&scopes, &k.Name, &k.Hash, &createdAt, &expiresAt, &revokedAt, &lastUsedAt, &k.CreatedBy, &pc.act); err != nil {
		return nil, err
	}
	var d dec
	pc.fill(&d, p)
	k.Scopes = d.strings(scopes)
	k.Hash = bytesOf(k.Hash)
	k.CreatedAt = timeOf(createdAt)
	k.ExpiresAt = timeOf(expiresAt)
	k.RevokedAt = timeOf(revokedAt)
	k.LastUsedAt = timeOf(lastUsedAt)
	if d.err != nil {
		return nil, fmt.Errorf("decode api key %s: %w", k.Prefix, d.err)
	}
	return k, nil
}

// GetAPIKey implements lapse.Store.
func (s *Store) GetAPIKey(ctx context.Context, prefix string) (*lapse.APIKey, error) {
	c, err := s.reader()
	if err != nil {
		return nil, err
	}
	return c.getAPIKey(ctx, prefix, false)
}

// GetAPIKey implements lapse.Tx: the key is locked until the transaction
// ends (FOR UPDATE on PostgreSQL; SQLite has one writer).
func (t *tx) GetAPIKey(ctx context.Context, prefix string) (*lapse.APIKey, error) {
	return t.getAPIKey(ctx, prefix, true)
}

func (c *conn) getAPIKey(ctx context.Context, prefix string, forUpdate bool) (*lapse.APIKey, error) {
	if err := noNUL("prefix", prefix); err != nil {
		return nil, err
	}
	q := qGetAPIKey
	if forUpdate {
		q = qGetAPIKeyForUpdate
	}
	k, err := scanAPIKey(c.queryRow(ctx, q, prefix))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, lapse.Errorf(lapse.ENOTFOUND, "api key not found")
	} else if err != nil {
		return nil, c.fail("get api key", err)
	}
	return k, nil
}

// ListAPIKeys implements lapse.Store.
func (s *Store) ListAPIKeys(ctx context.Context) ([]*lapse.APIKey, error) {
	c, err := s.reader()
	if err != nil {
		return nil, err
	}
	rows, err := c.query(ctx, qListAPIKeys)
	if err != nil {
		return nil, c.fail("list api keys", err)
	}
	defer rows.Close()
	var out []*lapse.APIKey
	for rows.Next() {
		k, err := scanAPIKey(rows)
		if err != nil {
			return nil, c.fail("list api keys", err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, c.fail("list api keys", err)
	}
	return out, nil
}

// keyPrefix returns the prefix that identifies k (ID equals Prefix).
func keyPrefix(k *lapse.APIKey) string {
	if k.Prefix != "" {
		return k.Prefix
	}
	return k.ID
}

// InsertAPIKey implements lapse.Tx.
func (t *tx) InsertAPIKey(ctx context.Context, k *lapse.APIKey) error {
	if k == nil {
		return lapse.Errorf(lapse.EINVALID, "no api key")
	}
	prefix := keyPrefix(k)
	if err := nonEmpty("prefix", prefix); err != nil {
		return err
	}
	var e enc
	prefix, id := e.text("prefix", prefix), e.text("id", k.ID)
	p := e.principal("principal", &k.Principal)
	scopes := e.strings(k.Scopes)
	name, createdBy := e.text("name", k.Name), e.text("created_by", k.CreatedBy)
	createdAt, expiresAt := e.time("created_at", k.CreatedAt), e.time("expires_at", k.ExpiresAt)
	revokedAt, lastUsedAt := e.time("revoked_at", k.RevokedAt), e.time("last_used_at", k.LastUsedAt)
	if e.err != nil {
		return e.err
	}
	res, err := t.exec(ctx, qInsertAPIKey, prefix, id, p[0], p[1], p[2], p[3], p[4], p[5],
		scopes, name, blob(k.Hash), createdAt, expiresAt, revokedAt, lastUsedAt, createdBy, e.strings(k.Principal.Act))
	if err != nil {
		return t.fail("insert api key", err)
	}
	if n, err := t.rowsAffected("insert api key", res); err != nil {
		return err
	} else if n == 0 {
		return lapse.Errorf(lapse.ECONFLICT, "an api key with prefix %s already exists", prefix)
	}
	return nil
}

// UpdateAPIKey implements lapse.Tx.
func (t *tx) UpdateAPIKey(ctx context.Context, k *lapse.APIKey) error {
	if k == nil {
		return lapse.Errorf(lapse.EINVALID, "no api key")
	}
	var e enc
	revokedAt, lastUsedAt := e.time("revoked_at", k.RevokedAt), e.time("last_used_at", k.LastUsedAt)
	prefix := e.text("prefix", keyPrefix(k))
	if e.err != nil {
		return e.err
	}
	res, err := t.exec(ctx, qUpdateAPIKey, revokedAt, lastUsedAt, prefix)
	if err != nil {
		return t.fail("update api key", err)
	}
	if n, err := t.rowsAffected("update api key", res); err != nil {
		return err
	} else if n == 0 {
		return lapse.Errorf(lapse.ENOTFOUND, "api key not found")
	}
	return nil
}
