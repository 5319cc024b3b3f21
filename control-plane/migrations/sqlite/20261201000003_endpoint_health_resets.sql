-- Operator resets of endpoint health (issue #10): reports received up to `reset_at` stop
-- counting, on every replica (merged on each poll) and after a restart. NOT configuration:
-- never bumps config_version. One row per endpoint, holding its latest reset.
CREATE TABLE endpoint_health_resets (
    endpoint_id TEXT PRIMARY KEY,
    -- Unix ms of the reset.
    reset_at    INTEGER NOT NULL
) STRICT;
