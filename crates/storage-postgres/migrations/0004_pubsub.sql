-- 0004: PubSub (XEP-0060): nodes, items, affiliations and subscriptions of accounts' PEP
-- services (XEP-0163) and of PubSub service domains.
--
-- A service is a row of `pubsub_services`, owned either by an account (`account_id`, with
-- ON DELETE CASCADE: deleting the account deletes its service with every node, item,
-- affiliation and subscription) or by a service domain (`domain`). Writes lock the service
-- row, so the quotas (nodes per service, items per service, subscriptions per JID) are
-- checked and written by one writer at a time.

CREATE TABLE pubsub_services (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id bigint UNIQUE REFERENCES accounts (id) ON DELETE CASCADE,
    domain     text COLLATE "C" UNIQUE,
    -- Items held across the service's nodes, kept in the transaction of every change.
    item_count bigint NOT NULL DEFAULT 0 CHECK (item_count >= 0),
    CHECK ((account_id IS NULL) <> (domain IS NULL))
);

CREATE TABLE pubsub_nodes (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    service_id bigint NOT NULL REFERENCES pubsub_services (id) ON DELETE CASCADE,
    node       text COLLATE "C" NOT NULL,
    config     text NOT NULL, -- the configuration document the PubSub module wrote
    item_count bigint NOT NULL DEFAULT 0 CHECK (item_count >= 0),
    UNIQUE (service_id, node)
);

-- `seq` is the publication order across the backend: a republished item (deleted and
-- inserted again) becomes the newest. (node_id, seq) gives a node's items newest first
-- (backwards), and an RSM page after or before a known item is a range seek on it.
CREATE TABLE pubsub_items (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    node_id      bigint NOT NULL REFERENCES pubsub_nodes (id) ON DELETE CASCADE,
    item_id      text COLLATE "C" NOT NULL,
    publisher    text NOT NULL,
    payload      text NOT NULL,
    published_us bigint NOT NULL,
    UNIQUE (node_id, item_id)
);

CREATE INDEX pubsub_items_order ON pubsub_items (node_id, seq);

-- `none` is stored as absence.
CREATE TABLE pubsub_affiliations (
    node_id     bigint NOT NULL REFERENCES pubsub_nodes (id) ON DELETE CASCADE,
    jid         text COLLATE "C" NOT NULL,
    affiliation text NOT NULL,
    PRIMARY KEY (node_id, jid)
);

-- A JID's affiliations; a deleted account's JIDs on every service (a range on jid: the bare
-- JID and its full JIDs `bare/...` sort together).
CREATE INDEX pubsub_affiliations_jid ON pubsub_affiliations (jid, node_id);

CREATE TABLE pubsub_subscriptions (
    node_id bigint NOT NULL REFERENCES pubsub_nodes (id) ON DELETE CASCADE,
    jid     text COLLATE "C" NOT NULL, -- bare or full
    subid   text COLLATE "C" NOT NULL,
    state   text NOT NULL, -- 'subscribed' | 'pending' | 'unconfigured'
    options text NOT NULL,
    PRIMARY KEY (node_id, jid, subid)
);

CREATE INDEX pubsub_subscriptions_jid ON pubsub_subscriptions (jid, node_id);
