-- Join tokens that data planes present on the distribution port (issue #10), for teams without
-- a PKI. NOT configuration: writes here never bump config_version (nothing in a snapshot
-- changes). Only the SHA-256 of a token is stored; the token is shown once, at creation.
CREATE TABLE data_plane_tokens (
    id              TEXT PRIMARY KEY,
    -- Binds node ids: a data plane using this token must call itself `<name>` or `<name>-…`.
    name            TEXT NOT NULL,
    sha256          BLOB NOT NULL UNIQUE CHECK (length(sha256) = 32),
    hint            TEXT NOT NULL,
    -- How many distinct data planes (node ids) may be registered with this token at once.
    max_data_planes INTEGER NOT NULL CHECK (max_data_planes >= 1),
    created_at      INTEGER NOT NULL,
    revoked_at      INTEGER
) STRICT;
-- One active token per name (a revoked token's name may be given to its replacement).
CREATE UNIQUE INDEX data_plane_tokens_active_name ON data_plane_tokens (name)
    WHERE revoked_at IS NULL;
