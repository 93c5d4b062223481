-- 0009: leaner archive tables with ordinals for exact O(log n) counts (replaces the
-- tables of 0003 and 0005, converting their rows in place: same seq, ids, order).
--
-- * An archive's owner is an integer (`archive_owners.id`) instead of the repeated
--   (domain, username) text: every index entry carries 8 bytes or fewer for it.
-- * Three indexes instead of five. `archive_time (owner, ts, n)` serves whole-archive
--   paging, start/end bounds, the newest timestamp at insert, the retention purge (per
--   owner) and the cascade from `archive_owners`; `archive_with (owner, with_bare)` the
--   `with` filters (in seq order: the rowid ends every index entry); `archive_id` the ids.
--   The owner index of 0003 is gone (owner+time is one index) and so is the global
--   purge index on ts (the purge walks owners).
-- * `n` numbers an owner's entries 1, 2, 3… in archive order; `wn` numbers its entries
--   with one bare JID the same way. Rows are only ever deleted as an owner's oldest
--   entries (the purge, by time, which is archive order) or all of them, so the number of
--   entries between two rows of a result set is the difference of their ordinals: a count
--   is two index seeks, whatever the size of the set. Within an owner, (ts, n) order is
--   seq order (ts never decreases, n increases), so a row bound is a row value (ts, n).

CREATE TABLE archive_owners (
    id       INTEGER PRIMARY KEY,
    domain   TEXT NOT NULL,
    username TEXT NOT NULL,
    UNIQUE (domain, username),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username)
        ON DELETE CASCADE ON UPDATE CASCADE
) STRICT;

INSERT INTO archive_owners (domain, username)
    SELECT DISTINCT domain, username FROM archive ORDER BY domain, username;

CREATE TABLE archive_v9 (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    owner         INTEGER NOT NULL REFERENCES archive_owners (id) ON DELETE CASCADE,
    ts            INTEGER NOT NULL, -- Unix microseconds, never decreasing within an owner
    n             INTEGER NOT NULL, -- ordinal within the owner's archive
    wn            INTEGER NOT NULL, -- ordinal among the owner's entries with with_bare
    stanza_id     TEXT    NOT NULL, -- XEP-0359 id, unique per owner
    with_bare     TEXT    NOT NULL,
    with_resource TEXT    NOT NULL,
    stanza        TEXT    NOT NULL
) STRICT;

INSERT INTO archive_v9 (seq, owner, ts, n, wn, stanza_id, with_bare, with_resource, stanza)
    SELECT a.seq, o.id, a.ts,
           ROW_NUMBER() OVER (PARTITION BY o.id ORDER BY a.seq),
           ROW_NUMBER() OVER (PARTITION BY o.id, a.with_bare ORDER BY a.seq),
           a.stanza_id, a.with_bare, a.with_resource, a.stanza
    FROM archive a JOIN archive_owners o ON o.domain = a.domain AND o.username = a.username
    ORDER BY a.seq;

-- seq is never reused: carry the table's high-water mark over (it can be above the
-- largest seq left after deletions).
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'archive_v9', 0 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'archive_v9');
UPDATE sqlite_sequence
    SET seq = MAX(seq, COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'archive'), 0))
    WHERE name = 'archive_v9';

DROP TABLE archive;
ALTER TABLE archive_v9 RENAME TO archive;

CREATE INDEX archive_time ON archive (owner, ts, n);
CREATE INDEX archive_with ON archive (owner, with_bare);
CREATE UNIQUE INDEX archive_id ON archive (owner, stanza_id);

-- Room archives: the same shape. A service domain is not an account host, so the owners
-- reference nothing; the MUC module deletes a room's archive when the room is destroyed.
CREATE TABLE muc_archive_owners (
    id       INTEGER PRIMARY KEY,
    domain   TEXT NOT NULL, -- the MUC service
    username TEXT NOT NULL, -- the room
    UNIQUE (domain, username)
) STRICT;

INSERT INTO muc_archive_owners (domain, username)
    SELECT DISTINCT domain, username FROM muc_archive ORDER BY domain, username;

CREATE TABLE muc_archive_v9 (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    owner         INTEGER NOT NULL REFERENCES muc_archive_owners (id) ON DELETE CASCADE,
    ts            INTEGER NOT NULL,
    n             INTEGER NOT NULL,
    wn            INTEGER NOT NULL,
    stanza_id     TEXT    NOT NULL, -- XEP-0359 id (by the room), unique per room
    with_bare     TEXT    NOT NULL, -- the room's bare JID
    with_resource TEXT    NOT NULL, -- the sender's nick, or '' for the room itself
    stanza        TEXT    NOT NULL
) STRICT;

INSERT INTO muc_archive_v9 (seq, owner, ts, n, wn, stanza_id, with_bare, with_resource, stanza)
    SELECT a.seq, o.id, a.ts,
           ROW_NUMBER() OVER (PARTITION BY o.id ORDER BY a.seq),
           ROW_NUMBER() OVER (PARTITION BY o.id, a.with_bare ORDER BY a.seq),
           a.stanza_id, a.with_bare, a.with_resource, a.stanza
    FROM muc_archive a
    JOIN muc_archive_owners o ON o.domain = a.domain AND o.username = a.username
    ORDER BY a.seq;

INSERT INTO sqlite_sequence (name, seq)
    SELECT 'muc_archive_v9', 0
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'muc_archive_v9');
UPDATE sqlite_sequence
    SET seq = MAX(seq, COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'muc_archive'), 0))
    WHERE name = 'muc_archive_v9';

DROP TABLE muc_archive;
ALTER TABLE muc_archive_v9 RENAME TO muc_archive;

CREATE INDEX muc_archive_time ON muc_archive (owner, ts, n);
CREATE INDEX muc_archive_with ON muc_archive (owner, with_bare);
CREATE UNIQUE INDEX muc_archive_id ON muc_archive (owner, stanza_id);
