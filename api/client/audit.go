package client

import (
	"context"
	"encoding/json"
	"net/url"
	"strconv"

	"github.com/lapsehq/lapse/api"
	"github.com/lapsehq/lapse/audit"
)

// Receipt returns the signed revocation receipt of a revoked grant, as the
// file `lapse receipt verify` checks: the server's bytes, unchanged, and a
// newline.
func (c *Client) Receipt(ctx context.Context, grantID string) ([]byte, error) {
	var raw json.RawMessage
	if err := c.do(ctx, call{method: "GET", path: "/v1/grants/" + esc(grantID) + "/receipt", auth: true, want: 200, out: &raw}); err != nil {
		return nil, err
	}
	return append([]byte(raw), '\n'), nil
}

// AuditCheckpoint returns the audit log's latest signed checkpoint.
func (c *Client) AuditCheckpoint(ctx context.Context) (*api.AuditCheckpoint, error) {
	var out api.AuditCheckpoint
	if err := c.do(ctx, call{method: "GET", path: "/v1/audit/checkpoint", auth: true, want: 200, out: &out}); err != nil {
		return nil, err
	}
	return &out, nil
}

// InclusionProof returns the proof that entry seq is in the latest signed
// checkpoint (size 0) or in the tree of the given size.
func (c *Client) InclusionProof(ctx context.Context, seq int64, size uint64) (*audit.InclusionProof, error) {
	q := url.Values{"seq": {strconv.FormatInt(seq, 10)}}
	if size > 0 {
		q["size"] = []string{strconv.FormatUint(size, 10)}
	}
	var out audit.InclusionProof
	if err := c.do(ctx, call{method: "GET", path: "/v1/audit/proof/inclusion", query: q, auth: true, want: 200, out: &out}); err != nil {
		return nil, err
	}
	return &out, nil
}

// ConsistencyProof returns the proof that the tree of size to (0 = the
// latest signed checkpoint) extends the tree of size from.
func (c *Client) ConsistencyProof(ctx context.Context, from, to uint64) (*audit.ConsistencyProof, error) {
	q := url.Values{"from": {strconv.FormatUint(from, 10)}}
	if to > 0 {
		q["to"] = []string{strconv.FormatUint(to, 10)}
	}
	var out audit.ConsistencyProof
	if err := c.do(ctx, call{method: "GET", path: "/v1/audit/proof/consistency", query: q, auth: true, want: 200, out: &out}); err != nil {
		return nil, err
	}
	return &out, nil
}
