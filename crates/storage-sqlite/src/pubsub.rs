//! [`PubSubStore`] on SQLite (schema: `migrations/0006_pubsub.sql`).
//!
//! Every write runs in one `BEGIN IMMEDIATE` transaction: the node lookup, the quota it
//! checks (`max_nodes`, `max_service_items`, `max_per_jid`) and the rows it writes commit
//! together or not at all, and no other writer (task or process) runs in between, so
//! quotas are exact. A refused write returns before writing or drops its transaction,
//! which rolls back.
//!
//! Item counts are columns (`pubsub_nodes.item_count`, `pubsub_services.item_count`)
//! updated in the transaction of every change rather than `COUNT(*)`s: the RSM count of a
//! node and the service total behind `max_service_items` are then one row read each,
//! however many items a domain service's node holds. Pages are range seeks on
//! `(node_id, seq)`; the position of a page's first item (RSM `first index`) is a count
//! over the same index of the items newer than it, which reads only the index entries in
//! front of the page.
//!
//! Reads of one statement need no transaction; reads of several run in one read
//! transaction so they see one snapshot. Statements are prepared once per connection
//! (`prepare_cached`).

use rookery_storage::{
    ItemPage, ItemRecord, ItemSelection, NodeRecord, PubSubService, PubSubStore, Published,
    StorageError, SubscriptionRecord,
};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::im::{count_from, read_err, read_tx, require_account, to_i64, write_tx};
use crate::{backend, read, run, Shared};

/// [`PubSubStore`] of a [`SqliteBackend`](crate::SqliteBackend).
pub struct SqlitePubSubStore {
    pub(crate) conn: Shared,
}

impl std::fmt::Debug for SqlitePubSubStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqlitePubSubStore")
    }
}

/// A service as its `pubsub_services` row is keyed: `username` is None for a service
/// domain (matched with `username IS ?`, which a NULL matches).
#[derive(Debug, Clone)]
struct Service {
    domain: String,
    username: Option<String>,
}

impl Service {
    fn of(service: PubSubService<'_>) -> Self {
        match service {
            PubSubService::Account { domain, user } => Service {
                domain: domain.to_owned(),
                username: Some(user.to_owned()),
            },
            PubSubService::Domain(d) => Service {
                domain: d.to_owned(),
                username: None,
            },
        }
    }

    /// NotFound for the service of an account that doesn't exist: writes to it are refused
    /// even where a missing node alone would not be an error.
    fn require_owner(&self, conn: &Connection) -> Result<(), StorageError> {
        match &self.username {
            Some(user) => require_account(conn, &self.domain, user),
            None => Ok(()),
        }
    }
}

/// What a write needs of a node's row.
struct NodeRow {
    id: i64,
    service_id: i64,
    item_count: usize,
}

fn find_node(
    conn: &Connection,
    svc: &Service,
    node: &str,
) -> Result<Option<NodeRow>, StorageError> {
    let row = conn
        .prepare_cached(
            "SELECT n.id, n.service_id, n.item_count
             FROM pubsub_services s JOIN pubsub_nodes n ON n.service_id = s.id
             WHERE s.domain = ?1 AND s.username IS ?2 AND n.node = ?3",
        )
        .map_err(backend)?
        .query_row(params![svc.domain, svc.username, node], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .optional()
        .map_err(read_err)?;
    row.map(|(id, service_id, n)| {
        Ok(NodeRow {
            id,
            service_id,
            item_count: count_from(n)?,
        })
    })
    .transpose()
}

/// The node a write needs, or NotFound.
fn require_node(conn: &Connection, svc: &Service, node: &str) -> Result<NodeRow, StorageError> {
    find_node(conn, svc, node)?.ok_or(StorageError::NotFound)
}

/// The sequence number of a node's item.
fn item_seq(conn: &Connection, node_id: i64, id: &str) -> Result<Option<i64>, StorageError> {
    conn.prepare_cached("SELECT seq FROM pubsub_items WHERE node_id = ?1 AND item_id = ?2")
        .map_err(backend)?
        .query_row(params![node_id, id], |r| r.get(0))
        .optional()
        .map_err(read_err)
}

/// How many items of a node are newer than `seq`: the newest-first position of the item
/// after it. Reads the index entries in front of it, not the node.
fn newer_than(conn: &Connection, node_id: i64, seq: i64) -> Result<usize, StorageError> {
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM pubsub_items WHERE node_id = ?1 AND seq > ?2")
        .map_err(backend)?
        .query_row(params![node_id, seq], |r| r.get(0))
        .map_err(read_err)?;
    count_from(n)
}

/// Adds `delta` to the item counts of a node and of its service.
fn add_items(conn: &Connection, node: &NodeRow, delta: i64) -> Result<(), StorageError> {
    if delta == 0 {
        return Ok(());
    }
    conn.prepare_cached("UPDATE pubsub_nodes SET item_count = item_count + ?2 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![node.id, delta]))
        .map_err(backend)?;
    conn.prepare_cached("UPDATE pubsub_services SET item_count = item_count + ?2 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![node.service_id, delta]))
        .map_err(backend)?;
    Ok(())
}

fn corrupt_count(what: &str) -> StorageError {
    StorageError::Corrupt(format!(
        "PubSub item count of the {what} is below its items"
    ))
}

/// An item from the columns `item_id, publisher, payload, published_us` starting at `at`.
fn item_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<ItemRecord> {
    Ok(ItemRecord {
        id: r.get(at)?,
        publisher: r.get(at + 1)?,
        payload: r.get(at + 2)?,
        published_us: r.get(at + 3)?,
    })
}

fn subscription_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<SubscriptionRecord> {
    Ok(SubscriptionRecord {
        jid: r.get(at)?,
        subid: r.get(at + 1)?,
        state: r.get(at + 2)?,
        options: r.get(at + 3)?,
    })
}

/// The bounds of the JIDs `bare/...` as a byte-order range: `[bare + "/", bare + "0")`
/// ('0' follows '/'), which an index seeks, unlike `LIKE` (whose `%` and `_` could also
/// occur in a JID, and which ignores case).
fn full_jid_range(bare: &str) -> (String, String) {
    (format!("{bare}/"), format!("{bare}0"))
}

/// Deletes every affiliation and subscription held by `bare` or a full JID of it, on every
/// service: part of deleting the account `bare`, in its transaction.
pub(crate) fn forget_jids(conn: &Connection, bare: &str) -> Result<(), StorageError> {
    let (full_lo, full_hi) = full_jid_range(bare);
    for table in ["pubsub_affiliations", "pubsub_subscriptions"] {
        // One range seek on (jid, ...) from the bare JID to the end of its full JIDs; the
        // JIDs between those that are neither (`bare.x`, `bare-x`) are filtered out.
        conn.prepare_cached(&format!(
            "DELETE FROM {table}
             WHERE jid >= ?1 AND jid < ?3 AND (jid = ?1 OR jid >= ?2)"
        ))
        .and_then(|mut s| s.execute(params![bare, full_lo, full_hi]))
        .map_err(backend)?;
    }
    Ok(())
}

/// An owned [`ItemSelection`], to move into the blocking task.
enum Selection {
    Ids(Vec<String>),
    Page {
        after: Option<String>,
        before: Option<String>,
        max: usize,
    },
    Oldest {
        max: usize,
    },
}

const ITEM_COLUMNS: &str = "item_id, publisher, payload, published_us";

fn read_items(
    conn: &Connection,
    svc: &Service,
    node: &str,
    selection: Selection,
) -> Result<ItemPage, StorageError> {
    let Some(n) = find_node(conn, svc, node)? else {
        // An unknown node has no items, so no item to page from either.
        return match selection {
            Selection::Page { after, before, .. } if after.is_some() || before.is_some() => {
                Err(StorageError::NotFound)
            }
            _ => Ok(ItemPage::default()),
        };
    };
    let count = n.item_count;
    match selection {
        Selection::Ids(ids) => {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT seq, {ITEM_COLUMNS} FROM pubsub_items
                     WHERE node_id = ?1 AND item_id = ?2"
                ))
                .map_err(backend)?;
            let mut first_seq = None;
            let mut items = Vec::with_capacity(ids.len());
            for id in &ids {
                let found = stmt
                    .query_row(params![n.id, id], |r| {
                        Ok((r.get::<_, i64>(0)?, item_from_row(r, 1)?))
                    })
                    .optional()
                    .map_err(read_err)?;
                if let Some((seq, item)) = found {
                    first_seq.get_or_insert(seq);
                    items.push(item);
                }
            }
            let first_index = match first_seq {
                Some(seq) => newer_than(conn, n.id, seq)?,
                None => 0,
            };
            Ok(ItemPage {
                items,
                count,
                first_index,
            })
        }
        Selection::Oldest { max } => {
            // The oldest `max` by the (node_id, seq) index, read upwards and returned newest
            // first like every page.
            let mut items = conn
                .prepare_cached(&format!(
                    "SELECT {ITEM_COLUMNS} FROM pubsub_items
                     WHERE node_id = ?1 ORDER BY seq ASC LIMIT ?2"
                ))
                .map_err(backend)?
                .query_map(params![n.id, to_i64(max)], |r| item_from_row(r, 0))
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(read_err)?;
            items.reverse();
            let first_index = count.saturating_sub(items.len());
            Ok(ItemPage {
                items,
                count,
                first_index,
            })
        }
        Selection::Page { after, before, max } => {
            let seq_of = |id: &str| item_seq(conn, n.id, id)?.ok_or(StorageError::NotFound);
            // The page holds items with seq in (lower, upper]: older than `after`, newer
            // than `before`.
            let upper = match &after {
                Some(a) => seq_of(a)?.saturating_sub(1),
                None => i64::MAX,
            };
            let lower = before.as_deref().map(seq_of).transpose()?;
            let limit = to_i64(max);
            match lower {
                None => {
                    let items = conn
                        .prepare_cached(&format!(
                            "SELECT {ITEM_COLUMNS} FROM pubsub_items
                             WHERE node_id = ?1 AND seq <= ?2 ORDER BY seq DESC LIMIT ?3"
                        ))
                        .map_err(backend)?
                        .query_map(params![n.id, upper, limit], |r| item_from_row(r, 0))
                        .map_err(backend)?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(read_err)?;
                    let first_index = match after {
                        // Items newer than the first of the page: `after` and those before it.
                        Some(_) => newer_than(conn, n.id, upper)?,
                        None => 0,
                    };
                    Ok(ItemPage {
                        items,
                        count,
                        first_index,
                    })
                }
                Some(lower) => {
                    // The `max` items just newer than `before`: oldest first from it, then
                    // turned newest first.
                    let mut items = conn
                        .prepare_cached(&format!(
                            "SELECT {ITEM_COLUMNS} FROM pubsub_items
                             WHERE node_id = ?1 AND seq > ?2 AND seq <= ?3
                             ORDER BY seq ASC LIMIT ?4"
                        ))
                        .map_err(backend)?
                        .query_map(params![n.id, lower, upper, limit], |r| item_from_row(r, 0))
                        .map_err(backend)?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(read_err)?;
                    items.reverse();
                    let first_index = newer_than(conn, n.id, lower)?
                        .checked_sub(items.len())
                        .ok_or_else(|| {
                            StorageError::Corrupt("PubSub items counted twice".into())
                        })?;
                    Ok(ItemPage {
                        items,
                        count,
                        first_index,
                    })
                }
            }
        }
    }
}

fn publish(
    conn: &Connection,
    svc: &Service,
    node: &str,
    item: &ItemRecord,
    max_items: usize,
    max_service_items: usize,
) -> Result<Published, StorageError> {
    let n = require_node(conn, svc, node)?;
    let old = item_seq(conn, n.id, &item.id)?;
    let service_count: i64 = conn
        .prepare_cached("SELECT item_count FROM pubsub_services WHERE id = ?1")
        .map_err(backend)?
        .query_row(params![n.service_id], |r| r.get(0))
        .map_err(read_err)?;
    let service_count = count_from(service_count)?;
    let replaced = usize::from(old.is_some());
    // What the node and the service hold once the item is in and the oldest are out.
    let held = n
        .item_count
        .checked_sub(replaced)
        .ok_or_else(|| corrupt_count("node"))?
        + 1;
    let evict = held.saturating_sub(max_items.max(1));
    let service_items = (service_count + 1)
        .checked_sub(replaced + evict)
        .ok_or_else(|| corrupt_count("service"))?;
    if service_items > max_service_items {
        return Err(StorageError::LimitReached(format!(
            "service would hold {service_items} items (limit {max_service_items})"
        )));
    }
    if let Some(seq) = old {
        // Deleted and inserted again rather than updated: the new row gets the next seq,
        // which makes it the newest.
        conn.prepare_cached("DELETE FROM pubsub_items WHERE seq = ?1")
            .and_then(|mut s| s.execute(params![seq]))
            .map_err(backend)?;
    }
    conn.prepare_cached(
        "INSERT INTO pubsub_items (node_id, item_id, publisher, payload, published_us)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| {
        s.execute(params![
            n.id,
            item.id,
            item.publisher,
            item.payload,
            item.published_us
        ])
    })
    .map_err(backend)?;
    let mut evicted = Vec::new();
    if evict > 0 {
        let oldest = conn
            .prepare_cached(
                "SELECT seq, item_id FROM pubsub_items WHERE node_id = ?1
                 ORDER BY seq ASC LIMIT ?2",
            )
            .map_err(backend)?
            .query_map(params![n.id, to_i64(evict)], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(backend)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(read_err)?;
        if let Some((last, _)) = oldest.last() {
            conn.prepare_cached("DELETE FROM pubsub_items WHERE node_id = ?1 AND seq <= ?2")
                .and_then(|mut s| s.execute(params![n.id, last]))
                .map_err(backend)?;
        }
        evicted = oldest.into_iter().map(|(_, id)| id).collect();
    }
    add_items(conn, &n, 1 - to_i64(replaced) - to_i64(evicted.len()))?;
    Ok(Published {
        replaced: old.is_some(),
        evicted,
    })
}

fn create(
    conn: &Connection,
    svc: &Service,
    node: &str,
    config: &str,
    owner: &str,
    max_nodes: usize,
) -> Result<(), StorageError> {
    svc.require_owner(conn)?;
    let existing: Option<i64> = conn
        .prepare_cached("SELECT id FROM pubsub_services WHERE domain = ?1 AND username IS ?2")
        .map_err(backend)?
        .query_row(params![svc.domain, svc.username], |r| r.get(0))
        .optional()
        .map_err(read_err)?;
    let service_id = match existing {
        Some(id) => id,
        // A service's row comes with its first node (and goes with its last); a refused
        // create rolls it back.
        None => {
            conn.prepare_cached("INSERT INTO pubsub_services (domain, username) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(params![svc.domain, svc.username]))
                .map_err(backend)?;
            conn.last_insert_rowid()
        }
    };
    let exists = conn
        .prepare_cached("SELECT 1 FROM pubsub_nodes WHERE service_id = ?1 AND node = ?2")
        .and_then(|mut s| s.exists(params![service_id, node]))
        .map_err(backend)?;
    if exists {
        return Err(StorageError::AlreadyExists);
    }
    // Counting stops at the limit: the check costs at most `max_nodes` index entries.
    let nodes: i64 = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM (SELECT 1 FROM pubsub_nodes WHERE service_id = ?1 LIMIT ?2)",
        )
        .map_err(backend)?
        .query_row(params![service_id, to_i64(max_nodes)], |r| r.get(0))
        .map_err(read_err)?;
    if count_from(nodes)? >= max_nodes {
        return Err(StorageError::LimitReached(format!(
            "service has {max_nodes} nodes (the limit)"
        )));
    }
    conn.prepare_cached("INSERT INTO pubsub_nodes (service_id, node, config) VALUES (?1, ?2, ?3)")
        .and_then(|mut s| s.execute(params![service_id, node, config]))
        .map_err(backend)?;
    let node_id = conn.last_insert_rowid();
    conn.prepare_cached(
        "INSERT INTO pubsub_affiliations (service_id, node_id, jid, affiliation)
         VALUES (?1, ?2, ?3, 'owner')",
    )
    .and_then(|mut s| s.execute(params![service_id, node_id, owner]))
    .map_err(backend)?;
    Ok(())
}

fn delete(conn: &Connection, svc: &Service, node: &str) -> Result<bool, StorageError> {
    svc.require_owner(conn)?;
    let Some(n) = find_node(conn, svc, node)? else {
        return Ok(false);
    };
    // Items, affiliations and subscriptions go with the node (ON DELETE CASCADE).
    conn.prepare_cached("DELETE FROM pubsub_nodes WHERE id = ?1")
        .and_then(|mut s| s.execute(params![n.id]))
        .map_err(backend)?;
    conn.prepare_cached("UPDATE pubsub_services SET item_count = item_count - ?2 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![n.service_id, to_i64(n.item_count)]))
        .map_err(backend)?;
    // A service without nodes is not kept (service domains would otherwise pile up).
    conn.prepare_cached(
        "DELETE FROM pubsub_services WHERE id = ?1
         AND NOT EXISTS (SELECT 1 FROM pubsub_nodes WHERE service_id = ?1)",
    )
    .and_then(|mut s| s.execute(params![n.service_id]))
    .map_err(backend)?;
    Ok(true)
}

fn subscribe(
    conn: &Connection,
    svc: &Service,
    node: &str,
    sub: &SubscriptionRecord,
    max_per_jid: usize,
) -> Result<(), StorageError> {
    let n = require_node(conn, svc, node)?;
    let exists = conn
        .prepare_cached(
            "SELECT 1 FROM pubsub_subscriptions WHERE node_id = ?1 AND jid = ?2 AND subid = ?3",
        )
        .and_then(|mut s| s.exists(params![n.id, sub.jid, sub.subid]))
        .map_err(backend)?;
    if !exists {
        // Bounded by the limit, through the (jid, service_id) index.
        let held: i64 = conn
            .prepare_cached(
                "SELECT COUNT(*) FROM (SELECT 1 FROM pubsub_subscriptions
                                       WHERE jid = ?1 AND service_id = ?2 LIMIT ?3)",
            )
            .map_err(backend)?
            .query_row(params![sub.jid, n.service_id, to_i64(max_per_jid)], |r| {
                r.get(0)
            })
            .map_err(read_err)?;
        if count_from(held)? >= max_per_jid {
            return Err(StorageError::LimitReached(format!(
                "{} holds {max_per_jid} subscriptions on the service (the limit)",
                sub.jid
            )));
        }
    }
    conn.prepare_cached(
        "INSERT INTO pubsub_subscriptions (service_id, node_id, jid, subid, state, options)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (node_id, jid, subid)
             DO UPDATE SET state = excluded.state, options = excluded.options",
    )
    .and_then(|mut s| {
        s.execute(params![
            n.service_id,
            n.id,
            sub.jid,
            sub.subid,
            sub.state,
            sub.options
        ])
    })
    .map_err(backend)?;
    Ok(())
}

#[async_trait::async_trait]
impl PubSubStore for SqlitePubSubStore {
    async fn get_node(
        &self,
        service: PubSubService<'_>,
        node: &str,
    ) -> Result<Option<NodeRecord>, StorageError> {
        let (svc, node) = (Service::of(service), node.to_owned());
        read(&self.conn, move |conn| {
            let config: Option<String> = conn
                .prepare_cached(
                    "SELECT n.config
                     FROM pubsub_services s JOIN pubsub_nodes n ON n.service_id = s.id
                     WHERE s.domain = ?1 AND s.username IS ?2 AND n.node = ?3",
                )
                .map_err(backend)?
                .query_row(params![svc.domain, svc.username, node], |r| r.get(0))
                .optional()
                .map_err(read_err)?;
            Ok(config.map(|config| NodeRecord { node, config }))
        })
        .await
    }

    async fn list_nodes(
        &self,
        service: PubSubService<'_>,
    ) -> Result<Vec<NodeRecord>, StorageError> {
        let svc = Service::of(service);
        run(&self.conn, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT n.node, n.config
                     FROM pubsub_services s JOIN pubsub_nodes n ON n.service_id = s.id
                     WHERE s.domain = ?1 AND s.username IS ?2
                     ORDER BY n.node",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![svc.domain, svc.username], |r| {
                    Ok(NodeRecord {
                        node: r.get(0)?,
                        config: r.get(1)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(read_err)
        })
        .await
    }

    async fn create_node(
        &self,
        service: PubSubService<'_>,
        node: &str,
        config: &str,
        owner: &str,
        max_nodes: usize,
    ) -> Result<(), StorageError> {
        let svc = Service::of(service);
        let (node, config, owner) = (node.to_owned(), config.to_owned(), owner.to_owned());
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            create(&tx, &svc, &node, &config, &owner, max_nodes)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn set_node_config(
        &self,
        service: PubSubService<'_>,
        node: &str,
        config: &str,
    ) -> Result<(), StorageError> {
        let svc = Service::of(service);
        let (node, config) = (node.to_owned(), config.to_owned());
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            let n = require_node(&tx, &svc, &node)?;
            tx.prepare_cached("UPDATE pubsub_nodes SET config = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![n.id, config]))
                .map_err(backend)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn delete_node(
        &self,
        service: PubSubService<'_>,
        node: &str,
    ) -> Result<bool, StorageError> {
        let (svc, node) = (Service::of(service), node.to_owned());
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            let deleted = delete(&tx, &svc, &node)?;
            tx.commit().map_err(backend)?;
            Ok(deleted)
        })
        .await
    }

    async fn publish_item(
        &self,
        service: PubSubService<'_>,
        node: &str,
        item: &ItemRecord,
        max_items: usize,
        max_service_items: usize,
    ) -> Result<Published, StorageError> {
        let (svc, node, item) = (Service::of(service), node.to_owned(), item.clone());
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            let published = publish(&tx, &svc, &node, &item, max_items, max_service_items)?;
            tx.commit().map_err(backend)?;
            Ok(published)
        })
        .await
    }

    async fn get_items(
        &self,
        service: PubSubService<'_>,
        node: &str,
        selection: ItemSelection<'_>,
    ) -> Result<ItemPage, StorageError> {
        let (svc, node) = (Service::of(service), node.to_owned());
        let selection = match selection {
            ItemSelection::Ids(ids) => Selection::Ids(ids.to_vec()),
            ItemSelection::Page { after, before, max } => Selection::Page {
                after: after.map(str::to_owned),
                before: before.map(str::to_owned),
                max,
            },
            ItemSelection::Oldest { max } => Selection::Oldest { max },
        };
        run(&self.conn, move |conn| {
            let tx = read_tx(conn)?;
            read_items(&tx, &svc, &node, selection)
        })
        .await
    }

    async fn retract_item(
        &self,
        service: PubSubService<'_>,
        node: &str,
        id: &str,
    ) -> Result<bool, StorageError> {
        let (svc, node, id) = (Service::of(service), node.to_owned(), id.to_owned());
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            svc.require_owner(&tx)?;
            let Some(n) = find_node(&tx, &svc, &node)? else {
                return Ok(false);
            };
            let removed = tx
                .prepare_cached("DELETE FROM pubsub_items WHERE node_id = ?1 AND item_id = ?2")
                .and_then(|mut s| s.execute(params![n.id, id]))
                .map_err(backend)?;
            add_items(&tx, &n, -to_i64(removed))?;
            tx.commit().map_err(backend)?;
            Ok(removed > 0)
        })
        .await
    }

    async fn purge_node(
        &self,
        service: PubSubService<'_>,
        node: &str,
    ) -> Result<usize, StorageError> {
        let (svc, node) = (Service::of(service), node.to_owned());
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            svc.require_owner(&tx)?;
            let Some(n) = find_node(&tx, &svc, &node)? else {
                return Ok(0);
            };
            let purged = tx
                .prepare_cached("DELETE FROM pubsub_items WHERE node_id = ?1")
                .and_then(|mut s| s.execute(params![n.id]))
                .map_err(backend)?;
            add_items(&tx, &n, -to_i64(purged))?;
            tx.commit().map_err(backend)?;
            Ok(purged)
        })
        .await
    }

    async fn set_affiliation(
        &self,
        service: PubSubService<'_>,
        node: &str,
        jid: &str,
        affiliation: Option<&str>,
    ) -> Result<(), StorageError> {
        let svc = Service::of(service);
        let (node, jid, affiliation) = (
            node.to_owned(),
            jid.to_owned(),
            affiliation.map(str::to_owned),
        );
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            let n = require_node(&tx, &svc, &node)?;
            match affiliation {
                Some(a) => tx
                    .prepare_cached(
                        "INSERT INTO pubsub_affiliations (service_id, node_id, jid, affiliation)
                         VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (node_id, jid) DO UPDATE SET affiliation = excluded.affiliation",
                    )
                    .and_then(|mut s| s.execute(params![n.service_id, n.id, jid, a])),
                None => tx
                    .prepare_cached("DELETE FROM pubsub_affiliations WHERE node_id = ?1 AND jid = ?2")
                    .and_then(|mut s| s.execute(params![n.id, jid])),
            }
            .map_err(backend)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn affiliations(
        &self,
        service: PubSubService<'_>,
        node: &str,
    ) -> Result<Vec<(String, String)>, StorageError> {
        let (svc, node) = (Service::of(service), node.to_owned());
        run(&self.conn, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT a.jid, a.affiliation
                     FROM pubsub_services s
                     JOIN pubsub_nodes n ON n.service_id = s.id
                     JOIN pubsub_affiliations a ON a.node_id = n.id
                     WHERE s.domain = ?1 AND s.username IS ?2 AND n.node = ?3
                     ORDER BY a.jid",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![svc.domain, svc.username, node], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(read_err)
        })
        .await
    }

    async fn affiliations_of(
        &self,
        service: PubSubService<'_>,
        jid: &str,
    ) -> Result<Vec<(String, String)>, StorageError> {
        let (svc, jid) = (Service::of(service), jid.to_owned());
        run(&self.conn, move |conn| {
            // One JID's affiliations on one service are few (at most one per node): sorting
            // them by node is cheap.
            let mut stmt = conn
                .prepare_cached(
                    "SELECT n.node, a.affiliation
                     FROM pubsub_services s
                     JOIN pubsub_affiliations a ON a.service_id = s.id
                     JOIN pubsub_nodes n ON n.id = a.node_id
                     WHERE s.domain = ?1 AND s.username IS ?2 AND a.jid = ?3
                     ORDER BY n.node",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![svc.domain, svc.username, jid], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(read_err)
        })
        .await
    }

    async fn set_subscription(
        &self,
        service: PubSubService<'_>,
        node: &str,
        sub: &SubscriptionRecord,
        max_per_jid: usize,
    ) -> Result<(), StorageError> {
        let (svc, node, sub) = (Service::of(service), node.to_owned(), sub.clone());
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            subscribe(&tx, &svc, &node, &sub, max_per_jid)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn remove_subscription(
        &self,
        service: PubSubService<'_>,
        node: &str,
        jid: &str,
        subid: Option<&str>,
    ) -> Result<usize, StorageError> {
        let svc = Service::of(service);
        let (node, jid, subid) = (node.to_owned(), jid.to_owned(), subid.map(str::to_owned));
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            svc.require_owner(&tx)?;
            let Some(n) = find_node(&tx, &svc, &node)? else {
                return Ok(0);
            };
            let removed = match subid {
                Some(subid) => tx
                    .prepare_cached(
                        "DELETE FROM pubsub_subscriptions
                         WHERE node_id = ?1 AND jid = ?2 AND subid = ?3",
                    )
                    .and_then(|mut s| s.execute(params![n.id, jid, subid])),
                None => tx
                    .prepare_cached(
                        "DELETE FROM pubsub_subscriptions WHERE node_id = ?1 AND jid = ?2",
                    )
                    .and_then(|mut s| s.execute(params![n.id, jid])),
            }
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(removed)
        })
        .await
    }

    async fn subscriptions(
        &self,
        service: PubSubService<'_>,
        node: &str,
    ) -> Result<Vec<SubscriptionRecord>, StorageError> {
        let (svc, node) = (Service::of(service), node.to_owned());
        run(&self.conn, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT x.jid, x.subid, x.state, x.options
                     FROM pubsub_services s
                     JOIN pubsub_nodes n ON n.service_id = s.id
                     JOIN pubsub_subscriptions x ON x.node_id = n.id
                     WHERE s.domain = ?1 AND s.username IS ?2 AND n.node = ?3
                     ORDER BY x.jid, x.subid",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![svc.domain, svc.username, node], |r| {
                    subscription_from_row(r, 0)
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(read_err)
        })
        .await
    }

    async fn subscriptions_of(
        &self,
        service: PubSubService<'_>,
        jid: &str,
        include_full: bool,
    ) -> Result<Vec<(String, SubscriptionRecord)>, StorageError> {
        let (svc, jid) = (Service::of(service), jid.to_owned());
        run(&self.conn, move |conn| {
            // A JID's subscriptions on one service are bounded (`max_per_jid`): sorting them
            // is cheap. The subid ties of a bare and a full JID are broken by JID.
            let sql = |which: &str| {
                format!(
                    "SELECT n.node, x.jid, x.subid, x.state, x.options
                     FROM pubsub_services s
                     JOIN pubsub_subscriptions x ON x.service_id = s.id
                     JOIN pubsub_nodes n ON n.id = x.node_id
                     WHERE s.domain = ?1 AND s.username IS ?2 AND {which}
                     ORDER BY n.node, x.subid, x.jid"
                )
            };
            fn node_and_sub(r: &Row<'_>) -> rusqlite::Result<(String, SubscriptionRecord)> {
                Ok((r.get(0)?, subscription_from_row(r, 1)?))
            }
            let rows = if include_full {
                // One range seek from the JID to the end of its full JIDs, as in
                // `forget_jids`.
                let (full_lo, full_hi) = full_jid_range(&jid);
                conn.prepare_cached(&sql(
                    "x.jid >= ?3 AND x.jid < ?5 AND (x.jid = ?3 OR x.jid >= ?4)",
                ))
                .and_then(|mut s| {
                    s.query_map(
                        params![svc.domain, svc.username, jid, full_lo, full_hi],
                        node_and_sub,
                    )?
                    .collect::<Result<Vec<_>, _>>()
                })
            } else {
                conn.prepare_cached(&sql("x.jid = ?3")).and_then(|mut s| {
                    s.query_map(params![svc.domain, svc.username, jid], node_and_sub)?
                        .collect::<Result<Vec<_>, _>>()
                })
            };
            rows.map_err(read_err)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SqliteBackend;

    /// Statements traced on the connection under test (only this test installs this tracer).
    static TRACED: parking_lot::Mutex<Vec<String>> = parking_lot::Mutex::new(Vec::new());

    fn record(sql: &str) {
        TRACED.lock().push(sql.trim_start().to_owned());
    }

    fn traced() -> Vec<String> {
        std::mem::take(&mut *TRACED.lock())
            .into_iter()
            .filter(|s| s.starts_with("SELECT") || s.starts_with("DELETE"))
            .collect()
    }

    fn plan(conn: &Connection, sql: &str) -> Vec<String> {
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("plan")
            .query_map([], |r| r.get(3))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    /// Reading items (pages from either end and from either side of an item, ids, the
    /// count, the first index), publishing with eviction and retracting seek indexes and
    /// never sort: the `(node_id, seq)` index gives items in publication order.
    #[tokio::test]
    async fn item_statements_seek_indexes_and_never_sort() {
        let b = SqliteBackend::open_in_memory().expect("open");
        let s = b.storage();
        s.accounts
            .create_account("example.org", "alice", &[])
            .await
            .expect("create");
        let services = [
            PubSubService::Domain("pubsub.example.org"),
            PubSubService::Account {
                domain: "example.org",
                user: "alice",
            },
        ];
        for svc in services {
            for node in ["a", "b"] {
                s.pubsub
                    .create_node(svc, node, "{}", "alice@example.org", 10)
                    .await
                    .expect("create node");
                for n in 0..200 {
                    let item = ItemRecord {
                        id: format!("{node}-{n}"),
                        publisher: "alice@example.org".into(),
                        payload: "<x/>".into(),
                        published_us: n,
                    };
                    s.pubsub
                        .publish_item(svc, node, &item, 1000, 10_000)
                        .await
                        .expect("publish");
                }
            }
        }
        let svc = services[0];
        b.conn.lock().trace(Some(record));
        TRACED.lock().clear();
        let ids = ["a-3".to_owned(), "a-150".to_owned(), "zzz".to_owned()];
        let selections = [
            ItemSelection::Page {
                after: None,
                before: None,
                max: 10,
            },
            ItemSelection::Page {
                after: Some("a-100"),
                before: None,
                max: 10,
            },
            ItemSelection::Page {
                after: None,
                before: Some("a-100"),
                max: 10,
            },
            ItemSelection::Page {
                after: Some("a-150"),
                before: Some("a-50"),
                max: 10,
            },
            ItemSelection::Ids(&ids),
        ];
        for selection in selections {
            let page = s.pubsub.get_items(svc, "a", selection).await.expect("get");
            assert_eq!(page.count, 200);
        }
        // Publishing into a full node evicts the oldest; republishing replaces.
        for id in ["new", "a-120"] {
            let item = ItemRecord {
                id: id.into(),
                publisher: String::new(),
                payload: String::new(),
                published_us: 0,
            };
            s.pubsub
                .publish_item(svc, "a", &item, 200, 10_000)
                .await
                .expect("publish");
        }
        assert!(s
            .pubsub
            .retract_item(svc, "a", "a-130")
            .await
            .expect("retract"));
        let statements = traced();
        assert!(statements.len() > 15, "{statements:?}");
        b.conn.lock().trace(None);
        let conn = b.conn.lock();
        for sql in statements {
            let plan = plan(&conn, &sql);
            for step in &plan {
                assert!(
                    (step.contains("USING")
                        || step.starts_with("SCALAR SUBQUERY")
                        || step.starts_with("CORRELATED"))
                        && !step.contains("TEMP B-TREE"),
                    "{sql}\n{plan:?}"
                );
            }
        }
    }

    /// Per-JID lookups (quota, a JID's affiliations and subscriptions, account deletion)
    /// seek the `(jid, service_id)` indexes rather than scanning the tables.
    #[test]
    fn jid_statements_seek_indexes() {
        let b = SqliteBackend::open_in_memory().expect("open");
        let conn = b.conn.lock();
        for sql in [
            "SELECT COUNT(*) FROM (SELECT 1 FROM pubsub_subscriptions
                                   WHERE jid = 'bob@x' AND service_id = 1 LIMIT 10)",
            "DELETE FROM pubsub_affiliations
             WHERE jid >= 'bob@x' AND jid < 'bob@x0' AND (jid = 'bob@x' OR jid >= 'bob@x/')",
            "DELETE FROM pubsub_subscriptions
             WHERE jid >= 'bob@x' AND jid < 'bob@x0' AND (jid = 'bob@x' OR jid >= 'bob@x/')",
            "SELECT n.node, a.affiliation
             FROM pubsub_services s
             JOIN pubsub_affiliations a ON a.service_id = s.id
             JOIN pubsub_nodes n ON n.id = a.node_id
             WHERE s.domain = 'pubsub.x' AND s.username IS NULL AND a.jid = 'bob@x'
             ORDER BY n.node",
            "SELECT n.node, x.jid, x.subid, x.state, x.options
             FROM pubsub_services s
             JOIN pubsub_subscriptions x ON x.service_id = s.id
             JOIN pubsub_nodes n ON n.id = x.node_id
             WHERE s.domain = 'x' AND s.username IS 'alice'
               AND x.jid >= 'bob@x' AND x.jid < 'bob@x0' AND (x.jid = 'bob@x' OR x.jid >= 'bob@x/')
             ORDER BY n.node, x.subid, x.jid",
        ] {
            let plan = plan(&conn, sql);
            assert!(
                plan.iter().all(|step| !step.starts_with("SCAN pubsub_")),
                "{sql}\n{plan:?}"
            );
        }
    }
}
