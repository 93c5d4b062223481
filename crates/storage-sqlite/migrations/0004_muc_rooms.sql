-- Persistent rooms of Multi-User Chat services (XEP-0045): one document per room, written
-- by the MUC module. A service domain is not an account host, so rooms have no foreign key.
-- STRICT like the other tables: a value of another type is refused on write, not met on read.
CREATE TABLE muc_rooms (
    service    TEXT NOT NULL,
    room       TEXT NOT NULL,
    state      TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (service, room)
) STRICT, WITHOUT ROWID;
