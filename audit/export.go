package audit

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"time"
)

// ExportSchema is the schema member of every exported line.
const ExportSchema = "lapse.audit.v1"

// ExportRecord is one line of `lapse audit export`: one entry as a JSON
// object on one line (encoding/json escapes every control character, so
// no field can break a line or start another record). docs/audit.md
// documents each member; members are only ever added.
type ExportRecord struct {
	Schema    string     `json:"schema"`
	Origin    string     `json:"origin"`
	Seq       int64      `json:"seq"`
	Time      *time.Time `json:"time,omitempty"`
	Type      string     `json:"type"`
	ActorID   string     `json:"actor_id"`
	ActorKind string     `json:"actor_kind"`
	Channel   string     `json:"channel"`
	RequestID string     `json:"request_id"`
	GrantID   string     `json:"grant_id"`
	Outcome   string     `json:"outcome"`
	// Act is the actor's delegation chain, nearest first; absent when the
	// actor acted for itself.
	Act           []string        `json:"act,omitempty"`
	RequestHash   string          `json:"request_hash,omitempty"`
	PolicyVersion string          `json:"policy_version,omitempty"`
	Data          json.RawMessage `json:"data,omitempty"`
	// DataText holds data that is not valid JSON, as a string, instead of
	// Data; it never occurs for entries Lapse wrote.
	DataText string `json:"data_text,omitempty"`
	// LeafHash is the stored RFC 6962 leaf hash (hex), empty while the
	// entry is not yet integrated into the tree.
	LeafHash string `json:"leaf_hash,omitempty"`
}

// RecordOf converts a stored entry into its export record.
func RecordOf(origin string, e *Entry) *ExportRecord {
	r := &ExportRecord{
		Schema: ExportSchema, Origin: origin, Seq: e.Seq,
		Type: string(e.Type), ActorID: string(e.ActorID), ActorKind: string(e.ActorKind),
		Channel: string(e.Channel), RequestID: string(e.RequestID), GrantID: string(e.GrantID),
		Outcome: string(e.Outcome), RequestHash: string(e.RequestHash), PolicyVersion: string(e.PolicyVersion),
	}
	if len(e.Act) > 0 && json.Unmarshal(e.Act, &r.Act) != nil {
		r.Act = []string{string(e.Act)} // not a list: shown as stored; verify reports the entry
	}
	if e.HasTime {
		t := time.Unix(0, e.Time).UTC()
		r.Time = &t
	}
	if len(e.Data) > 0 {
		if json.Valid(e.Data) {
			r.Data = append(json.RawMessage(nil), e.Data...)
		} else {
			r.DataText = string(e.Data)
		}
	}
	if e.Leaf != nil {
		r.LeafHash = hex.EncodeToString(e.Leaf)
	}
	return r
}

// errStop ends a Scan early without an error.
var errStop = errors.New("stop")

// Export writes the entries after seq after as JSON lines to w, at most
// limit (0 = all), and returns the last sequence number written (after,
// when none was).
func Export(ctx context.Context, b Backend, origin string, after int64, limit int, w io.Writer) (int64, error) {
	bw := bufio.NewWriterSize(w, 64<<10)
	enc := json.NewEncoder(bw)
	last, n := after, 0
	err := b.Scan(ctx, after, limit, func(e *Entry) error {
		if err := enc.Encode(RecordOf(origin, e)); err != nil {
			return err
		}
		last = e.Seq
		if n++; limit > 0 && n >= limit {
			return errStop
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return last, err
	}
	return last, bw.Flush()
}
