-- 0006: PubSub (XEP-0060): nodes, items, affiliations and subscriptions of accounts' PEP
-- services (XEP-0163) and of PubSub service domains.
--
-- A service is a row of `pubsub_services`; its nodes reference it and everything of a node
-- references the node, all with ON DELETE CASCADE. An account's service references
-- `accounts`, so deleting the account deletes (in the same statement) its service with
-- every node, item, affiliation and subscription of it. A service domain's row has a NULL
-- `username`: a foreign key with a NULL column is not checked, so it needs no account.
-- Names are compared byte-exactly (BINARY collation); callers normalise them.

CREATE TABLE pubsub_services (
    id         INTEGER PRIMARY KEY,
    domain     TEXT    NOT NULL, -- the account's domain, or the service domain
    username   TEXT,             -- the account's username; NULL for a service domain
    -- Items held across the service's nodes, kept in the same transaction as every change:
    -- `max_service_items` is checked on one row, not on a count over the whole service.
    item_count INTEGER NOT NULL DEFAULT 0 CHECK (item_count >= 0),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username)
        ON DELETE CASCADE ON UPDATE CASCADE
) STRICT;

-- One service per account (NULLs are distinct in a UNIQUE index, so service domains are not
-- constrained here), the lookup of either kind (`username IS ?`) and the cascade from
-- accounts.
CREATE UNIQUE INDEX pubsub_services_owner ON pubsub_services (domain, username);
-- One service per service domain. A domain service and an account's service never share a
-- row, even when their strings coincide (`Domain("a@pubsub.x")` vs the account a@pubsub.x).
CREATE UNIQUE INDEX pubsub_services_domain ON pubsub_services (domain) WHERE username IS NULL;

CREATE TABLE pubsub_nodes (
    id         INTEGER PRIMARY KEY,
    service_id INTEGER NOT NULL REFERENCES pubsub_services (id) ON DELETE CASCADE,
    node       TEXT    NOT NULL,
    config     TEXT    NOT NULL, -- the configuration document the PubSub module wrote
    -- The node's items, kept in the same transaction as every change, so the RSM count is
    -- one row read, not a count over a (possibly large) domain-service node.
    item_count INTEGER NOT NULL DEFAULT 0 CHECK (item_count >= 0),
    UNIQUE (service_id, node) -- nodes listed by name; the cascade from services
) STRICT;

-- The parent key of the (service_id, node_id) foreign keys below: it makes the service_id
-- copied into affiliations and subscriptions always the one of their node.
CREATE UNIQUE INDEX pubsub_nodes_service ON pubsub_nodes (service_id, id);

-- `seq` is the publication order across the backend: AUTOINCREMENT makes it increase and
-- never be reused, so a republished item (deleted and inserted again) becomes the newest.
-- Within a node, pubsub_items_order holds (node_id, seq) (seq being the implicit rowid
-- suffix of the index): newest first is that index backwards, and an RSM page after or
-- before a known item is a range seek on it reading the page, not a sort of the node.
CREATE TABLE pubsub_items (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id      INTEGER NOT NULL REFERENCES pubsub_nodes (id) ON DELETE CASCADE,
    item_id      TEXT    NOT NULL,
    publisher    TEXT    NOT NULL,
    payload      TEXT    NOT NULL, -- the serialised children of <item/>
    published_us INTEGER NOT NULL  -- Unix microseconds
) STRICT;

-- Pages, eviction of the oldest, positions; the cascade from nodes.
CREATE INDEX pubsub_items_order ON pubsub_items (node_id);
-- Ids to rows (replace, retract, Ids selection, RSM after/before); one item per id.
CREATE UNIQUE INDEX pubsub_items_id ON pubsub_items (node_id, item_id);

-- `none` is stored as absence. Rows are small: clustered on their key.
CREATE TABLE pubsub_affiliations (
    service_id  INTEGER NOT NULL,
    node_id     INTEGER NOT NULL,
    jid         TEXT    NOT NULL,
    affiliation TEXT    NOT NULL,
    PRIMARY KEY (node_id, jid),
    FOREIGN KEY (service_id, node_id) REFERENCES pubsub_nodes (service_id, id)
        ON DELETE CASCADE
) STRICT, WITHOUT ROWID;

-- A JID's affiliations on one service; a deleted account's JIDs on every service (a range
-- on jid: the bare JID and its full JIDs `bare/...` sort together).
CREATE INDEX pubsub_affiliations_jid ON pubsub_affiliations (jid, service_id);

-- Options documents may be large: a rowid table, like the other tables holding documents.
CREATE TABLE pubsub_subscriptions (
    service_id INTEGER NOT NULL,
    node_id    INTEGER NOT NULL,
    jid        TEXT    NOT NULL, -- bare or full
    subid      TEXT    NOT NULL,
    state      TEXT    NOT NULL, -- 'subscribed' | 'pending' | 'unconfigured'
    options    TEXT    NOT NULL,
    PRIMARY KEY (node_id, jid, subid),
    FOREIGN KEY (service_id, node_id) REFERENCES pubsub_nodes (service_id, id)
        ON DELETE CASCADE
) STRICT;

-- `max_per_jid` (a bounded count of one JID's subscriptions on one service), a JID's
-- subscriptions on a service, and a deleted account's JIDs on every service.
CREATE INDEX pubsub_subscriptions_jid ON pubsub_subscriptions (jid, service_id);
