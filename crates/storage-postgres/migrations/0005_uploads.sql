-- 0005: records of HTTP file uploads (XEP-0363), one per slot issued to a local account;
-- deleting the account deletes its records in the same statement.
CREATE TABLE uploads (
    id           text COLLATE "C" PRIMARY KEY, -- the slot's random directory
    account_id   bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    file_name    text   NOT NULL,
    size         bigint NOT NULL CHECK (size >= 0),
    content_type text   NOT NULL,
    created_at   bigint NOT NULL -- Unix seconds
);

-- The owner's quota window (a range seek by owner and time) and the cascade from accounts.
CREATE INDEX uploads_owner ON uploads (account_id, created_at);
-- Expiry, oldest first.
CREATE INDEX uploads_created ON uploads (created_at);
