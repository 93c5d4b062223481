-- 0001: accounts and their SCRAM credential records (never passwords).
-- Names are compared byte-exactly (BINARY collation); callers normalise them.

CREATE TABLE accounts (
    domain     TEXT    NOT NULL,
    username   TEXT    NOT NULL,
    created_at INTEGER NOT NULL, -- Unix seconds
    PRIMARY KEY (domain, username)
) STRICT, WITHOUT ROWID;

CREATE TABLE scram_credentials (
    domain     TEXT    NOT NULL,
    username   TEXT    NOT NULL,
    hash       TEXT    NOT NULL, -- 'SHA-1' | 'SHA-256' | 'SHA-512'
    salt       BLOB    NOT NULL,
    iterations INTEGER NOT NULL,
    stored_key BLOB    NOT NULL,
    server_key BLOB    NOT NULL,
    PRIMARY KEY (domain, username, hash),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username)
        ON DELETE CASCADE ON UPDATE CASCADE
) STRICT, WITHOUT ROWID;
