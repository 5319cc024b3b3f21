-- Request traces (issue #14, item 3). Kept in step with ../sqlite.
--
-- Per gateway: whether its data planes trace requests, whether they capture the bodies
-- (redacted, capped), and how long the control plane keeps the traces (by age and by count;
-- the retention job deletes the oldest first). Existing gateways trace nothing.
ALTER TABLE gateways ADD COLUMN traces_enabled BIGINT NOT NULL DEFAULT 0
    CHECK (traces_enabled IN (0, 1));
ALTER TABLE gateways ADD COLUMN traces_capture_payload BIGINT NOT NULL DEFAULT 0
    CHECK (traces_capture_payload IN (0, 1));
-- JSON array of field names whose values captured payloads carry as "[REDACTED]".
ALTER TABLE gateways ADD COLUMN traces_redact_fields TEXT NOT NULL DEFAULT '[]';
-- Cap of each captured body in bytes; NULL = the default (64 KiB).
ALTER TABLE gateways ADD COLUMN traces_max_payload_bytes BIGINT
    CHECK (traces_max_payload_bytes > 0);
ALTER TABLE gateways ADD COLUMN traces_retention_days BIGINT NOT NULL DEFAULT 7
    CHECK (traces_retention_days > 0);
ALTER TABLE gateways ADD COLUMN traces_max_count BIGINT NOT NULL DEFAULT 100000
    CHECK (traces_max_count > 0);

-- One row per traced request, as a data plane reported it. Not configuration: inserts never
-- bump config_version. Written in batches by the control plane's trace writer, read newest
-- first by `GET /api/v1/traces` (paged by (started_at, id)), deleted by the retention job.
-- No foreign keys: a trace outlives nothing it names (the retention job deletes the traces
-- of gateways that no longer exist), and an insert checks nothing but its own row.
CREATE TABLE request_traces (
    -- UUID v7 assigned on insert (the data plane's request id is not unique across clients).
    id                TEXT PRIMARY KEY,
    gateway_id        TEXT NOT NULL,
    key_id            TEXT NOT NULL,
    -- The data plane that served the request.
    node_id           TEXT NOT NULL,
    request_id        TEXT NOT NULL,
    -- Unix ms at which the data plane received the request.
    started_at        BIGINT NOT NULL,
    received_at       BIGINT NOT NULL,
    operation         TEXT NOT NULL,
    model             TEXT,
    stream            BIGINT NOT NULL CHECK (stream IN (0, 1)),
    status            BIGINT NOT NULL,
    latency_ms        BIGINT NOT NULL,
    ttft_ms           BIGINT,
    prompt_tokens     BIGINT,
    completion_tokens BIGINT,
    client_request_id TEXT,
    -- JSON array of {endpoint_id, status, outcome, latency_ms}, in the order tried.
    attempts          TEXT NOT NULL,
    payload_truncated BIGINT NOT NULL CHECK (payload_truncated IN (0, 1)),
    -- Last, so a list that reads the columns above never touches their overflow pages.
    request_body      TEXT,
    response_body     TEXT
);
-- Newest first, unfiltered or by time range; the age cut-off of the retention job.
CREATE INDEX request_traces_started ON request_traces (started_at, id);
-- Per gateway: the gateway filter and the retention job's per-gateway age and count cuts.
CREATE INDEX request_traces_gateway ON request_traces (gateway_id, started_at, id);
-- Per key.
CREATE INDEX request_traces_key ON request_traces (key_id, started_at, id);
