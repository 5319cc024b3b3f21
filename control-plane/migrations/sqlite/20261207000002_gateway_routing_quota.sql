-- Quota-aware routing settings per gateway (`routing.quota`, issue #18). Kept in step with
-- ../postgres. The defaults are `modelgw_model::QuotaPolicy::default()`, so existing gateways
-- spread by remaining quota with Azure's renewal periods (10 s for requests, 60 s for tokens)
-- and no reserve; the ranges are `QuotaPolicy::WINDOW_SECS_RANGE` and `RESERVE_PERCENT_RANGE`.
ALTER TABLE gateways ADD COLUMN routing_quota_enabled INTEGER NOT NULL DEFAULT 1
    CHECK (routing_quota_enabled IN (0, 1));
ALTER TABLE gateways ADD COLUMN routing_quota_request_window_secs INTEGER NOT NULL DEFAULT 10
    CHECK (routing_quota_request_window_secs BETWEEN 1 AND 86400);
ALTER TABLE gateways ADD COLUMN routing_quota_token_window_secs INTEGER NOT NULL DEFAULT 60
    CHECK (routing_quota_token_window_secs BETWEEN 1 AND 86400);
ALTER TABLE gateways ADD COLUMN routing_quota_reserve_percent INTEGER NOT NULL DEFAULT 0
    CHECK (routing_quota_reserve_percent BETWEEN 0 AND 50);
