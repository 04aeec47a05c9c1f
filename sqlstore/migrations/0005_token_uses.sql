-- Lapse schema, version 5: use limits.
--
-- How many times each token of a token target has been used: every RFC
-- 7662 introspection that answers active for a token whose entitlement has
-- max_uses adds one, in one upsert, so replicas counting the same token
-- never lose a use. Rows are never deleted (the server's role has no
-- DELETE); a row is a few bytes per limited grant.
CREATE TABLE token_uses (
	target   TEXT NOT NULL,
	token_id TEXT NOT NULL,
	uses     BIGINT NOT NULL,
	PRIMARY KEY (target, token_id)
){WITHOUT ROWID};
