//! PubSub (XEP-0060) nodes, items, affiliations and subscriptions on PostgreSQL (schema:
//! `migrations/0004_pubsub.sql`), for accounts' PEP services and PubSub service domains.
//!
//! Every write locks its service row (and, for an account's service, the account row
//! first: NotFound when the account doesn't exist), so the quotas (`max_nodes`,
//! `max_service_items`, `max_per_jid`) are checked and written by one writer of the service
//! at a time. Node and service item counts are columns kept in the transaction of every
//! change, so an RSM count is one row read. Items are read newest first through the
//! (node_id, seq) index: a page costs the page, not the node.

use deadpool_postgres::GenericClient;
use rookery_storage::{
    ItemPage, ItemRecord, ItemSelection, NodeRecord, PubSubService, PubSubStore, Published,
    StorageError, SubscriptionRecord,
};
use tokio_postgres::{IsolationLevel, Row};

use crate::{count_from, db, execute, get, lock_account, query, query_one, query_opt, to_i64, Db};

/// [`PubSubStore`] on PostgreSQL.
#[derive(Clone)]
pub struct PgPubSubStore {
    pub(crate) db: Db,
}

impl std::fmt::Debug for PgPubSubStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgPubSubStore")
    }
}

/// A locked service row: its id and item count.
struct ServiceRow {
    id: i64,
    item_count: usize,
}

/// Locks the service row for the transaction. An account's service: NotFound when the
/// account doesn't exist. `create`: make the row if it is missing (create_node); otherwise
/// None for a service that has no row (no nodes).
async fn lock_service<C: GenericClient>(
    c: &C,
    svc: PubSubService<'_>,
    create: bool,
) -> Result<Option<ServiceRow>, StorageError> {
    let row = match svc {
        PubSubService::Account { domain, user } => {
            // The account lock serialises every writer of this service, its creation and
            // deletion included.
            let account = lock_account(c, domain, user).await?;
            if create {
                execute(
                    c,
                    "INSERT INTO pubsub_services (account_id) VALUES ($1)
                     ON CONFLICT (account_id) DO NOTHING",
                    &[&account],
                )
                .await?;
            }
            query_opt(
                c,
                "SELECT id, item_count FROM pubsub_services WHERE account_id = $1
                 FOR NO KEY UPDATE",
                &[&account],
            )
            .await?
        }
        PubSubService::Domain(domain) => {
            // A domain service's row may be deleted (its last node deleted) between the
            // insert finding it and the lock: try again, a bounded number of times.
            let mut found = None;
            for _ in 0..3 {
                if create {
                    execute(
                        c,
                        "INSERT INTO pubsub_services (domain) VALUES ($1)
                         ON CONFLICT (domain) DO NOTHING",
                        &[&domain],
                    )
                    .await?;
                }
                found = query_opt(
                    c,
                    "SELECT id, item_count FROM pubsub_services WHERE domain = $1
                     FOR NO KEY UPDATE",
                    &[&domain],
                )
                .await?;
                if found.is_some() || !create {
                    break;
                }
            }
            if create && found.is_none() {
                return Err(StorageError::Backend(
                    "the PubSub service was deleted while being written".into(),
                ));
            }
            found
        }
    };
    row.map(|r| {
        Ok(ServiceRow {
            id: get(&r, 0)?,
            item_count: count_from(get(&r, 1)?)?,
        })
    })
    .transpose()
}

/// The id of a service, no lock (reads).
async fn find_service<C: GenericClient>(
    c: &C,
    svc: PubSubService<'_>,
) -> Result<Option<i64>, StorageError> {
    let row = match svc {
        PubSubService::Account { domain, user } => {
            query_opt(
                c,
                "SELECT s.id FROM accounts a JOIN pubsub_services s ON s.account_id = a.id
                 WHERE a.domain = $1 AND a.username = $2",
                &[&domain, &user],
            )
            .await?
        }
        PubSubService::Domain(domain) => {
            query_opt(
                c,
                "SELECT id FROM pubsub_services WHERE domain = $1",
                &[&domain],
            )
            .await?
        }
    };
    row.map(|r| get(&r, 0)).transpose()
}

struct NodeRow {
    id: i64,
    service_id: i64,
    item_count: usize,
}

async fn find_node<C: GenericClient>(
    c: &C,
    service_id: i64,
    node: &str,
) -> Result<Option<NodeRow>, StorageError> {
    let row = query_opt(
        c,
        "SELECT id, item_count FROM pubsub_nodes WHERE service_id = $1 AND node = $2",
        &[&service_id, &node],
    )
    .await?;
    row.map(|r| {
        Ok(NodeRow {
            id: get(&r, 0)?,
            service_id,
            item_count: count_from(get(&r, 1)?)?,
        })
    })
    .transpose()
}

/// The locked service's node, or NotFound (no service row, no node).
async fn require_node<C: GenericClient>(
    c: &C,
    svc: PubSubService<'_>,
    node: &str,
) -> Result<(ServiceRow, NodeRow), StorageError> {
    let s = lock_service(c, svc, false)
        .await?
        .ok_or(StorageError::NotFound)?;
    let n = find_node(c, s.id, node)
        .await?
        .ok_or(StorageError::NotFound)?;
    Ok((s, n))
}

async fn item_seq<C: GenericClient>(
    c: &C,
    node_id: i64,
    id: &str,
) -> Result<Option<i64>, StorageError> {
    let row = query_opt(
        c,
        "SELECT seq FROM pubsub_items WHERE node_id = $1 AND item_id = $2",
        &[&node_id, &id],
    )
    .await?;
    row.map(|r| get(&r, 0)).transpose()
}

/// Items of the node newer than `seq`.
async fn newer_than<C: GenericClient>(
    c: &C,
    node_id: i64,
    seq: i64,
) -> Result<usize, StorageError> {
    let row = query_one(
        c,
        "SELECT COUNT(*) FROM pubsub_items WHERE node_id = $1 AND seq > $2",
        &[&node_id, &seq],
    )
    .await?;
    count_from(get(&row, 0)?)
}

/// Adds `delta` to the item counts of a node and its service.
async fn add_items<C: GenericClient>(
    c: &C,
    node: &NodeRow,
    delta: i64,
) -> Result<(), StorageError> {
    if delta == 0 {
        return Ok(());
    }
    execute(
        c,
        "UPDATE pubsub_nodes SET item_count = item_count + $2 WHERE id = $1",
        &[&node.id, &delta],
    )
    .await?;
    execute(
        c,
        "UPDATE pubsub_services SET item_count = item_count + $2 WHERE id = $1",
        &[&node.service_id, &delta],
    )
    .await?;
    Ok(())
}

fn corrupt_count(what: &str) -> StorageError {
    StorageError::Corrupt(format!(
        "PubSub item count of the {what} is below its items"
    ))
}

fn item_from_row(r: &Row, at: usize) -> Result<ItemRecord, StorageError> {
    Ok(ItemRecord {
        id: get(r, at)?,
        publisher: get(r, at + 1)?,
        payload: get(r, at + 2)?,
        published_us: get(r, at + 3)?,
    })
}

fn subscription_from_row(r: &Row, at: usize) -> Result<SubscriptionRecord, StorageError> {
    Ok(SubscriptionRecord {
        jid: get(r, at)?,
        subid: get(r, at + 1)?,
        state: get(r, at + 2)?,
        options: get(r, at + 3)?,
    })
}

/// The full JIDs of `bare` are `bare/...`: in byte order, from `bare/` to just before
/// `bare0` ('0' follows '/').
fn full_jid_range(bare: &str) -> (String, String) {
    (format!("{bare}/"), format!("{bare}0"))
}

/// Deletes every affiliation and subscription of `bare` and its full JIDs on every service
/// (account deletion, in its transaction).
pub(crate) async fn forget_jids<C: GenericClient>(c: &C, bare: &str) -> Result<(), StorageError> {
    let (lo, hi) = full_jid_range(bare);
    for table in ["pubsub_affiliations", "pubsub_subscriptions"] {
        execute(
            c,
            &format!("DELETE FROM {table} WHERE jid = $1 OR (jid >= $2 AND jid < $3)"),
            &[&bare, &lo, &hi],
        )
        .await?;
    }
    Ok(())
}

const ITEM_COLUMNS: &str = "item_id, publisher, payload, published_us";

async fn read_items<C: GenericClient>(
    c: &C,
    svc: PubSubService<'_>,
    node: &str,
    selection: ItemSelection<'_>,
) -> Result<ItemPage, StorageError> {
    let n = match find_service(c, svc).await? {
        Some(sid) => find_node(c, sid, node).await?,
        None => None,
    };
    let Some(n) = n else {
        return match selection {
            ItemSelection::Page { after, before, .. } if after.is_some() || before.is_some() => {
                Err(StorageError::NotFound)
            }
            _ => Ok(ItemPage::default()),
        };
    };
    let count = n.item_count;
    match selection {
        ItemSelection::Ids(ids) => {
            let mut first_seq = None;
            let mut items = Vec::with_capacity(ids.len());
            for id in ids {
                let row = query_opt(
                    c,
                    &format!(
                        "SELECT seq, {ITEM_COLUMNS} FROM pubsub_items
                         WHERE node_id = $1 AND item_id = $2"
                    ),
                    &[&n.id, &id],
                )
                .await?;
                if let Some(row) = row {
                    first_seq.get_or_insert(get::<i64>(&row, 0)?);
                    items.push(item_from_row(&row, 1)?);
                }
            }
            let first_index = match first_seq {
                Some(seq) => newer_than(c, n.id, seq).await?,
                None => 0,
            };
            Ok(ItemPage {
                items,
                count,
                first_index,
            })
        }
        ItemSelection::Oldest { max } => {
            let rows = query(
                c,
                &format!(
                    "SELECT {ITEM_COLUMNS} FROM pubsub_items
                     WHERE node_id = $1 ORDER BY seq ASC LIMIT $2"
                ),
                &[&n.id, &to_i64(max)],
            )
            .await?;
            let mut items = rows
                .iter()
                .map(|r| item_from_row(r, 0))
                .collect::<Result<Vec<_>, _>>()?;
            items.reverse();
            let first_index = count.saturating_sub(items.len());
            Ok(ItemPage {
                items,
                count,
                first_index,
            })
        }
        ItemSelection::Page { after, before, max } => {
            let upper = match after {
                Some(a) => item_seq(c, n.id, a)
                    .await?
                    .ok_or(StorageError::NotFound)?
                    .saturating_sub(1),
                None => i64::MAX,
            };
            let lower = match before {
                Some(b) => Some(item_seq(c, n.id, b).await?.ok_or(StorageError::NotFound)?),
                None => None,
            };
            let limit = to_i64(max);
            match lower {
                None => {
                    let rows = query(
                        c,
                        &format!(
                            "SELECT {ITEM_COLUMNS} FROM pubsub_items
                             WHERE node_id = $1 AND seq <= $2 ORDER BY seq DESC LIMIT $3"
                        ),
                        &[&n.id, &upper, &limit],
                    )
                    .await?;
                    let items = rows
                        .iter()
                        .map(|r| item_from_row(r, 0))
                        .collect::<Result<Vec<_>, _>>()?;
                    let first_index = match after {
                        Some(_) => newer_than(c, n.id, upper).await?,
                        None => 0,
                    };
                    Ok(ItemPage {
                        items,
                        count,
                        first_index,
                    })
                }
                Some(lower) => {
                    let rows = query(
                        c,
                        &format!(
                            "SELECT {ITEM_COLUMNS} FROM pubsub_items
                             WHERE node_id = $1 AND seq > $2 AND seq <= $3
                             ORDER BY seq ASC LIMIT $4"
                        ),
                        &[&n.id, &lower, &upper, &limit],
                    )
                    .await?;
                    let mut items = rows
                        .iter()
                        .map(|r| item_from_row(r, 0))
                        .collect::<Result<Vec<_>, _>>()?;
                    items.reverse();
                    let first_index = newer_than(c, n.id, lower)
                        .await?
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

async fn publish<C: GenericClient>(
    c: &C,
    svc: PubSubService<'_>,
    node: &str,
    item: &ItemRecord,
    max_items: usize,
    max_service_items: usize,
) -> Result<Published, StorageError> {
    let (s, n) = require_node(c, svc, node).await?;
    let old = item_seq(c, n.id, &item.id).await?;
    let replaced = usize::from(old.is_some());
    let held = n
        .item_count
        .checked_sub(replaced)
        .ok_or_else(|| corrupt_count("node"))?
        + 1;
    let evict = held.saturating_sub(max_items.max(1));
    let service_items = (s.item_count + 1)
        .checked_sub(replaced + evict)
        .ok_or_else(|| corrupt_count("service"))?;
    if service_items > max_service_items {
        return Err(StorageError::LimitReached(format!(
            "service would hold {service_items} items (limit {max_service_items})"
        )));
    }
    if let Some(seq) = old {
        execute(c, "DELETE FROM pubsub_items WHERE seq = $1", &[&seq]).await?;
    }
    execute(
        c,
        "INSERT INTO pubsub_items (node_id, item_id, publisher, payload, published_us)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &n.id,
            &item.id,
            &item.publisher,
            &item.payload,
            &item.published_us,
        ],
    )
    .await?;
    let mut evicted = Vec::new();
    if evict > 0 {
        let rows = query(
            c,
            "DELETE FROM pubsub_items WHERE seq = ANY(ARRAY(
                 SELECT seq FROM pubsub_items WHERE node_id = $1 ORDER BY seq ASC LIMIT $2))
             RETURNING seq, item_id",
            &[&n.id, &to_i64(evict)],
        )
        .await?;
        let mut gone = rows
            .iter()
            .map(|r| Ok((get::<i64>(r, 0)?, get::<String>(r, 1)?)))
            .collect::<Result<Vec<_>, StorageError>>()?;
        gone.sort();
        evicted = gone.into_iter().map(|(_, id)| id).collect();
    }
    add_items(c, &n, 1 - to_i64(replaced) - to_i64(evicted.len())).await?;
    Ok(Published {
        replaced: old.is_some(),
        evicted,
    })
}

async fn create<C: GenericClient>(
    c: &C,
    svc: PubSubService<'_>,
    node: &str,
    config: &str,
    owner: &str,
    max_nodes: usize,
) -> Result<(), StorageError> {
    let s = lock_service(c, svc, true)
        .await?
        .ok_or(StorageError::NotFound)?;
    if find_node(c, s.id, node).await?.is_some() {
        return Err(StorageError::AlreadyExists);
    }
    let row = query_one(
        c,
        "SELECT COUNT(*) FROM (SELECT 1 FROM pubsub_nodes WHERE service_id = $1 LIMIT $2) AS n",
        &[&s.id, &to_i64(max_nodes)],
    )
    .await?;
    if count_from(get(&row, 0)?)? >= max_nodes {
        return Err(StorageError::LimitReached(format!(
            "service has {max_nodes} nodes (the limit)"
        )));
    }
    let row = query_one(
        c,
        "INSERT INTO pubsub_nodes (service_id, node, config) VALUES ($1, $2, $3) RETURNING id",
        &[&s.id, &node, &config],
    )
    .await?;
    let node_id: i64 = get(&row, 0)?;
    execute(
        c,
        "INSERT INTO pubsub_affiliations (node_id, jid, affiliation) VALUES ($1, $2, 'owner')",
        &[&node_id, &owner],
    )
    .await?;
    Ok(())
}

async fn delete<C: GenericClient>(
    c: &C,
    svc: PubSubService<'_>,
    node: &str,
) -> Result<bool, StorageError> {
    let Some(s) = lock_service(c, svc, false).await? else {
        return Ok(false);
    };
    let Some(n) = find_node(c, s.id, node).await? else {
        return Ok(false);
    };
    // Its items, affiliations and subscriptions go with it (ON DELETE CASCADE).
    execute(c, "DELETE FROM pubsub_nodes WHERE id = $1", &[&n.id]).await?;
    execute(
        c,
        "UPDATE pubsub_services SET item_count = item_count - $2 WHERE id = $1",
        &[&s.id, &to_i64(n.item_count)],
    )
    .await?;
    // A service without nodes keeps no row.
    execute(
        c,
        "DELETE FROM pubsub_services WHERE id = $1
         AND NOT EXISTS (SELECT 1 FROM pubsub_nodes WHERE service_id = $1)",
        &[&s.id],
    )
    .await?;
    Ok(true)
}

async fn subscribe<C: GenericClient>(
    c: &C,
    svc: PubSubService<'_>,
    node: &str,
    sub: &SubscriptionRecord,
    max_per_jid: usize,
) -> Result<(), StorageError> {
    let (s, n) = require_node(c, svc, node).await?;
    let exists = query_opt(
        c,
        "SELECT 1 FROM pubsub_subscriptions WHERE node_id = $1 AND jid = $2 AND subid = $3",
        &[&n.id, &sub.jid, &sub.subid],
    )
    .await?
    .is_some();
    if !exists {
        // Counting stops at the quota: bounded by it, not by the service.
        let row = query_one(
            c,
            "SELECT COUNT(*) FROM (
                 SELECT 1 FROM pubsub_subscriptions x JOIN pubsub_nodes n ON n.id = x.node_id
                 WHERE x.jid = $1 AND n.service_id = $2 LIMIT $3) AS held",
            &[&sub.jid, &s.id, &to_i64(max_per_jid)],
        )
        .await?;
        if count_from(get(&row, 0)?)? >= max_per_jid {
            return Err(StorageError::LimitReached(format!(
                "{} holds {max_per_jid} subscriptions on the service (the limit)",
                sub.jid
            )));
        }
    }
    execute(
        c,
        "INSERT INTO pubsub_subscriptions (node_id, jid, subid, state, options)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (node_id, jid, subid)
             DO UPDATE SET state = excluded.state, options = excluded.options",
        &[&n.id, &sub.jid, &sub.subid, &sub.state, &sub.options],
    )
    .await?;
    Ok(())
}

#[async_trait::async_trait]
impl PubSubStore for PgPubSubStore {
    async fn get_node(
        &self,
        service: PubSubService<'_>,
        node: &str,
    ) -> Result<Option<NodeRecord>, StorageError> {
        let conn = self.db.conn().await?;
        let Some(sid) = find_service(&conn, service).await? else {
            return Ok(None);
        };
        let row = query_opt(
            &conn,
            "SELECT config FROM pubsub_nodes WHERE service_id = $1 AND node = $2",
            &[&sid, &node],
        )
        .await?;
        row.map(|r| {
            Ok(NodeRecord {
                node: node.to_owned(),
                config: get(&r, 0)?,
            })
        })
        .transpose()
    }

    async fn list_nodes(
        &self,
        service: PubSubService<'_>,
    ) -> Result<Vec<NodeRecord>, StorageError> {
        let conn = self.db.conn().await?;
        let Some(sid) = find_service(&conn, service).await? else {
            return Ok(Vec::new());
        };
        let rows = query(
            &conn,
            "SELECT node, config FROM pubsub_nodes WHERE service_id = $1 ORDER BY node",
            &[&sid],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(NodeRecord {
                    node: get(r, 0)?,
                    config: get(r, 1)?,
                })
            })
            .collect()
    }

    async fn create_node(
        &self,
        service: PubSubService<'_>,
        node: &str,
        config: &str,
        owner: &str,
        max_nodes: usize,
    ) -> Result<(), StorageError> {
        let mut conn = self.db.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        create(&tx, service, node, config, owner, max_nodes).await?;
        tx.commit().await.map_err(db)
    }

    async fn set_node_config(
        &self,
        service: PubSubService<'_>,
        node: &str,
        config: &str,
    ) -> Result<(), StorageError> {
        let mut conn = self.db.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let (_, n) = require_node(&tx, service, node).await?;
        execute(
            &tx,
            "UPDATE pubsub_nodes SET config = $2 WHERE id = $1",
            &[&n.id, &config],
        )
        .await?;
        tx.commit().await.map_err(db)
    }

    async fn delete_node(
        &self,
        service: PubSubService<'_>,
        node: &str,
    ) -> Result<bool, StorageError> {
        let mut conn = self.db.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let deleted = delete(&tx, service, node).await?;
        tx.commit().await.map_err(db)?;
        Ok(deleted)
    }

    async fn publish_item(
        &self,
        service: PubSubService<'_>,
        node: &str,
        item: &ItemRecord,
        max_items: usize,
        max_service_items: usize,
    ) -> Result<Published, StorageError> {
        let mut conn = self.db.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let published = publish(&tx, service, node, item, max_items, max_service_items).await?;
        tx.commit().await.map_err(db)?;
        Ok(published)
    }

    async fn get_items(
        &self,
        service: PubSubService<'_>,
        node: &str,
        selection: ItemSelection<'_>,
    ) -> Result<ItemPage, StorageError> {
        let mut conn = self.db.conn().await?;
        let tx = conn
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db)?;
        let page = read_items(&tx, service, node, selection).await?;
        tx.commit().await.map_err(db)?;
        Ok(page)
    }

    async fn retract_item(
        &self,
        service: PubSubService<'_>,
        node: &str,
        id: &str,
    ) -> Result<bool, StorageError> {
        let mut conn = self.db.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let Some(s) = lock_service(&tx, service, false).await? else {
            return Ok(false);
        };
        let Some(n) = find_node(&tx, s.id, node).await? else {
            return Ok(false);
        };
        let removed = execute(
            &tx,
            "DELETE FROM pubsub_items WHERE node_id = $1 AND item_id = $2",
            &[&n.id, &id],
        )
        .await?;
        add_items(&tx, &n, -i64::try_from(removed).unwrap_or(0)).await?;
        tx.commit().await.map_err(db)?;
        Ok(removed > 0)
    }

    async fn purge_node(
        &self,
        service: PubSubService<'_>,
        node: &str,
    ) -> Result<usize, StorageError> {
        let mut conn = self.db.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let Some(s) = lock_service(&tx, service, false).await? else {
            return Ok(0);
        };
        let Some(n) = find_node(&tx, s.id, node).await? else {
            return Ok(0);
        };
        let purged = execute(&tx, "DELETE FROM pubsub_items WHERE node_id = $1", &[&n.id]).await?;
        let purged = i64::try_from(purged).unwrap_or(i64::MAX);
        add_items(&tx, &n, -purged).await?;
        tx.commit().await.map_err(db)?;
        count_from(purged)
    }

    async fn set_affiliation(
        &self,
        service: PubSubService<'_>,
        node: &str,
        jid: &str,
        affiliation: Option<&str>,
    ) -> Result<(), StorageError> {
        let mut conn = self.db.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let (_, n) = require_node(&tx, service, node).await?;
        match affiliation {
            Some(a) => execute(
                &tx,
                "INSERT INTO pubsub_affiliations (node_id, jid, affiliation) VALUES ($1, $2, $3)
                     ON CONFLICT (node_id, jid) DO UPDATE SET affiliation = excluded.affiliation",
                &[&n.id, &jid, &a],
            )
            .await?,
            None => {
                execute(
                    &tx,
                    "DELETE FROM pubsub_affiliations WHERE node_id = $1 AND jid = $2",
                    &[&n.id, &jid],
                )
                .await?
            }
        };
        tx.commit().await.map_err(db)
    }

    async fn affiliations(
        &self,
        service: PubSubService<'_>,
        node: &str,
    ) -> Result<Vec<(String, String)>, StorageError> {
        let conn = self.db.conn().await?;
        let Some(sid) = find_service(&conn, service).await? else {
            return Ok(Vec::new());
        };
        let rows = query(
            &conn,
            "SELECT x.jid, x.affiliation
             FROM pubsub_nodes n JOIN pubsub_affiliations x ON x.node_id = n.id
             WHERE n.service_id = $1 AND n.node = $2 ORDER BY x.jid",
            &[&sid, &node],
        )
        .await?;
        rows.iter().map(|r| Ok((get(r, 0)?, get(r, 1)?))).collect()
    }

    async fn affiliations_of(
        &self,
        service: PubSubService<'_>,
        jid: &str,
    ) -> Result<Vec<(String, String)>, StorageError> {
        let conn = self.db.conn().await?;
        let Some(sid) = find_service(&conn, service).await? else {
            return Ok(Vec::new());
        };
        let rows = query(
            &conn,
            "SELECT n.node, x.affiliation
             FROM pubsub_affiliations x JOIN pubsub_nodes n ON n.id = x.node_id
             WHERE x.jid = $1 AND n.service_id = $2 ORDER BY n.node",
            &[&jid, &sid],
        )
        .await?;
        rows.iter().map(|r| Ok((get(r, 0)?, get(r, 1)?))).collect()
    }

    async fn set_subscription(
        &self,
        service: PubSubService<'_>,
        node: &str,
        sub: &SubscriptionRecord,
        max_per_jid: usize,
    ) -> Result<(), StorageError> {
        let mut conn = self.db.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        subscribe(&tx, service, node, sub, max_per_jid).await?;
        tx.commit().await.map_err(db)
    }

    async fn remove_subscription(
        &self,
        service: PubSubService<'_>,
        node: &str,
        jid: &str,
        subid: Option<&str>,
    ) -> Result<usize, StorageError> {
        let mut conn = self.db.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let Some(s) = lock_service(&tx, service, false).await? else {
            return Ok(0);
        };
        let Some(n) = find_node(&tx, s.id, node).await? else {
            return Ok(0);
        };
        let removed = match subid {
            Some(subid) => {
                execute(
                    &tx,
                    "DELETE FROM pubsub_subscriptions
                     WHERE node_id = $1 AND jid = $2 AND subid = $3",
                    &[&n.id, &jid, &subid],
                )
                .await?
            }
            None => {
                execute(
                    &tx,
                    "DELETE FROM pubsub_subscriptions WHERE node_id = $1 AND jid = $2",
                    &[&n.id, &jid],
                )
                .await?
            }
        };
        tx.commit().await.map_err(db)?;
        count_from(i64::try_from(removed).unwrap_or(i64::MAX))
    }

    async fn subscriptions(
        &self,
        service: PubSubService<'_>,
        node: &str,
    ) -> Result<Vec<SubscriptionRecord>, StorageError> {
        let conn = self.db.conn().await?;
        let Some(sid) = find_service(&conn, service).await? else {
            return Ok(Vec::new());
        };
        let rows = query(
            &conn,
            "SELECT x.jid, x.subid, x.state, x.options
             FROM pubsub_nodes n JOIN pubsub_subscriptions x ON x.node_id = n.id
             WHERE n.service_id = $1 AND n.node = $2 ORDER BY x.jid, x.subid",
            &[&sid, &node],
        )
        .await?;
        rows.iter().map(|r| subscription_from_row(r, 0)).collect()
    }

    async fn subscriptions_of(
        &self,
        service: PubSubService<'_>,
        jid: &str,
        include_full: bool,
    ) -> Result<Vec<(String, SubscriptionRecord)>, StorageError> {
        let conn = self.db.conn().await?;
        let Some(sid) = find_service(&conn, service).await? else {
            return Ok(Vec::new());
        };
        let sql = |which: &str| {
            format!(
                "SELECT n.node, x.jid, x.subid, x.state, x.options
                 FROM pubsub_subscriptions x JOIN pubsub_nodes n ON n.id = x.node_id
                 WHERE n.service_id = $1 AND {which}
                 ORDER BY n.node, x.subid, x.jid"
            )
        };
        let rows = if include_full {
            let (lo, hi) = full_jid_range(jid);
            query(
                &conn,
                &sql("(x.jid = $2 OR (x.jid >= $3 AND x.jid < $4))"),
                &[&sid, &jid, &lo, &hi],
            )
            .await?
        } else {
            query(&conn, &sql("x.jid = $2"), &[&sid, &jid]).await?
        };
        rows.iter()
            .map(|r| Ok((get(r, 0)?, subscription_from_row(r, 1)?)))
            .collect()
    }
}
