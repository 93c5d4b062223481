-- 0003: message archives (XEP-0313) of accounts and of Multi-User Chat rooms, with the
-- stanza ids the server assigned (XEP-0359).
--
-- `id` is the archive order: an identity, so it increases in append order (appends to one
-- archive are serialised by a lock on its owner row) and is never reused. The primary key
-- (owner, id) is the index of a page through a whole archive, (owner, with_bare, id) the one
-- of a page of one correspondent: both give the rows in archive order, so a page after or
-- before a known row is a range seek reading the page, not a sort of the archive.
-- `ts` never decreases within an archive (the store raises an older timestamp to the
-- newest), so a `start`/`end` time maps to one id bound, found with one seek on
-- (owner, ts, id).

CREATE TABLE archive (
    account_id    bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    id            bigint GENERATED ALWAYS AS IDENTITY,
    stanza_id     text COLLATE "C" NOT NULL, -- XEP-0359 id, unique per account
    ts            bigint NOT NULL,           -- Unix microseconds
    with_bare     text COLLATE "C" NOT NULL, -- the other party's bare JID
    with_resource text COLLATE "C" NOT NULL, -- its resource, or ''
    stanza        text NOT NULL,             -- the serialised message
    PRIMARY KEY (account_id, id),
    -- Ids to rows (RSM after/before, after-id, before-id, ids); no duplicate id per account.
    UNIQUE (account_id, stanza_id)
);

CREATE INDEX archive_with ON archive (account_id, with_bare, id);
CREATE INDEX archive_time ON archive (account_id, ts, id);
-- Retention purge across accounts, oldest first.
CREATE INDEX archive_purge ON archive (ts);

-- A room archive's owner: a service domain is not an account host, so rooms get their own
-- owner rows (created by a room's first archived message, deleted with its archive).
CREATE TABLE muc_archive_owners (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    service text COLLATE "C" NOT NULL,
    room    text COLLATE "C" NOT NULL,
    UNIQUE (service, room)
);

CREATE TABLE muc_archive (
    owner_id      bigint NOT NULL REFERENCES muc_archive_owners (id) ON DELETE CASCADE,
    id            bigint GENERATED ALWAYS AS IDENTITY,
    stanza_id     text COLLATE "C" NOT NULL, -- XEP-0359 id (by the room), unique per room
    ts            bigint NOT NULL,
    with_bare     text COLLATE "C" NOT NULL, -- the room's bare JID
    with_resource text COLLATE "C" NOT NULL, -- the sender's nick, or '' for the room itself
    stanza        text NOT NULL,
    PRIMARY KEY (owner_id, id),
    UNIQUE (owner_id, stanza_id)
);

CREATE INDEX muc_archive_with ON muc_archive (owner_id, with_bare, id);
CREATE INDEX muc_archive_time ON muc_archive (owner_id, ts, id);
CREATE INDEX muc_archive_purge ON muc_archive (ts);

-- Persistent rooms of Multi-User Chat services (XEP-0045): one document per room, written
-- by the MUC module. Rooms belong to a service domain, not to an account.
CREATE TABLE muc_rooms (
    service    text COLLATE "C" NOT NULL,
    room       text COLLATE "C" NOT NULL,
    state      text NOT NULL,
    updated_at bigint NOT NULL,
    PRIMARY KEY (service, room)
);
