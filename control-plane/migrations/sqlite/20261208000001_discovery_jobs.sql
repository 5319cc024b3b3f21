-- Azure discovery jobs (issue #15, item 3). Kept in step with ../postgres.
--
-- A job is started by one control-plane replica and read by any: the replica running it
-- writes its progress and a heartbeat every few seconds, and its outcome at the end; a
-- running job whose heartbeat is older than the admin API's bound is marked failed by
-- whichever replica reads it first (compare-and-set on `state`), because the replica running
-- it stopped. NOT configuration: writes here never bump config_version nor write audit rows.
-- The admin API keeps the newest 20 (older ones are deleted when a job starts).
CREATE TABLE discovery_jobs (
    -- UUID v7.
    id           TEXT PRIMARY KEY,
    -- Unix ms.
    started_at   INTEGER NOT NULL,
    -- The replica running it: a random id per control-plane process (the heartbeat and the
    -- outcome are written only by it), and its host name for operators.
    instance_id  TEXT NOT NULL,
    host         TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    -- JSON counters (`DiscoveryProgress`).
    progress     TEXT NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    finished_at  INTEGER,
    -- JSON `{scope, permission, message}` of a job that failed as a whole (no credential
    -- worked; its replica stopped). Never holds a secret.
    error        TEXT,
    -- JSON `DiscoveryReport` once finished. Never holds an account key: the report is written
    -- without them, and an import reads every key again with `listKeys`.
    report       TEXT
) STRICT;
-- Newest first: retention, and the import's search of recent reports.
CREATE INDEX discovery_jobs_started ON discovery_jobs (started_at, id);
