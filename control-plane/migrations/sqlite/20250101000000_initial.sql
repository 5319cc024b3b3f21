-- Model Gateway configuration schema (SQLite). Kept in step with ../postgres.
-- Conventions (so one set of queries serves both backends through sqlx's Any driver):
-- ids are UUID text, timestamps are unix milliseconds, booleans are 0/1 integers.

-- The configuration version: one row, bumped in the same transaction as every change.
-- Starts at 1 so that the empty configuration is itself a valid, distributable snapshot.
CREATE TABLE config_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL CHECK (version >= 1)
) STRICT;
INSERT INTO config_version (id, version) VALUES (1, 1);

CREATE TABLE inference_endpoints (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    platform           TEXT NOT NULL,
    base_url           TEXT NOT NULL,
    deployment         TEXT NOT NULL,
    model_name         TEXT NOT NULL,
    model_version      TEXT NOT NULL,
    region             TEXT NOT NULL,
    -- `v1:<base64(nonce || ciphertext)>`, sealed with the master key, AAD = id.
    api_key_ciphertext TEXT NOT NULL,
    api_key_hint       TEXT NOT NULL,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
) STRICT;

CREATE TABLE gateways (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

-- Deleting a gateway takes its members along; deleting an endpoint that is still a member
-- is refused by the foreign key (the store removes memberships first when forced).
CREATE TABLE gateway_members (
    gateway_id  TEXT NOT NULL REFERENCES gateways (id) ON DELETE CASCADE,
    endpoint_id TEXT NOT NULL REFERENCES inference_endpoints (id),
    position    INTEGER NOT NULL,
    enabled     INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    priority    INTEGER NOT NULL CHECK (priority >= 0),
    weight      INTEGER NOT NULL CHECK (weight >= 0),
    PRIMARY KEY (gateway_id, endpoint_id),
    UNIQUE (gateway_id, position)
) STRICT;
CREATE INDEX gateway_members_endpoint_id ON gateway_members (endpoint_id);

CREATE TABLE gateway_keys (
    id         TEXT PRIMARY KEY,
    gateway_id TEXT NOT NULL REFERENCES gateways (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    -- SHA-256 of the secret; the secret itself is never stored.
    sha256     BLOB NOT NULL UNIQUE CHECK (length(sha256) = 32),
    hint       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;
CREATE INDEX gateway_keys_gateway_id ON gateway_keys (gateway_id);

-- Process-wide settings, e.g. `admin_token_sha256` (base64 of the SHA-256 of the token).
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
