package sqlstore

import "strings"

// qid names one fixed query. Every fixed query is rendered once per store
// and, on SQLite, prepared once per connection.
type qid int

const (
	qGetRequest qid = iota
	qGetRequestForUpdate
	qRequestExists
	qInsertRequest
	qUpdateRequest
	qApprovalsOf
	qApprovalsOfMany
	qInsertApproval

	qGetGrant
	qGetGrantForUpdate
	qGrantExists
	qInsertGrant
	qUpdateGrant
	qCheckpointsOf
	qCheckpointsOfMany
	qClaim
	qClaimTarget
	qClaimExpire
	qClaimTargetExpire
	qClaimExpiring
	qFreeLeases
	qNextDueAt
	qDueCounts
	qCountByState

	qLockEventSeq
	qSetEventSeq

	qGetAPIKey
	qGetAPIKeyForUpdate
	qListAPIKeys
	qInsertAPIKey
	qUpdateAPIKey

	qLockFeed
	qFindRevocation
	qBumpFeed
	qInsertRevocation
	qFeedHead
	qAck
	qTokenRevocations
	qTokenRevoked
	qConsumerAcks
	qCountTokenUse

	numQueries
)

// Column lists, in the order the scan functions read them.
const (
	requestCols = "id, requester_id, requester_kind, requester_name, requester_groups, requester_scopes, " +
		"requester_credential_id, entitlement, duration_ns, reason, ticket, task_id, channel, hash, state, " +
		"required, grant_id, decision_note, created_at, expires_at, decided_at, version, requester_act, " +
		"break_glass, starts_at, extends, review, review_state, privilege, delegation"
	approvalCols = "request_id, approver_id, approver_kind, approver_name, approver_groups, approver_scopes, " +
		"approver_credential_id, decision, comment, request_hash, channel, created_at, approver_act"
	grantCols = "id, request_id, principal_id, principal_kind, principal_name, principal_groups, " +
		"principal_scopes, principal_credential_id, entitlement, target, task_id, state, end_reason, " +
		"starts_at, expires_at, due_at, connector_state, info, sealed_credentials, sealed_probe, credentials_claimed, " +
		"attempts, last_error, lease_owner, lease_until, fence, created_at, activated_at, " +
		"revoke_started_at, revoked_at, version, principal_act, request_hash"
	checkpointCols = "grant_id, name, kind, created_at, revoked_at, verified_at, evidence, residue"
	eventCols      = "seq, event_time, event_type, actor_id, actor_kind, channel, request_id, grant_id, outcome, data, " +
		"act, request_hash, policy_version"
	apiKeyCols = "prefix, id, principal_id, principal_kind, principal_name, principal_groups, " +
		"principal_scopes, principal_credential_id, scopes, name, hash, created_at, expires_at, " +
		"revoked_at, last_used_at, created_by, principal_act"
	// apiKeyListCols reads NULL for the hash: lists never carry hashes.
	apiKeyListCols = "prefix, id, principal_id, principal_kind, principal_name, principal_groups, " +
		"principal_scopes, principal_credential_id, scopes, name, NULL, created_at, expires_at, " +
		"revoked_at, last_used_at, created_by, principal_act"
	revocationCols = "target, seq, token_id, grant_id, expires_at, revoked_at"
)

// claimSet is what a claim writes: the new lease, a new fencing token and a
// new version, so that whoever held the grant before can no longer write it.
// The grant is next due when the lease ends: a claimed grant leaves the
// front of the due index, so the next claim does not pass over every grant
// still in flight (which made a wave of claims quadratic), and if its
// claimer dies it is due again exactly when it may be claimed again.
const (
	claimSet   = "UPDATE grants SET lease_owner = ?, lease_until = ?, due_at = ?, fence = fence + 1, version = version + 1 "
	claimWhere = "WHERE id IN (SELECT id FROM grants WHERE state <> 'revoked' AND due_at <= ? " +
		"AND (lease_until IS NULL OR lease_until <= ?) "
	// claimExpire is ClaimInput.Expire. Every expression on the right of
	// SET reads the row as it was before the update, so each CASE tests
	// the old state; its four parameters are all Now.
	claimExpire = ", state = CASE WHEN state = 'active' AND expires_at <= ? THEN 'revoking' ELSE state END, " +
		"end_reason = CASE WHEN state = 'active' AND expires_at <= ? AND end_reason = '' THEN 'expired' ELSE end_reason END, " +
		"revoke_started_at = CASE WHEN state = 'active' AND expires_at <= ? AND revoke_started_at IS NULL THEN ? " +
		"ELSE revoke_started_at END "
)

var queryText = [numQueries]string{
	qGetRequest:          "SELECT " + requestCols + " FROM requests WHERE id = ?",
	qGetRequestForUpdate: "SELECT " + requestCols + " FROM requests WHERE id = ?{FOR UPDATE}",
	qRequestExists:       "SELECT 1 FROM requests WHERE id = ?",
	qInsertRequest: "INSERT INTO requests (" + requestCols + ") VALUES " +
		"(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
	qUpdateRequest: "UPDATE requests SET state = ?, required = ?, grant_id = ?, decision_note = ?, " +
		"expires_at = ?, decided_at = ?, review = ?, review_state = ?, version = version + 1 WHERE id = ? AND version = ?",
	qApprovalsOf:     "SELECT " + approvalCols + " FROM approvals WHERE request_id = ? ORDER BY created_at, approver_id",
	qApprovalsOfMany: "SELECT " + approvalCols + " FROM approvals WHERE request_id {IN IDS} ORDER BY created_at, approver_id",
	qInsertApproval: "INSERT INTO approvals (" + approvalCols + ") VALUES " +
		"(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",

	qGetGrant:          "SELECT " + grantCols + " FROM grants WHERE id = ?",
	qGetGrantForUpdate: "SELECT " + grantCols + " FROM grants WHERE id = ?{FOR UPDATE}",
	qGrantExists:       "SELECT 1 FROM grants WHERE id = ?",
	qInsertGrant: "INSERT INTO grants (" + grantCols + ") VALUES " +
		"(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
	qUpdateGrant: "UPDATE grants SET state = ?, end_reason = ?, starts_at = ?, expires_at = ?, due_at = ?, " +
		"connector_state = ?, info = ?, sealed_credentials = ?, sealed_probe = ?, credentials_claimed = ?, attempts = ?, " +
		"last_error = ?, lease_owner = ?, lease_until = ?, fence = ?, activated_at = ?, " +
		"revoke_started_at = ?, revoked_at = ?, version = version + 1 WHERE id = ? AND version = ?",
	qCheckpointsOf:     "SELECT " + checkpointCols + " FROM checkpoints WHERE grant_id = ? ORDER BY created_at, name",
	qCheckpointsOfMany: "SELECT " + checkpointCols + " FROM checkpoints WHERE grant_id {IN IDS} ORDER BY grant_id, created_at, name",
	qClaim:             claimSet + claimWhere + "ORDER BY due_at, id LIMIT ?{SKIP LOCKED}) RETURNING " + grantCols,
	qClaimTarget:       claimSet + claimWhere + "AND target = ? ORDER BY due_at, id LIMIT ?{SKIP LOCKED}) RETURNING " + grantCols,
	qClaimExpire:       claimSet + claimExpire + claimWhere + "ORDER BY due_at, id LIMIT ?{SKIP LOCKED}) RETURNING " + grantCols,
	qClaimTargetExpire: claimSet + claimExpire + claimWhere + "AND target = ? ORDER BY due_at, id LIMIT ?{SKIP LOCKED}) RETURNING " + grantCols,
	// The reservation of an expiry: the lease runs from the deadline (the
	// grant's due_at, here between the two bounds), so the grant stays out
	// of every claim until its lease ends; its parameters are the owner,
	// the lease twice, now, now + ahead, now, the target and the limit.
	qClaimExpiring: "UPDATE grants SET lease_owner = ?, lease_until = expires_at + ?, due_at = expires_at + ?, " +
		"fence = fence + 1, version = version + 1 WHERE id IN (SELECT id FROM grants WHERE state <> 'revoked' " +
		"AND due_at > ? AND due_at <= ? AND (lease_until IS NULL OR lease_until <= ?) AND target = ? " +
		"AND state = 'active' AND expires_at = due_at ORDER BY due_at, id LIMIT ?{SKIP LOCKED}) RETURNING " + grantCols,
	// Frees every lease (EngineLocker): an active grant is due at its
	// deadline, any other at once unless it was due sooner; its
	// parameters are now twice.
	qFreeLeases: "UPDATE grants SET lease_owner = '', lease_until = NULL, " +
		"due_at = CASE WHEN state = 'active' THEN expires_at WHEN due_at > ? THEN ? ELSE due_at END, " +
		"fence = fence + 1, version = version + 1 WHERE state <> 'revoked' AND lease_owner <> ''",
	qNextDueAt:    "SELECT MIN(due_at) FROM grants WHERE state <> 'revoked' AND due_at IS NOT NULL",
	qDueCounts:    "SELECT target, COUNT(*) FROM grants WHERE state <> 'revoked' AND due_at <= ? GROUP BY target",
	qCountByState: "SELECT state, COUNT(*) FROM grants GROUP BY state",

	// The event counter is read (and on PostgreSQL locked until commit) at
	// a transaction's first event and written back when its events are.
	qLockEventSeq: "SELECT seq FROM event_seq WHERE id = 1{FOR UPDATE}",
	qSetEventSeq:  "UPDATE event_seq SET seq = ? WHERE id = 1",

	qGetAPIKey:          "SELECT " + apiKeyCols + " FROM api_keys WHERE prefix = ?",
	qGetAPIKeyForUpdate: "SELECT " + apiKeyCols + " FROM api_keys WHERE prefix = ?{FOR UPDATE}",
	qListAPIKeys:        "SELECT " + apiKeyListCols + " FROM api_keys ORDER BY created_at DESC, prefix DESC",
	qInsertAPIKey: "INSERT INTO api_keys (" + apiKeyCols + ") VALUES " +
		"(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
	qUpdateAPIKey: "UPDATE api_keys SET revoked_at = ?, last_used_at = ? WHERE prefix = ?",

	// The feed row is taken (and on PostgreSQL locked until commit) before
	// the token is looked up, so concurrent adders of one target queue here
	// and each sees what the one before it committed.
	qLockFeed: "INSERT INTO token_feeds (target, seq) VALUES (?, 0) " +
		"ON CONFLICT (target) DO UPDATE SET seq = token_feeds.seq",
	qFindRevocation:   "SELECT seq FROM token_revocations WHERE target = ? AND token_id = ?",
	qBumpFeed:         "UPDATE token_feeds SET seq = seq + 1 WHERE target = ? RETURNING seq",
	qInsertRevocation: "INSERT INTO token_revocations (" + revocationCols + ") VALUES (?, ?, ?, ?, ?, ?)",
	qFeedHead:         "SELECT seq FROM token_feeds WHERE target = ?",
	qAck: "INSERT INTO token_acks (target, consumer, seq) VALUES (?, ?, ?) " +
		"ON CONFLICT (target, consumer) DO UPDATE SET seq = excluded.seq WHERE token_acks.seq < excluded.seq",
	qTokenRevocations: "SELECT " + revocationCols + " FROM token_revocations WHERE target = ? AND seq > ? ORDER BY seq LIMIT ?",
	qTokenRevoked:     "SELECT 1 FROM token_revocations WHERE target = ? AND token_id = ?",
	qConsumerAcks:     "SELECT consumer, seq FROM token_acks WHERE target = ?",
	// One statement, so the increment is atomic on both databases: the
	// upsert takes the row's lock (PostgreSQL) or the write lock (SQLite)
	// and returns the count it wrote.
	qCountTokenUse: "INSERT INTO token_uses (target, token_id, uses) VALUES (?, ?, 1) " +
		"ON CONFLICT (target, token_id) DO UPDATE SET uses = token_uses.uses + 1 RETURNING uses",
}

// bulk names a multi-row insert: the transaction buffers these rows and
// writes them in chunks when it commits (or before it next reads them), so
// the revocation path costs one statement per chunk instead of one per row.
type bulk int

const (
	bulkEvents bulk = iota
	bulkCheckpoints
	numBulk
)

// bulkSizes is how many bulk statements of each kind exist: 1, 2, 4 … 64
// rows. The largest carries 640 placeholders for events, well below both
// databases' limits.
const bulkSizes = 7

var bulkText = [numBulk]struct {
	head, row, tail string
	cols            int
}{
	bulkEvents: {
		head: "INSERT INTO events (" + eventCols + ") VALUES ",
		row:  "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
		cols: 13,
	},
	bulkCheckpoints: {
		head: "INSERT INTO checkpoints (" + checkpointCols + ") VALUES ",
		row:  "(?, ?, ?, ?, ?, ?, ?, ?)",
		tail: " ON CONFLICT (grant_id, name) DO UPDATE SET kind = excluded.kind, created_at = excluded.created_at, " +
			"revoked_at = excluded.revoked_at, verified_at = excluded.verified_at, " +
			"evidence = excluded.evidence, residue = excluded.residue",
		cols: 8,
	},
}

// bulkQuery returns the template of a bulk insert of n rows.
func bulkQuery(b bulk, n int) string {
	t := bulkText[b]
	var sb strings.Builder
	sb.Grow(len(t.head) + n*(len(t.row)+2) + len(t.tail))
	sb.WriteString(t.head)
	for i := range n {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString(t.row)
	}
	sb.WriteString(t.tail)
	return sb.String()
}
