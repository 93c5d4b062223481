-- 0007: records of HTTP file uploads (XEP-0363), one per slot issued to a local account.
-- A record references its owner, so deleting the account deletes its records in the same
-- statement; the upload module then deletes the files whose record is gone.
CREATE TABLE uploads (
    id           TEXT    NOT NULL PRIMARY KEY, -- the slot's random directory
    domain       TEXT    NOT NULL,
    username     TEXT    NOT NULL,
    file_name    TEXT    NOT NULL,
    size         INTEGER NOT NULL CHECK (size >= 0),
    content_type TEXT    NOT NULL,
    created_at   INTEGER NOT NULL, -- Unix seconds
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username)
        ON DELETE CASCADE ON UPDATE CASCADE
) STRICT;

-- The owner's quota window (a range seek by owner and time) and the cascade from accounts.
CREATE INDEX uploads_owner ON uploads (domain, username, created_at);
-- Expiry, oldest first.
CREATE INDEX uploads_created ON uploads (created_at);
