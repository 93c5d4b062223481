-- 0011: no index of every archive entry's stanza id.
--
-- The unique (owner, stanza_id) index was a fifth B-tree written on every append, a third
-- of an append's cost (BENCHMARKS.md). The ids the server makes start with the archiving
-- time (`rookery_storage::id_time_prefix`), and an entry whose id carries its own `ts` is
-- found through `archive_time (owner, ts, n)`, which every append writes anyway. Only
-- the entries whose id does not (an id from elsewhere, or a timestamp the store raised
-- because the clock went back) are listed in `archive_ids`, keyed by (owner, stanza_id).
-- An id is looked up by its time first, then in `archive_ids`; a listed `seq` whose entry
-- was purged finds nothing, and the purge removes such rows.
--
-- Rows already archived are all listed: their ids are found as before, and nothing has
-- to decode them here.

CREATE TABLE archive_ids (
    owner     INTEGER NOT NULL REFERENCES archive_owners (id) ON DELETE CASCADE,
    stanza_id TEXT    NOT NULL,
    seq       INTEGER NOT NULL, -- archive.seq (never reused)
    PRIMARY KEY (owner, stanza_id)
) STRICT, WITHOUT ROWID;

INSERT INTO archive_ids (owner, stanza_id, seq) SELECT owner, stanza_id, seq FROM archive;
CREATE INDEX archive_ids_seq ON archive_ids (owner, seq);
DROP INDEX archive_id;

CREATE TABLE muc_archive_ids (
    owner     INTEGER NOT NULL REFERENCES muc_archive_owners (id) ON DELETE CASCADE,
    stanza_id TEXT    NOT NULL,
    seq       INTEGER NOT NULL, -- muc_archive.seq
    PRIMARY KEY (owner, stanza_id)
) STRICT, WITHOUT ROWID;

INSERT INTO muc_archive_ids (owner, stanza_id, seq)
    SELECT owner, stanza_id, seq FROM muc_archive;
CREATE INDEX muc_archive_ids_seq ON muc_archive_ids (owner, seq);
DROP INDEX muc_archive_id;
