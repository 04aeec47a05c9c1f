-- Lapse schema, version 1. One file for SQLite and PostgreSQL: {TOKENS}
-- are rendered per database (see dialect.go). Times are BIGINT Unix
-- nanoseconds, NULL for the zero time. Statements end at a line ending in ;.
-- Tables keyed by text are WITHOUT ROWID on SQLite: one b-tree per lookup
-- instead of an index and then the table.

CREATE TABLE requests (
	id                      TEXT PRIMARY KEY,
	requester_id            TEXT NOT NULL,
	requester_kind          TEXT NOT NULL,
	requester_name          TEXT NOT NULL,
	requester_groups        TEXT,
	requester_scopes        TEXT,
	requester_credential_id TEXT NOT NULL,
	entitlement             TEXT NOT NULL,
	duration_ns             BIGINT NOT NULL,
	reason                  TEXT NOT NULL,
	ticket                  TEXT NOT NULL,
	task_id                 TEXT NOT NULL,
	channel                 TEXT NOT NULL,
	hash                    TEXT NOT NULL,
	state                   TEXT NOT NULL,
	required                INTEGER NOT NULL,
	grant_id                TEXT NOT NULL,
	decision_note           TEXT NOT NULL,
	created_at              BIGINT,
	expires_at              BIGINT,
	decided_at              BIGINT,
	version                 BIGINT NOT NULL
){WITHOUT ROWID};

-- Lists are newest first, optionally by state or requester.
CREATE INDEX requests_created ON requests (created_at, id);
CREATE INDEX requests_state ON requests (state, created_at, id);
CREATE INDEX requests_requester ON requests (requester_id, created_at, id);

CREATE TABLE approvals (
	request_id             TEXT NOT NULL REFERENCES requests (id),
	approver_id            TEXT NOT NULL,
	approver_kind          TEXT NOT NULL,
	approver_name          TEXT NOT NULL,
	approver_groups        TEXT,
	approver_scopes        TEXT,
	approver_credential_id TEXT NOT NULL,
	decision               TEXT NOT NULL,
	comment                TEXT NOT NULL,
	request_hash           TEXT NOT NULL,
	channel                TEXT NOT NULL,
	created_at             BIGINT,
	-- One decision per human per request.
	PRIMARY KEY (request_id, approver_id)
){WITHOUT ROWID};

CREATE TABLE grants (
	id                      TEXT PRIMARY KEY,
	request_id              TEXT NOT NULL,
	principal_id            TEXT NOT NULL,
	principal_kind          TEXT NOT NULL,
	principal_name          TEXT NOT NULL,
	principal_groups        TEXT,
	principal_scopes        TEXT,
	principal_credential_id TEXT NOT NULL,
	entitlement             TEXT NOT NULL,
	target                  TEXT NOT NULL,
	task_id                 TEXT NOT NULL,
	state                   TEXT NOT NULL,
	end_reason              TEXT NOT NULL,
	starts_at               BIGINT,
	expires_at              BIGINT,
	due_at                  BIGINT,
	connector_state         {BYTES},
	info                    TEXT,
	sealed_credentials      {BYTES},
	sealed_probe            {BYTES},
	credentials_claimed     BOOLEAN NOT NULL,
	attempts                INTEGER NOT NULL,
	last_error              TEXT NOT NULL,
	lease_owner             TEXT NOT NULL,
	lease_until             BIGINT,
	fence                   BIGINT NOT NULL,
	created_at              BIGINT,
	activated_at            BIGINT,
	revoke_started_at       BIGINT,
	revoked_at              BIGINT,
	version                 BIGINT NOT NULL
){WITHOUT ROWID};

-- Due work: the engine's claim, NextDueAt and DueCounts. Partial, so that
-- the revoked grants that accumulate forever cost nothing here; id is in the
-- key so that a claim's ORDER BY due_at, id reads the index in order instead
-- of sorting every due grant (a wave of deadlines shares one due_at). Queries
-- must repeat the literal predicate for the planner to use these indexes.
CREATE INDEX grants_due ON grants (due_at, id) WHERE state <> 'revoked';
CREATE INDEX grants_target_due ON grants (target, due_at, id) WHERE state <> 'revoked';
-- Lists, newest first, and lookups by principal, state, target and request.
CREATE INDEX grants_created ON grants (created_at, id);
CREATE INDEX grants_state ON grants (state, created_at, id);
CREATE INDEX grants_principal ON grants (principal_id, created_at, id);
CREATE INDEX grants_target ON grants (target, created_at, id);
CREATE INDEX grants_request ON grants (request_id);

CREATE TABLE checkpoints (
	grant_id    TEXT NOT NULL REFERENCES grants (id),
	name        TEXT NOT NULL,
	kind        TEXT NOT NULL,
	created_at  BIGINT,
	revoked_at  BIGINT,
	verified_at BIGINT,
	evidence    TEXT,
	residue     TEXT,
	PRIMARY KEY (grant_id, name)
){WITHOUT ROWID};

-- The audit log. seq is gap-free and increases in commit order: it comes
-- from event_seq, whose one row every appending transaction locks (on
-- PostgreSQL; SQLite serialises writers anyway) from its first event until
-- it commits.
CREATE TABLE events (
	seq        {SEQ PK},
	event_time BIGINT,
	event_type TEXT NOT NULL,
	actor_id   TEXT NOT NULL,
	actor_kind TEXT NOT NULL,
	channel    TEXT NOT NULL,
	request_id TEXT NOT NULL,
	grant_id   TEXT NOT NULL,
	outcome    TEXT NOT NULL,
	data       TEXT
);

CREATE INDEX events_grant ON events (grant_id, seq);
CREATE INDEX events_request ON events (request_id, seq);

CREATE TABLE event_seq (
	id  INTEGER PRIMARY KEY,
	seq BIGINT NOT NULL
);

INSERT INTO event_seq (id, seq) VALUES (1, 0);

CREATE TABLE api_keys (
	prefix                  TEXT PRIMARY KEY,
	id                      TEXT NOT NULL,
	principal_id            TEXT NOT NULL,
	principal_kind          TEXT NOT NULL,
	principal_name          TEXT NOT NULL,
	principal_groups        TEXT,
	principal_scopes        TEXT,
	principal_credential_id TEXT NOT NULL,
	scopes                  TEXT,
	name                    TEXT NOT NULL,
	hash                    {BYTES},
	created_at              BIGINT,
	expires_at              BIGINT,
	revoked_at              BIGINT,
	last_used_at            BIGINT,
	created_by              TEXT NOT NULL
){WITHOUT ROWID};

CREATE INDEX api_keys_created ON api_keys (created_at, prefix);

-- Token revocation feeds: per target, a gap-free sequence (token_feeds holds
-- its head and serialises appenders), each token at most once, and each
-- consumer's acknowledged position.
CREATE TABLE token_feeds (
	target TEXT PRIMARY KEY,
	seq    BIGINT NOT NULL
){WITHOUT ROWID};

CREATE TABLE token_revocations (
	target     TEXT NOT NULL,
	seq        BIGINT NOT NULL,
	token_id   TEXT NOT NULL,
	grant_id   TEXT NOT NULL,
	expires_at BIGINT,
	revoked_at BIGINT,
	PRIMARY KEY (target, seq),
	UNIQUE (target, token_id)
){WITHOUT ROWID};

CREATE TABLE token_acks (
	target   TEXT NOT NULL,
	consumer TEXT NOT NULL,
	seq      BIGINT NOT NULL,
	PRIMARY KEY (target, consumer)
){WITHOUT ROWID};
