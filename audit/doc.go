// Package audit makes Lapse's event log tamper-evident: every event is a
// leaf of an RFC 6962 Merkle tree, the tree head is signed as a
// transparency-log checkpoint (a signed note) and published to sinks outside
// the database, and Verify recomputes everything from the stored events.
// Receipts prove, offline and with only the public key, that a grant's
// revocation was verified on every system that accepted it and that this
// fact is an entry of the log.
//
// The pieces, each in its own file:
//
//   - leaf.go: the canonical, length-prefixed encoding of one event (the
//     bytes whose hash is the leaf), so no free text can forge a field or
//     an entry;
//   - tree.go: RFC 6962 hashing, compact ranges and proofs
//     (github.com/transparency-dev/merkle);
//   - checkpoint.go: signed checkpoints in the C2SP tlog-checkpoint format
//     (golang.org/x/mod/sumdb/note, Ed25519);
//   - sink.go: where checkpoints are published (a directory, an HTTP
//     endpoint);
//   - log.go: the sequencer that integrates committed events into the tree
//     and signs checkpoints, and the proofs it serves;
//   - verify.go: recomputation of the whole log against stored and
//     external checkpoints;
//   - receipt.go: signed revocation receipts and their offline check.
//
// Storage is behind Backend, which sqlstore implements; this package does
// no I/O of its own except the sinks.
//
// The format of every byte is documented in docs/audit.md; changing it is a
// breaking change that needs a new version byte.
package audit
