-- Named admin API tokens, each with a role (issue #10). Kept in step with ../postgres.
-- Only the SHA-256 of a token is stored; the token is shown once, when it is created.
-- Revoking keeps the row (with revoked_at) and its name stays taken: the audit log names a
-- token's actor as `token:<name>`, which must never come to mean another token.
CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    role         TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    sha256       BLOB NOT NULL UNIQUE CHECK (length(sha256) = 32),
    hint         TEXT NOT NULL,
    -- The actor that created it (`bootstrap`, `token:<name>`, `oidc:<subject>`).
    created_by   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    -- Unix ms after which the token is refused; NULL = never expires.
    expires_at   INTEGER,
    -- Unix ms of the last authenticated request, updated at most once a minute.
    last_used_at INTEGER,
    revoked_at   INTEGER
) STRICT;
