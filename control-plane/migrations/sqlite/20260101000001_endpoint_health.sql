-- Endpoint health as each data plane last reported it (issue #3). NOT configuration: writes
-- here never bump config_version. One row per (endpoint, data plane), upserted on each report,
-- so a restarted control plane and other replicas see the fleet's current view.
-- No foreign key to inference_endpoints: health is written outside configuration
-- transactions and may race an endpoint's deletion; reads join the endpoints instead, and
-- deleting an endpoint deletes its rows.
CREATE TABLE endpoint_health (
    endpoint_id   TEXT NOT NULL,
    node_id       TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('healthy', 'throttling', 'error')),
    -- Unix ms until which the data plane avoids the endpoint; NULL when none was given.
    until_ms      INTEGER,
    reason        TEXT,
    -- The most recent failure this data plane reported, kept across recoveries.
    last_error    TEXT,
    last_error_at INTEGER,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (endpoint_id, node_id)
) STRICT;
