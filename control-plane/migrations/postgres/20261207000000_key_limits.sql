-- Gateway key trees, expiry, last use and limits (issue #14). Kept in step with ../sqlite.
--
-- A key may have a parent key of the same gateway (at most MAX_KEY_DEPTH levels below a root;
-- the store checks both); revoking a key revokes its subtree. `limits` is the JSON of
-- `modelgw_model::keys::KeyLimits` (NULL = no limits); a limit on a key applies to the sum of
-- its subtree. Existing keys stay roots without expiry or limits.
ALTER TABLE gateway_keys ADD COLUMN parent_id TEXT REFERENCES gateway_keys (id);
-- Unix ms after which data planes refuse the key; NULL = never.
ALTER TABLE gateway_keys ADD COLUMN expires_at BIGINT;
-- Unix ms of the last request data planes reported for the key; NULL = never used.
ALTER TABLE gateway_keys ADD COLUMN last_used_at BIGINT;
ALTER TABLE gateway_keys ADD COLUMN limits TEXT;
CREATE INDEX gateway_keys_parent_id ON gateway_keys (parent_id);

-- How a gateway enforces its keys' limits: completion tokens reserved for a request that sets
-- no maximum (NULL = the data plane's default, DEFAULT_COMPLETION_RESERVATION), and whether a
-- data plane whose leases expired refuses (1) or admits and logs (0, the default).
ALTER TABLE gateways ADD COLUMN key_default_completion_tokens BIGINT
    CHECK (key_default_completion_tokens > 0);
ALTER TABLE gateways ADD COLUMN key_fail_closed BIGINT NOT NULL DEFAULT 0
    CHECK (key_fail_closed IN (0, 1));

-- Usage each data-plane instance reported per key and window (issue #14). NOT configuration:
-- writes here never bump config_version. Reports are cumulative per (instance, key, window,
-- window start), so one row per that tuple holds the latest: `charged_*` keep the largest
-- value ever reported (a resent or reordered report never lowers them), `reserved_*` the
-- latest. A key's usage in a window is the sum over instances (its subtree's traffic: data
-- planes charge a request to its key and every ancestor). The rows are the usage history,
-- pruned by age per window (minute 24 h, hour 31 days, day 400 days). `instance` is the data
-- plane's random u64 stored as its two's-complement i64. No foreign key: reports arrive
-- outside configuration transactions and may race a gateway's deletion, which deletes its
-- keys' rows.
CREATE TABLE key_usage (
    key_id                    TEXT NOT NULL,
    window_kind               TEXT NOT NULL CHECK (window_kind IN ('minute', 'hour', 'day')),
    -- Unix ms, UTC-aligned to the window.
    window_start              BIGINT NOT NULL,
    instance                  BIGINT NOT NULL,
    -- The node id the instance last reported under (for operators).
    node_id                   TEXT NOT NULL,
    charged_requests          BIGINT NOT NULL CHECK (charged_requests >= 0),
    charged_prompt_tokens     BIGINT NOT NULL CHECK (charged_prompt_tokens >= 0),
    charged_completion_tokens BIGINT NOT NULL CHECK (charged_completion_tokens >= 0),
    charged_total_tokens      BIGINT NOT NULL CHECK (charged_total_tokens >= 0),
    reserved_requests         BIGINT NOT NULL CHECK (reserved_requests >= 0),
    reserved_prompt_tokens    BIGINT NOT NULL CHECK (reserved_prompt_tokens >= 0),
    reserved_completion_tokens BIGINT NOT NULL CHECK (reserved_completion_tokens >= 0),
    reserved_total_tokens     BIGINT NOT NULL CHECK (reserved_total_tokens >= 0),
    updated_at                BIGINT NOT NULL,
    PRIMARY KEY (key_id, window_kind, window_start, instance)
);
CREATE INDEX key_usage_window ON key_usage (window_kind, window_start);

-- One row per (key, window, window start) that has leases or a reset. Lease allocation locks
-- it (SELECT … FOR UPDATE on PostgreSQL; SQLite has one writer) so control-plane replicas
-- sharing the database never lend the same budget twice. `baseline_*` is the fleet's usage
-- when an operator last reset the key's counters in that window: usage shown, and budget
-- lent, count from there (all 0 without a reset).
CREATE TABLE key_windows (
    key_id                     TEXT NOT NULL,
    window_kind                TEXT NOT NULL CHECK (window_kind IN ('minute', 'hour', 'day')),
    window_start               BIGINT NOT NULL,
    baseline_requests          BIGINT NOT NULL DEFAULT 0,
    baseline_prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    baseline_completion_tokens BIGINT NOT NULL DEFAULT 0,
    baseline_total_tokens      BIGINT NOT NULL DEFAULT 0,
    -- Unix ms of the latest reset; NULL = never reset.
    reset_at                   BIGINT,
    PRIMARY KEY (key_id, window_kind, window_start)
);
CREATE INDEX key_windows_window ON key_windows (window_kind, window_start);

-- Budget lent to data-plane instances (issue #14): per (key, window, window start, instance)
-- the cumulative allowance of each limited measure (NULL = not limited). A lease counts
-- against the limit until `expires_at` (the last push + valid_for + a grace for clock skew);
-- after that only the instance's reported usage counts. Rows of ended windows are pruned.
CREATE TABLE key_leases (
    key_id                    TEXT NOT NULL,
    window_kind               TEXT NOT NULL CHECK (window_kind IN ('minute', 'hour', 'day')),
    window_start              BIGINT NOT NULL,
    instance                  BIGINT NOT NULL,
    node_id                   TEXT NOT NULL,
    granted_requests          BIGINT,
    granted_prompt_tokens     BIGINT,
    granted_completion_tokens BIGINT,
    granted_total_tokens      BIGINT,
    expires_at                BIGINT NOT NULL,
    updated_at                BIGINT NOT NULL,
    PRIMARY KEY (key_id, window_kind, window_start, instance)
);
CREATE INDEX key_leases_window ON key_leases (window_kind, window_start);
CREATE INDEX key_leases_expires_at ON key_leases (expires_at);
