-- Lapse schema, version 6: the human lane's policy.
--
-- A request may be a break-glass request (approved by its requester, with
-- a mandatory post-review), ask for a scheduled start, or extend an active
-- grant. These are immutable facts of the request and are covered by its
-- hash. The post-review is written once, by someone other than the
-- requester; review_state is kept apart from the review itself so that
-- pending reviews can be listed by index.
ALTER TABLE requests ADD COLUMN break_glass INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN starts_at BIGINT;
ALTER TABLE requests ADD COLUMN extends TEXT NOT NULL DEFAULT '';
-- What the entitlement granted when the request was filed (its target,
-- spec and use limit, hashed): the approvals are for that privilege.
ALTER TABLE requests ADD COLUMN privilege TEXT NOT NULL DEFAULT '';
-- How an agent's request names its sponsor: mandate or token_exchange.
ALTER TABLE requests ADD COLUMN delegation TEXT NOT NULL DEFAULT '';
ALTER TABLE requests ADD COLUMN review TEXT;
ALTER TABLE requests ADD COLUMN review_state TEXT NOT NULL DEFAULT '';

CREATE INDEX requests_review ON requests (review_state, created_at, id);
