-- 0002: instant messaging: rosters and roster versions (RFC 6121), pending inbound
-- subscription requests (RFC 6121 §3.1.3), offline messages (XEP-0160) and small
-- per-user documents (vCard, private XML, last activity, blocklist).
--
-- Every table hangs off `accounts` with ON DELETE CASCADE: deleting an account (one
-- DELETE statement, hence atomic) deletes everything of it, and no row can be written
-- for an account that doesn't exist (foreign_keys=ON on every connection).
-- Names are compared byte-exactly (BINARY collation); callers normalise them.
-- Tables whose rows stay small are WITHOUT ROWID (clustered on their key); tables holding
-- whole stanzas or documents keep a rowid so large values don't bloat the key b-tree.

CREATE TABLE roster_items (
    domain       TEXT    NOT NULL,
    username     TEXT    NOT NULL,
    contact      TEXT    NOT NULL, -- the contact's bare JID (may be remote)
    name         TEXT,
    subscription TEXT    NOT NULL CHECK (subscription IN ('none', 'to', 'from', 'both')),
    ask          INTEGER NOT NULL CHECK (ask IN (0, 1)),
    approved     INTEGER NOT NULL CHECK (approved IN (0, 1)),
    PRIMARY KEY (domain, username, contact),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username)
        ON DELETE CASCADE ON UPDATE CASCADE
) STRICT, WITHOUT ROWID;

-- One row per (item, group), `position` keeping the order the client gave. A child table
-- rather than an encoded column: group names are arbitrary text (commas, newlines,
-- quotes...), so no separator or escaping scheme is needed, and groups stay queryable
-- (rename a group, list a user's groups) without parsing. Deleting or replacing an item
-- removes its groups (cascade from roster_items, or an explicit delete on replace).
CREATE TABLE roster_groups (
    domain   TEXT    NOT NULL,
    username TEXT    NOT NULL,
    contact  TEXT    NOT NULL,
    position INTEGER NOT NULL,
    name     TEXT    NOT NULL,
    PRIMARY KEY (domain, username, contact, position),
    FOREIGN KEY (domain, username, contact) REFERENCES roster_items (domain, username, contact)
        ON DELETE CASCADE ON UPDATE CASCADE
) STRICT, WITHOUT ROWID;

-- Absent row = version 0. Bumped in the same transaction as every item change.
CREATE TABLE roster_versions (
    domain   TEXT    NOT NULL,
    username TEXT    NOT NULL,
    version  INTEGER NOT NULL CHECK (version > 0),
    PRIMARY KEY (domain, username),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username)
        ON DELETE CASCADE ON UPDATE CASCADE
) STRICT, WITHOUT ROWID;

CREATE TABLE roster_pending_in (
    domain   TEXT NOT NULL,
    username TEXT NOT NULL,
    contact  TEXT NOT NULL,
    stanza   TEXT NOT NULL, -- the serialized <presence type='subscribe'/> to redeliver
    PRIMARY KEY (domain, username, contact),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username)
        ON DELETE CASCADE ON UPDATE CASCADE
) STRICT;

-- AUTOINCREMENT: ids increase in arrival order and are never reused, even after the
-- newest messages (or their account) were deleted.
CREATE TABLE offline_messages (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    domain    TEXT    NOT NULL,
    username  TEXT    NOT NULL,
    stanza    TEXT    NOT NULL,
    stored_at INTEGER NOT NULL, -- Unix seconds
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username)
        ON DELETE CASCADE ON UPDATE CASCADE
) STRICT;

-- Peek in arrival order, count for the quota, and the cascade from accounts.
CREATE INDEX offline_messages_owner ON offline_messages (domain, username, id);

CREATE TABLE user_data (
    domain   TEXT NOT NULL,
    username TEXT NOT NULL,
    store    TEXT NOT NULL, -- 'vcard' | 'private' | 'last' | 'blocklist' | ...
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (domain, username, store, key),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username)
        ON DELETE CASCADE ON UPDATE CASCADE
) STRICT;
