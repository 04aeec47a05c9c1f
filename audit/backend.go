package audit

import (
	"context"
	"time"

	"github.com/lapsehq/lapse"
)

// Backend is the storage the audit log needs. sqlstore implements it next
// to the events, which are written by the store's own transactions: the
// Backend adds the tree (leaf and node hashes) and the checkpoints, and
// appends the log's own acts (a receipt issued) as events.
//
// Every write is an insert of rows that never change, so a database role
// that may only insert into (and read) the audit tables can run the
// sequencer (docs/audit.md, "Database roles").
type Backend interface {
	NodeReader

	// Size returns how many entries are integrated into the tree: the
	// entries with sequence 1..Size have stored leaf hashes.
	Size(ctx context.Context) (uint64, error)
	// Events returns up to limit committed events with Seq > after, in
	// sequence order.
	Events(ctx context.Context, after int64, limit int) ([]*lapse.Event, error)
	// Integrate stores the leaf hashes of the entries start+1 … start+len(leaves)
	// and the interior nodes they complete, in one transaction. It returns
	// ECONFLICT, storing nothing, if the tree does not have exactly start
	// entries (another sequencer was first).
	Integrate(ctx context.Context, start uint64, leaves [][]byte, nodes []Node) error
	// PutCheckpoint stores a signed checkpoint. A second checkpoint of the
	// same size is ignored (replicas sign the same heads).
	PutCheckpoint(ctx context.Context, cp *StoredCheckpoint) error
	// LatestCheckpoint returns the stored checkpoint with the largest size,
	// or nil when there is none.
	LatestCheckpoint(ctx context.Context) (*StoredCheckpoint, error)
	// GrantEvent returns the newest event of type typ about grant, or nil
	// when there is none. Receipts find a grant's grant.revoked entry with
	// it, however long the grant's history is.
	GrantEvent(ctx context.Context, grantID, typ string) (*lapse.Event, error)
	// AppendEvent appends ev in a transaction of its own and sets ev.Seq,
	// for what the log itself does (issuing a receipt is a use of the
	// signing key, and is recorded like every other act).
	AppendEvent(ctx context.Context, ev *lapse.Event) error
	// Checkpoints returns every stored checkpoint, by size.
	Checkpoints(ctx context.Context) ([]*StoredCheckpoint, error)
	// Scan calls fn for each event with Seq > after (at most limit of
	// them; 0 = all), in sequence order,
	// with its stored leaf hash, from one consistent snapshot. The Entry
	// and its slices are reused between calls.
	Scan(ctx context.Context, after int64, limit int, fn func(*Entry) error) error
}

// StoredCheckpoint is a checkpoint as the store keeps it.
type StoredCheckpoint struct {
	Size     uint64
	Root     []byte
	Note     []byte
	SignedAt time.Time
}
