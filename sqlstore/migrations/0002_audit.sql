-- Lapse schema, version 2: the tamper-evident audit log (audit/, docs/audit.md).
-- The events table (version 1) holds the entries; these tables hold the
-- RFC 6962 Merkle tree over them and the signed checkpoints. Every row is
-- inserted once and never updated or deleted, so the server's database role
-- needs only SELECT and INSERT on them (docs/audit.md, "Database roles").

-- Leaf hashes: the entry with sequence seq is leaf seq-1. The tree's size
-- is MAX(seq); a sequencer that lost a race fails on the primary key.
CREATE TABLE audit_leaves (
	seq  {SEQ PK},
	hash {BYTES} NOT NULL
);

-- Interior nodes (level >= 1) of perfect subtrees, for proofs: the node
-- (level, idx) covers leaves idx*2^level … (idx+1)*2^level - 1.
CREATE TABLE audit_nodes (
	level INTEGER NOT NULL,
	idx   BIGINT NOT NULL,
	hash  {BYTES} NOT NULL,
	PRIMARY KEY (level, idx)
){WITHOUT ROWID};

-- Signed checkpoints (C2SP tlog-checkpoint notes), one per tree size.
CREATE TABLE audit_checkpoints (
	size      BIGINT PRIMARY KEY,
	root      {BYTES} NOT NULL,
	note      TEXT NOT NULL,
	signed_at BIGINT NOT NULL
){WITHOUT ROWID};
