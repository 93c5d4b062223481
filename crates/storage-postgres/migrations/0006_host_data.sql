-- Small values per served host (message of the day, welcome message, administrators added
-- over XMPP), written by the admin module. A host is not an account: no foreign key, and
-- deleting accounts leaves these rows alone.
CREATE TABLE host_data (
    domain     text   NOT NULL,
    key        text   NOT NULL,
    value      text   NOT NULL,
    updated_at bigint NOT NULL,
    PRIMARY KEY (domain, key)
);
