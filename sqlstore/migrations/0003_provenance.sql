-- Lapse schema, version 3: provenance on every record of the audit trail.
--
-- Events name the request they are about by its hash (approvals bind to it),
-- the policy in force when they were written (a content hash of the
-- catalog), and the actor's delegation chain when it acted for someone else
-- (a JSON list of principal IDs, nearest first). Principals carry their
-- delegation chain wherever they are stored, and a grant keeps the hash of
-- the request it carries out.
ALTER TABLE events ADD COLUMN request_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN policy_version TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN act TEXT;

ALTER TABLE requests ADD COLUMN requester_act TEXT;
ALTER TABLE approvals ADD COLUMN approver_act TEXT;
ALTER TABLE grants ADD COLUMN principal_act TEXT;
ALTER TABLE grants ADD COLUMN request_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN principal_act TEXT;
