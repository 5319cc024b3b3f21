-- Entra ID auth mode (issue #4). `api_key`: the sealed key in api_key_ciphertext is sent;
-- `entra`: the data plane sends its own Entra ID token and no key is stored (ciphertext and
-- hint are empty strings, since the columns are NOT NULL). Existing rows keep `api_key`.
ALTER TABLE inference_endpoints ADD COLUMN auth TEXT NOT NULL DEFAULT 'api_key'
    CHECK (auth IN ('api_key', 'entra'));
