-- 0010: how far the archive writer has committed the archive journal (`journal.rs`).
-- One row, updated in the transaction of every batch that commits journaled appends; at
-- open the records after this position are committed before anything else runs.

CREATE TABLE archive_journal (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    segment INTEGER NOT NULL,
    offset  INTEGER NOT NULL
) STRICT;

INSERT INTO archive_journal (id, segment, offset) VALUES (1, 0, 0);
