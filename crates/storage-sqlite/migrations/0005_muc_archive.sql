-- 0005: archives of Multi-User Chat rooms (XEP-0313 on a room's JID). The same shape and
-- indexes as `archive` (see 0003), with `domain` the service's domain and `username` the
-- room's local part. A service domain is not an account host, so there is no foreign key:
-- the MUC module deletes a room's archive when the room is destroyed.
CREATE TABLE muc_archive (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    domain        TEXT    NOT NULL, -- the MUC service
    username      TEXT    NOT NULL, -- the room
    stanza_id     TEXT    NOT NULL, -- XEP-0359 id (by the room), unique per room
    ts            INTEGER NOT NULL, -- Unix microseconds
    with_bare     TEXT    NOT NULL, -- the room's bare JID
    with_resource TEXT    NOT NULL, -- the sender's nick, or '' for the room itself
    stanza        TEXT    NOT NULL  -- the message as the room sent it
) STRICT;

CREATE INDEX muc_archive_owner ON muc_archive (domain, username);
CREATE INDEX muc_archive_with ON muc_archive (domain, username, with_bare);
CREATE INDEX muc_archive_time ON muc_archive (domain, username, ts);
CREATE UNIQUE INDEX muc_archive_id ON muc_archive (domain, username, stanza_id);
CREATE INDEX muc_archive_purge ON muc_archive (ts);
