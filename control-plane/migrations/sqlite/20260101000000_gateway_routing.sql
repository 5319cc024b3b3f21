-- Gateway routing settings (issue #3). Existing gateways keep today's behaviour: weighted
-- random, answer at once when every member is unavailable, the data plane's default deadline.
ALTER TABLE gateways ADD COLUMN routing_strategy TEXT NOT NULL DEFAULT 'weighted'
    CHECK (routing_strategy IN ('weighted', 'fastest'));
ALTER TABLE gateways ADD COLUMN routing_wait_for_recovery INTEGER NOT NULL DEFAULT 0
    CHECK (routing_wait_for_recovery IN (0, 1));
-- NULL = the data plane's default request deadline.
ALTER TABLE gateways ADD COLUMN routing_request_timeout_ms INTEGER
    CHECK (routing_request_timeout_ms > 0);
