-- 0001: accounts and their SCRAM credential records (never passwords).
--
-- An account is a row with a bigint identity; every table of per-account data references
-- `accounts (id)` with ON DELETE CASCADE, so deleting an account is one statement that
-- deletes everything of it, and no row can be written for an account that doesn't exist.
-- Names are compared and sorted byte-exactly (COLLATE "C"); callers normalise them.
-- The roster version (RFC 6121 §2.6) is a column of the account: it starts at 0 with the
-- account and is bumped in the transaction of every roster change.

CREATE TABLE accounts (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain         text COLLATE "C" NOT NULL,
    username       text COLLATE "C" NOT NULL,
    created_at     bigint NOT NULL, -- Unix seconds
    roster_version bigint NOT NULL DEFAULT 0 CHECK (roster_version >= 0),
    UNIQUE (domain, username)
);

CREATE TABLE scram_credentials (
    account_id bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    hash       text   NOT NULL, -- 'SHA-1' | 'SHA-256' | 'SHA-512'
    salt       bytea  NOT NULL,
    iterations bigint NOT NULL,
    stored_key bytea  NOT NULL,
    server_key bytea  NOT NULL,
    PRIMARY KEY (account_id, hash)
);
