-- 0003: message archives (XEP-0313) with the stanza ids the server assigned (XEP-0359).
--
-- `seq` is the archive order: AUTOINCREMENT makes it increase in insertion order and never
-- be reused. Every index on an account's rows ends (implicitly) with the rowid `seq`, so
-- within an account, or an account and a contact, rows come out of the index already in
-- archive order, and a page after or before a known row is a range seek on `seq`:
-- paging costs the page, not the archive. `ts` never decreases within an account (the
-- store raises an older timestamp to the newest one), so a `start`/`end` time maps to one
-- `seq` bound found with one seek on archive_time.
CREATE TABLE archive (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    domain        TEXT    NOT NULL,
    username      TEXT    NOT NULL,
    stanza_id     TEXT    NOT NULL, -- XEP-0359 id, unique per account
    ts            INTEGER NOT NULL, -- Unix microseconds
    with_bare     TEXT    NOT NULL, -- the other party's bare JID
    with_resource TEXT    NOT NULL, -- its resource, or ''
    stanza        TEXT    NOT NULL, -- the serialised message
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username)
        ON DELETE CASCADE ON UPDATE CASCADE
) STRICT;

-- Paging through a whole archive (seq order) and the cascade from accounts.
CREATE INDEX archive_owner ON archive (domain, username);
-- `with` filters, in seq order; a full JID adds a check on with_resource.
CREATE INDEX archive_with ON archive (domain, username, with_bare);
-- start/end to seq bounds; the newest timestamp at insert.
CREATE INDEX archive_time ON archive (domain, username, ts);
-- Ids to rows (RSM after/before, after-id, before-id, ids); no duplicate id per account.
CREATE UNIQUE INDEX archive_id ON archive (domain, username, stanza_id);
-- Retention purge across accounts, oldest first.
CREATE INDEX archive_purge ON archive (ts);
