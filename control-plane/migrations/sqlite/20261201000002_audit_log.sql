-- The audit log (issue #10): one row per change, inserted in the transaction of the change,
-- so a change that rolls back leaves no row and a committed one always has its row.
-- Kept in step with ../postgres. Never holds a secret: `before`/`after` carry hints only.
CREATE TABLE audit_log (
    -- Insertion order: the log is read newest first and paged by this id.
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    at             INTEGER NOT NULL,
    -- `bootstrap`, `token:<name>`, `oidc:<subject>`.
    actor          TEXT NOT NULL,
    -- `inference_endpoint`, `gateway`, `gateway_key`, `api_token`.
    entity         TEXT NOT NULL,
    entity_id      TEXT NOT NULL,
    -- The entity's name when the change was made (keys and tokens: their name).
    entity_name    TEXT NOT NULL,
    -- `create`, `update`, `delete`, `revoke`, `import`, `reset_health`.
    action         TEXT NOT NULL,
    -- JSON objects of the fields that changed, as they were and as they became
    -- (before_fields is NULL on create, after_fields on delete).
    before_fields  TEXT,
    after_fields   TEXT,
    -- The configuration version the change committed; NULL for changes that are not
    -- configuration (API tokens).
    config_version INTEGER,
    request_id     TEXT,
    client_ip      TEXT
) STRICT;
CREATE INDEX audit_log_entity ON audit_log (entity, entity_id);
CREATE INDEX audit_log_actor ON audit_log (actor);
CREATE INDEX audit_log_at ON audit_log (at);
