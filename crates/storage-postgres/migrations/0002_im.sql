-- 0002: instant messaging: rosters (RFC 6121), pending inbound subscription requests
-- (RFC 6121 §3.1.3), offline messages (XEP-0160) and small per-user documents (vCard,
-- private XML, last activity, blocklist). Everything references its account with
-- ON DELETE CASCADE.

-- Groups are an array in the order the client gave them (already deduplicated): group
-- names are arbitrary text, and an array needs no separator or escaping scheme.
CREATE TABLE roster_items (
    account_id   bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    contact      text COLLATE "C" NOT NULL, -- the contact's bare JID (may be remote)
    name         text,
    subscription text NOT NULL CHECK (subscription IN ('none', 'to', 'from', 'both')),
    ask          boolean NOT NULL,
    approved     boolean NOT NULL,
    groups       text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (account_id, contact)
);

CREATE TABLE roster_pending_in (
    account_id bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    contact    text COLLATE "C" NOT NULL,
    stanza     text NOT NULL, -- the serialized <presence type='subscribe'/> to redeliver
    PRIMARY KEY (account_id, contact)
);

-- An identity: ids increase in arrival order and are never reused, even after the newest
-- messages (or their account) were deleted.
CREATE TABLE offline_messages (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    stanza     text   NOT NULL,
    stored_at  bigint NOT NULL -- Unix seconds
);

-- Peek in arrival order, count for the quota, and the cascade from accounts.
CREATE INDEX offline_messages_owner ON offline_messages (account_id, id);

CREATE TABLE user_data (
    account_id bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    store      text COLLATE "C" NOT NULL, -- 'vcard' | 'private' | 'last' | 'blocklist' | ...
    key        text COLLATE "C" NOT NULL,
    value      text NOT NULL,
    PRIMARY KEY (account_id, store, key)
);
