-- Lapse schema, version 4: the agent lane.
--
-- A mandate is a human sponsor's permission for one AI agent to ask for
-- access on the sponsor's behalf: which entitlements (a JSON list), the
-- ceiling of each grant, until when. The sponsor is stored as they
-- authenticated when they gave it (the six principal columns, like a
-- requester), because requests under the mandate are decided on that
-- principal. Only revoked_at and revoked_by ever change.
CREATE TABLE mandates (
	id                    TEXT PRIMARY KEY,
	agent_id              TEXT NOT NULL,
	sponsor_id            TEXT NOT NULL,
	sponsor_kind          TEXT NOT NULL,
	sponsor_name          TEXT NOT NULL,
	sponsor_groups        TEXT,
	sponsor_scopes        TEXT,
	sponsor_credential_id TEXT NOT NULL,
	entitlements          TEXT NOT NULL,
	max_duration_ns       BIGINT NOT NULL,
	channel               TEXT NOT NULL,
	created_at            BIGINT,
	expires_at            BIGINT,
	revoked_at            BIGINT,
	revoked_by            TEXT NOT NULL
){WITHOUT ROWID};

-- Lists, newest first: an agent's mandates (every agent request looks
-- them up) and a sponsor's.
CREATE INDEX mandates_agent ON mandates (agent_id, created_at, id);
CREATE INDEX mandates_sponsor ON mandates (sponsor_id, created_at, id);
CREATE INDEX mandates_created ON mandates (created_at, id);

-- A principal's unrevoked grants of one entitlement: the fence (a new
-- grant waits for the previous one's verified revocation) and the end of a
-- mandate look them up. Partial like grants_due; queries repeat the
-- predicate.
CREATE INDEX grants_fence ON grants (principal_id, entitlement, created_at, id) WHERE state <> 'revoked';
