//! Backend conformance suite (ejabberd-style): every backend runs these checks in its
//! tests, so all backends behave identically.
//!
//! [`account_store`] checks one [`AccountStore`]; [`roster_store`], [`offline_store`],
//! [`user_data_store`], [`archive_store`], [`room_store`], [`room_archive_store`],
//! [`pubsub_store`], [`upload_store`] and [`account_deletion`] check the stores of a whole [`Storage`]
//! bundle (they create their accounts through `storage.accounts`); [`all`] runs
//! everything.
//!
//! Each function expects an **empty** store (no accounts), leaves it empty again, and
//! panics (via `assert!`) on the first deviation from the contract documented on the
//! traits.

use std::collections::BTreeSet;

use crate::{
    AccountStore, ArchiveEntry, ArchiveFilter, ArchivePage, ArchiveQuery, HashAlg, ItemPage,
    ItemRecord, ItemSelection, NodeRecord, PageRequest, PubSubService, Published, Roster,
    RosterItem, ScramCredentials, Storage, StorageError, Subscription, SubscriptionRecord,
    WithFilter,
};

/// A structurally valid record whose bytes are derived from `seed` (no PBKDF2: fast).
pub fn sample_credentials(hash: HashAlg, seed: u8) -> ScramCredentials {
    let len = hash.output_len();
    ScramCredentials {
        hash,
        salt: (0..16).map(|i| seed.wrapping_add(i)).collect(),
        iterations: 4096 + u32::from(seed),
        stored_key: (0..len).map(|i| seed ^ (i as u8)).collect(),
        server_key: (0..len).map(|i| seed.wrapping_mul(3) ^ (i as u8)).collect(),
    }
}

/// One record per hash in [`HashAlg::ALL`].
pub fn sample_all(seed: u8) -> Vec<ScramCredentials> {
    HashAlg::ALL
        .into_iter()
        .map(|h| sample_credentials(h, seed))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(u, d)| ((*u).to_owned(), (*d).to_owned()))
        .collect()
}

/// The whole [`AccountStore`] contract.
pub async fn account_store(store: &dyn AccountStore) {
    unknown_accounts(store).await;
    create_and_get(store).await;
    duplicate_create(store).await;
    set_credentials(store).await;
    invalid_records(store).await;
    delete(store).await;
    list(store).await;
    concurrent_create(store).await;
}

async fn unknown_accounts(s: &dyn AccountStore) {
    assert!(
        s.list_accounts(None).await.expect("list").is_empty(),
        "store must start empty"
    );
    assert!(!s
        .account_exists("example.org", "ghost")
        .await
        .expect("exists"));
    for h in HashAlg::ALL {
        assert_eq!(
            s.get_credentials("example.org", "ghost", h)
                .await
                .expect("get"),
            None
        );
    }
    assert!(!s
        .delete_account("example.org", "ghost")
        .await
        .expect("delete"));
    assert!(matches!(
        s.set_credentials("example.org", "ghost", &sample_all(1))
            .await,
        Err(StorageError::NotFound)
    ));
    assert!(!s
        .account_exists("example.org", "ghost")
        .await
        .expect("exists"));
}

async fn create_and_get(s: &dyn AccountStore) {
    let creds = sample_all(10);
    s.create_account("example.org", "alice", &creds)
        .await
        .expect("create");
    assert!(s
        .account_exists("example.org", "alice")
        .await
        .expect("exists"));
    for c in &creds {
        assert_eq!(
            s.get_credentials("example.org", "alice", c.hash)
                .await
                .expect("get")
                .as_ref(),
            Some(c),
            "record for {} must round-trip exactly",
            c.hash
        );
    }
    // Byte-exact names: other case, other domain, prefixes are different accounts.
    for (d, u) in [
        ("example.org", "Alice"),
        ("Example.org", "alice"),
        ("example.net", "alice"),
        ("example.org", "alic"),
        ("example.org", "alice "),
    ] {
        assert!(!s.account_exists(d, u).await.expect("exists"), "{u}@{d}");
        assert_eq!(
            s.get_credentials(d, u, HashAlg::Sha256).await.expect("get"),
            None
        );
    }
    // Only some hashes: the others are absent.
    s.create_account(
        "example.org",
        "bob",
        &[sample_credentials(HashAlg::Sha256, 20)],
    )
    .await
    .expect("create");
    assert_eq!(
        s.get_credentials("example.org", "bob", HashAlg::Sha256)
            .await
            .expect("get"),
        Some(sample_credentials(HashAlg::Sha256, 20))
    );
    assert_eq!(
        s.get_credentials("example.org", "bob", HashAlg::Sha1)
            .await
            .expect("get"),
        None
    );
    // No records at all (e.g. an account to be given a password later).
    s.create_account("example.org", "carol", &[])
        .await
        .expect("create without credentials");
    assert!(s
        .account_exists("example.org", "carol")
        .await
        .expect("exists"));
    assert_eq!(
        s.get_credentials("example.org", "carol", HashAlg::Sha512)
            .await
            .expect("get"),
        None
    );
    // Non-ASCII names are stored as given.
    let uname = "d\u{e9}j\u{e0}-vu\u{2603}";
    s.create_account("\u{fc}ber.example", uname, &sample_all(30))
        .await
        .expect("create unicode");
    assert!(s
        .account_exists("\u{fc}ber.example", uname)
        .await
        .expect("exists"));

    for (d, u) in [
        ("example.org", "alice"),
        ("example.org", "bob"),
        ("example.org", "carol"),
        ("\u{fc}ber.example", uname),
    ] {
        assert!(s.delete_account(d, u).await.expect("cleanup"));
    }
}

async fn duplicate_create(s: &dyn AccountStore) {
    s.create_account("example.org", "alice", &sample_all(1))
        .await
        .expect("create");
    assert!(matches!(
        s.create_account("example.org", "alice", &sample_all(2))
            .await,
        Err(StorageError::AlreadyExists)
    ));
    // The failed create changed nothing.
    assert_eq!(
        s.get_credentials("example.org", "alice", HashAlg::Sha1)
            .await
            .expect("get"),
        Some(sample_credentials(HashAlg::Sha1, 1))
    );
    // Same username on another domain is a different account.
    s.create_account("example.net", "alice", &sample_all(3))
        .await
        .expect("same user, other domain");
    assert_eq!(
        s.get_credentials("example.net", "alice", HashAlg::Sha1)
            .await
            .expect("get"),
        Some(sample_credentials(HashAlg::Sha1, 3))
    );
    assert_eq!(
        s.get_credentials("example.org", "alice", HashAlg::Sha1)
            .await
            .expect("get"),
        Some(sample_credentials(HashAlg::Sha1, 1))
    );
    assert!(s
        .delete_account("example.org", "alice")
        .await
        .expect("cleanup"));
    assert!(s
        .delete_account("example.net", "alice")
        .await
        .expect("cleanup"));
}

async fn set_credentials(s: &dyn AccountStore) {
    s.create_account("example.org", "alice", &sample_all(1))
        .await
        .expect("create");
    s.create_account("example.org", "bob", &sample_all(1))
        .await
        .expect("create");
    // Replace all: a full new set.
    s.set_credentials("example.org", "alice", &sample_all(5))
        .await
        .expect("set");
    for h in HashAlg::ALL {
        assert_eq!(
            s.get_credentials("example.org", "alice", h)
                .await
                .expect("get"),
            Some(sample_credentials(h, 5))
        );
    }
    // Replace all with a subset: the other records are gone.
    s.set_credentials(
        "example.org",
        "alice",
        &[sample_credentials(HashAlg::Sha512, 6)],
    )
    .await
    .expect("set subset");
    assert_eq!(
        s.get_credentials("example.org", "alice", HashAlg::Sha512)
            .await
            .expect("get"),
        Some(sample_credentials(HashAlg::Sha512, 6))
    );
    for h in [HashAlg::Sha1, HashAlg::Sha256] {
        assert_eq!(
            s.get_credentials("example.org", "alice", h)
                .await
                .expect("get"),
            None,
            "{h} must have been removed"
        );
    }
    // Replace with nothing: the account stays.
    s.set_credentials("example.org", "alice", &[])
        .await
        .expect("set empty");
    assert!(s
        .account_exists("example.org", "alice")
        .await
        .expect("exists"));
    assert_eq!(
        s.get_credentials("example.org", "alice", HashAlg::Sha512)
            .await
            .expect("get"),
        None
    );
    // Other accounts are untouched.
    assert_eq!(
        s.get_credentials("example.org", "bob", HashAlg::Sha256)
            .await
            .expect("get"),
        Some(sample_credentials(HashAlg::Sha256, 1))
    );
    // Unknown account on an otherwise populated store.
    assert!(matches!(
        s.set_credentials("example.org", "alicia", &sample_all(1))
            .await,
        Err(StorageError::NotFound)
    ));
    assert!(!s
        .account_exists("example.org", "alicia")
        .await
        .expect("exists"));
    assert!(s
        .delete_account("example.org", "alice")
        .await
        .expect("cleanup"));
    assert!(s
        .delete_account("example.org", "bob")
        .await
        .expect("cleanup"));
}

async fn invalid_records(s: &dyn AccountStore) {
    let mut short = sample_credentials(HashAlg::Sha256, 1);
    short.stored_key.truncate(20);
    let twice = [
        sample_credentials(HashAlg::Sha1, 1),
        sample_credentials(HashAlg::Sha1, 2),
    ];
    assert!(s
        .create_account("example.org", "eve", std::slice::from_ref(&short))
        .await
        .is_err());
    assert!(s
        .create_account("example.org", "eve", &twice)
        .await
        .is_err());
    assert!(
        !s.account_exists("example.org", "eve")
            .await
            .expect("exists"),
        "a refused create must not leave an account behind"
    );
    s.create_account("example.org", "eve", &sample_all(1))
        .await
        .expect("create");
    assert!(s
        .set_credentials("example.org", "eve", std::slice::from_ref(&short))
        .await
        .is_err());
    assert!(s
        .set_credentials("example.org", "eve", &twice)
        .await
        .is_err());
    assert_eq!(
        s.get_credentials("example.org", "eve", HashAlg::Sha256)
            .await
            .expect("get"),
        Some(sample_credentials(HashAlg::Sha256, 1)),
        "a refused set must not change the records"
    );
    assert!(s
        .delete_account("example.org", "eve")
        .await
        .expect("cleanup"));
}

async fn delete(s: &dyn AccountStore) {
    s.create_account("example.org", "alice", &sample_all(1))
        .await
        .expect("create");
    s.create_account("example.org", "bob", &sample_all(2))
        .await
        .expect("create");
    assert!(s
        .delete_account("example.org", "alice")
        .await
        .expect("delete"));
    assert!(!s
        .delete_account("example.org", "alice")
        .await
        .expect("again"));
    assert!(!s
        .account_exists("example.org", "alice")
        .await
        .expect("exists"));
    for h in HashAlg::ALL {
        assert_eq!(
            s.get_credentials("example.org", "alice", h)
                .await
                .expect("get"),
            None
        );
    }
    assert!(s
        .account_exists("example.org", "bob")
        .await
        .expect("bob kept"));
    // Re-creating gives a fresh account without stale records.
    s.create_account(
        "example.org",
        "alice",
        &[sample_credentials(HashAlg::Sha1, 9)],
    )
    .await
    .expect("re-create");
    assert_eq!(
        s.get_credentials("example.org", "alice", HashAlg::Sha256)
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        s.get_credentials("example.org", "alice", HashAlg::Sha1)
            .await
            .expect("get"),
        Some(sample_credentials(HashAlg::Sha1, 9))
    );
    assert!(s
        .delete_account("example.org", "alice")
        .await
        .expect("cleanup"));
    assert!(s
        .delete_account("example.org", "bob")
        .await
        .expect("cleanup"));
    assert!(s.list_accounts(None).await.expect("list").is_empty());
}

async fn list(s: &dyn AccountStore) {
    // Inserted out of order; "B" < "a" and "example.net" < "example.org" in byte order.
    let accounts = [
        ("zed", "example.org"),
        ("alice", "example.org"),
        ("bob", "example.net"),
        ("B", "example.org"),
        ("alice", "example.net"),
        ("mallory", "a.example"),
    ];
    for (u, d) in accounts {
        s.create_account(d, u, &sample_all(1))
            .await
            .expect("create");
    }
    assert_eq!(
        s.list_accounts(None).await.expect("list"),
        pairs(&[
            ("mallory", "a.example"),
            ("alice", "example.net"),
            ("bob", "example.net"),
            ("B", "example.org"),
            ("alice", "example.org"),
            ("zed", "example.org"),
        ])
    );
    assert_eq!(
        s.list_accounts(Some("example.org")).await.expect("list"),
        pairs(&[
            ("B", "example.org"),
            ("alice", "example.org"),
            ("zed", "example.org")
        ])
    );
    assert_eq!(
        s.list_accounts(Some("example.net")).await.expect("list"),
        pairs(&[("alice", "example.net"), ("bob", "example.net")])
    );
    assert!(s
        .list_accounts(Some("nowhere.example"))
        .await
        .expect("list")
        .is_empty());
    assert!(
        s.list_accounts(Some("example"))
            .await
            .expect("list")
            .is_empty(),
        "domain filter is exact, not a prefix"
    );
    assert!(s.delete_account("example.org", "B").await.expect("delete"));
    assert_eq!(
        s.list_accounts(Some("example.org")).await.expect("list"),
        pairs(&[("alice", "example.org"), ("zed", "example.org")])
    );
    for (u, d) in accounts {
        let _ = s.delete_account(d, u).await.expect("cleanup");
    }
    assert!(s.list_accounts(None).await.expect("list").is_empty());
}

async fn concurrent_create(s: &dyn AccountStore) {
    let c = sample_all(7);
    let (a, b, d, e) = tokio::join!(
        s.create_account("example.org", "race", &c),
        s.create_account("example.org", "race", &c),
        s.create_account("example.org", "race", &c),
        s.create_account("example.org", "race", &c),
    );
    let results = [a, b, d, e];
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let dup = results
        .iter()
        .filter(|r| matches!(r, Err(StorageError::AlreadyExists)))
        .count();
    assert_eq!((ok, dup), (1, 3), "exactly one concurrent create wins");
    assert!(s
        .delete_account("example.org", "race")
        .await
        .expect("cleanup"));
}

/// Every check of this module, in order, on one bundle.
pub async fn all(storage: &Storage) {
    account_store(storage.accounts.as_ref()).await;
    roster_store(storage).await;
    offline_store(storage).await;
    user_data_store(storage).await;
    archive_store(storage).await;
    account_deletion(storage).await;
    room_store(storage).await;
    room_archive_store(storage).await;
    pubsub_store(storage).await;
    upload_store(storage).await;
    host_data_store(storage).await;
    account_disabling(storage).await;
}

/// The whole [`crate::HostDataStore`] contract: values per (domain, key), replaced on write,
/// deleted by `None`, limited in size, and independent of accounts. Leaves nothing behind.
pub async fn host_data_store(s: &Storage) {
    let h = &s.host_data;
    const OTHER: &str = "example.net";
    assert_eq!(h.get_host_data(D, "motd").await.expect("get"), None);
    // Deleting what is not there is fine.
    h.set_host_data(D, "motd", None, 64)
        .await
        .expect("delete absent");
    h.set_host_data(D, "motd", Some("hello\nworld"), 64)
        .await
        .expect("set");
    h.set_host_data(D, "welcome", Some("hi"), 64)
        .await
        .expect("set other key");
    h.set_host_data(OTHER, "motd", Some("other host"), 64)
        .await
        .expect("set other host");
    assert_eq!(
        h.get_host_data(D, "motd").await.expect("get").as_deref(),
        Some("hello\nworld")
    );
    assert_eq!(
        h.get_host_data(OTHER, "motd")
            .await
            .expect("get")
            .as_deref(),
        Some("other host")
    );
    // Replaced, not appended; the empty string is a value, not a deletion.
    h.set_host_data(D, "motd", Some(""), 64)
        .await
        .expect("replace");
    assert_eq!(
        h.get_host_data(D, "motd").await.expect("get").as_deref(),
        Some("")
    );
    // Over the limit: refused, and the old value stays.
    h.set_host_data(D, "welcome", Some("0123456789"), 9)
        .await
        .expect_err("over the limit");
    assert!(matches!(
        h.set_host_data(D, "welcome", Some("0123456789"), 9).await,
        Err(StorageError::LimitReached(_))
    ));
    h.set_host_data(D, "welcome", Some("0123456789"), 10)
        .await
        .expect("at the limit");
    // Accounts do not own host values: creating and deleting one leaves them.
    create(s, D, "motd").await;
    drop_account(s, D, "motd").await;
    assert_eq!(
        h.get_host_data(D, "welcome").await.expect("get").as_deref(),
        Some("0123456789")
    );
    for (d, k) in [(D, "motd"), (D, "welcome"), (OTHER, "motd")] {
        h.set_host_data(d, k, None, 0).await.expect("delete");
        assert_eq!(h.get_host_data(d, k).await.expect("get"), None);
    }
    assert_no_accounts(s).await;
}

/// [`Storage::set_account_disabled`]: a flag per account, kept apart from other accounts,
/// refused for a missing account, and gone with the account (a new account of the same name
/// starts enabled).
pub async fn account_disabling(s: &Storage) {
    assert_no_accounts(s).await;
    create(s, D, "alice").await;
    create(s, D, "bob").await;
    assert!(!s.account_disabled(D, "alice").await.expect("read"));
    s.set_account_disabled(D, "alice", true)
        .await
        .expect("disable");
    assert!(s.account_disabled(D, "alice").await.expect("read"));
    assert!(!s.account_disabled(D, "bob").await.expect("read"));
    // Idempotent both ways.
    s.set_account_disabled(D, "alice", true)
        .await
        .expect("disable again");
    s.set_account_disabled(D, "alice", false)
        .await
        .expect("enable");
    assert!(!s.account_disabled(D, "alice").await.expect("read"));
    s.set_account_disabled(D, "alice", false)
        .await
        .expect("enable again");
    assert!(matches!(
        s.set_account_disabled(D, "nobody", true).await,
        Err(StorageError::NotFound)
    ));
    assert!(!s.account_disabled(D, "nobody").await.expect("read"));
    s.set_account_disabled(D, "bob", true)
        .await
        .expect("disable");
    drop_account(s, D, "bob").await;
    create(s, D, "bob").await;
    assert!(
        !s.account_disabled(D, "bob").await.expect("read"),
        "the flag went with the deleted account"
    );
    drop_account(s, D, "alice").await;
    drop_account(s, D, "bob").await;
    assert_no_accounts(s).await;
}

/// The whole [`crate::RoomStore`] contract: rooms are per service, listed in room order,
/// limited in size, and independent of accounts. Leaves no room behind.
pub async fn room_store(s: &Storage) {
    let r = &s.rooms;
    const SVC: &str = "conference.example.org";
    const OTHER: &str = "chat.example.net";
    assert_eq!(r.get_room(SVC, "lobby").await.expect("get"), None);
    assert!(r.list_rooms(SVC).await.expect("list").is_empty());
    // Deleting what is not there is fine.
    r.set_room(SVC, "lobby", None, 1024)
        .await
        .expect("delete absent");

    r.set_room(SVC, "lobby", Some("{\"v\":1}"), 1024)
        .await
        .expect("set");
    assert_eq!(
        r.get_room(SVC, "lobby").await.expect("get").as_deref(),
        Some("{\"v\":1}")
    );
    r.set_room(SVC, "lobby", Some("{\"v\":2}"), 1024)
        .await
        .expect("overwrite");
    assert_eq!(
        r.get_room(SVC, "lobby").await.expect("get").as_deref(),
        Some("{\"v\":2}")
    );
    // Documents round-trip whatever they hold.
    let odd = "{\"name\":\"Caf\u{e9} 'quoted' \\\"and\\\" <tags> \u{1F426}\"}";
    r.set_room(SVC, "zebra", Some(odd), 1024)
        .await
        .expect("set");
    r.set_room(SVC, "alpha", Some("{}"), 1024)
        .await
        .expect("set");
    // Another service with the same room name does not mix.
    r.set_room(OTHER, "lobby", Some("{\"other\":true}"), 1024)
        .await
        .expect("set");
    let listed = r.list_rooms(SVC).await.expect("list");
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["alpha", "lobby", "zebra"],
        "sorted by room, one service only"
    );
    assert_eq!(listed[2].1, odd);
    assert_eq!(r.list_rooms(OTHER).await.expect("list").len(), 1);
    assert_eq!(
        r.get_room(OTHER, "lobby").await.expect("get").as_deref(),
        Some("{\"other\":true}")
    );

    // Too large: refused, the old value kept.
    let big = "x".repeat(2048);
    assert!(is_limit(r.set_room(SVC, "lobby", Some(&big), 1024).await));
    assert_eq!(
        r.get_room(SVC, "lobby").await.expect("get").as_deref(),
        Some("{\"v\":2}")
    );

    // Accounts come and go without touching rooms.
    create(s, "example.org", "lobby").await;
    drop_account(s, "example.org", "lobby").await;
    assert_eq!(r.list_rooms(SVC).await.expect("list").len(), 3);

    for (svc, room) in [
        (SVC, "lobby"),
        (SVC, "zebra"),
        (SVC, "alpha"),
        (OTHER, "lobby"),
    ] {
        r.set_room(svc, room, None, 1024).await.expect("delete");
    }
    assert_eq!(r.get_room(SVC, "lobby").await.expect("get"), None);
    assert!(r.list_rooms(SVC).await.expect("list").is_empty());
    assert!(r.list_rooms(OTHER).await.expect("list").is_empty());
}

const D: &str = "example.org";

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

async fn assert_no_accounts(s: &Storage) {
    assert!(
        s.accounts
            .list_accounts(None)
            .await
            .expect("list")
            .is_empty(),
        "the suite expects (and leaves) a store without accounts"
    );
}

async fn create(s: &Storage, domain: &str, user: &str) {
    s.accounts
        .create_account(domain, user, &sample_all(1))
        .await
        .expect("create account");
}

async fn drop_account(s: &Storage, domain: &str, user: &str) {
    assert!(
        s.accounts
            .delete_account(domain, user)
            .await
            .expect("delete account"),
        "{user}@{domain} existed"
    );
}

fn item(jid: &str, groups: &[&str]) -> RosterItem {
    RosterItem {
        groups: strings(groups),
        ..RosterItem::new(jid)
    }
}

fn jids(r: &Roster) -> Vec<&str> {
    r.items.iter().map(|i| i.jid.as_str()).collect()
}

fn is_not_found<T: std::fmt::Debug>(r: Result<T, StorageError>) -> bool {
    matches!(r, Err(StorageError::NotFound))
}

fn is_limit<T: std::fmt::Debug>(r: Result<T, StorageError>) -> bool {
    matches!(r, Err(StorageError::LimitReached(_)))
}

// ---------------------------------------------------------------------------------
// Rosters

/// The whole [`crate::RosterStore`] contract.
pub async fn roster_store(s: &Storage) {
    assert_no_accounts(s).await;
    roster_unknown_account(s).await;
    roster_set_get_replace_remove(s).await;
    roster_groups(s).await;
    roster_max_items(s).await;
    roster_pending_in(s).await;
    roster_concurrent(s).await;
    roster_account_deletion(s).await;
    assert_no_accounts(s).await;
}

async fn roster_unknown_account(s: &Storage) {
    let r = &s.roster;
    assert_eq!(
        r.roster(D, "ghost").await.expect("roster"),
        Roster::default()
    );
    assert_eq!(
        r.roster_item(D, "ghost", "bob@example.net")
            .await
            .expect("item"),
        None
    );
    assert!(is_not_found(
        r.set_roster_item(D, "ghost", &item("bob@example.net", &["G"]), 100)
            .await
    ));
    assert!(is_not_found(
        r.remove_roster_item(D, "ghost", "bob@example.net").await
    ));
    assert!(is_not_found(
        r.add_pending_in(D, "ghost", "bob@example.net", "<presence/>")
            .await
    ));
    assert!(is_not_found(
        r.remove_pending_in(D, "ghost", "bob@example.net").await
    ));
    assert!(r.pending_in(D, "ghost").await.expect("pending").is_empty());
    // A refused write creates neither an account nor data.
    assert!(!s.accounts.account_exists(D, "ghost").await.expect("exists"));
    assert_eq!(
        r.roster(D, "ghost").await.expect("roster"),
        Roster::default()
    );
}

async fn roster_set_get_replace_remove(s: &Storage) {
    let r = &s.roster;
    create(s, D, "alice").await;
    create(s, D, "bob").await;
    assert_eq!(
        r.roster(D, "alice").await.expect("roster"),
        Roster::default(),
        "a new account has an empty roster at version 0"
    );

    // Add: every field round-trips; the version goes 0 -> 1.
    let carol = RosterItem {
        jid: "carol@example.net".into(),
        name: Some("Carol \u{2603} <&>".into()),
        subscription: Subscription::Both,
        ask: true,
        approved: true,
        groups: strings(&["Friends", "Work"]),
    };
    assert_eq!(
        r.set_roster_item(D, "alice", &carol, 100)
            .await
            .expect("set"),
        1
    );
    assert_eq!(
        r.roster_item(D, "alice", "carol@example.net")
            .await
            .expect("item"),
        Some(carol.clone())
    );
    assert_eq!(
        r.roster(D, "alice").await.expect("roster"),
        Roster {
            version: 1,
            items: vec![carol.clone()]
        }
    );
    // Every subscription state and flag combination round-trips.
    let mut version = 1;
    for (i, sub) in Subscription::ALL.into_iter().enumerate() {
        let it = RosterItem {
            jid: format!("s{i}@example.com"),
            name: (i % 2 == 0).then(|| format!("n{i}")),
            subscription: sub,
            ask: i % 2 == 1,
            approved: i >= 2,
            groups: vec![],
        };
        version += 1;
        assert_eq!(
            r.set_roster_item(D, "alice", &it, 100).await.expect("set"),
            version
        );
        assert_eq!(
            r.roster_item(D, "alice", &it.jid).await.expect("item"),
            Some(it)
        );
    }
    // Items come sorted by JID in byte order (uppercase before lowercase, non-ASCII last),
    // whatever the insertion order.
    for jid in [
        "zed@example.com",
        "\u{e9}mile@example.com",
        "Zed@example.com",
        "a@b",
    ] {
        version += 1;
        assert_eq!(
            r.set_roster_item(D, "alice", &item(jid, &[]), 100)
                .await
                .expect("set"),
            version
        );
    }
    let roster = r.roster(D, "alice").await.expect("roster");
    assert_eq!(roster.version, version);
    assert_eq!(
        jids(&roster),
        [
            "Zed@example.com",
            "a@b",
            "carol@example.net",
            "s0@example.com",
            "s1@example.com",
            "s2@example.com",
            "s3@example.com",
            "zed@example.com",
            "\u{e9}mile@example.com",
        ]
    );
    // Contacts are byte-exact keys.
    for other in [
        "Carol@example.net",
        "carol@example.net/res",
        "carol@example.ne",
    ] {
        assert_eq!(
            r.roster_item(D, "alice", other).await.expect("item"),
            None,
            "{other}"
        );
    }

    // Replace: every field is replaced, the item count stays, the version goes up.
    let carol2 = RosterItem {
        jid: "carol@example.net".into(),
        name: None,
        subscription: Subscription::To,
        ask: false,
        approved: false,
        groups: strings(&["Family"]),
    };
    version += 1;
    assert_eq!(
        r.set_roster_item(D, "alice", &carol2, 100)
            .await
            .expect("replace"),
        version
    );
    assert_eq!(
        r.roster_item(D, "alice", "carol@example.net")
            .await
            .expect("item"),
        Some(carol2.clone())
    );
    // Setting an equal item is still a change (a roster push goes out): the version moves.
    version += 1;
    assert_eq!(
        r.set_roster_item(D, "alice", &carol2, 100)
            .await
            .expect("same again"),
        version
    );
    let roster = r.roster(D, "alice").await.expect("roster");
    assert_eq!((roster.version, roster.items.len()), (version, 9));

    // Remove: the version goes up; removing again is a no-op that keeps the version.
    version += 1;
    assert_eq!(
        r.remove_roster_item(D, "alice", "carol@example.net")
            .await
            .expect("remove"),
        Some(version)
    );
    assert_eq!(
        r.remove_roster_item(D, "alice", "carol@example.net")
            .await
            .expect("remove again"),
        None
    );
    assert_eq!(
        r.remove_roster_item(D, "alice", "nobody@example.net")
            .await
            .expect("remove unknown"),
        None
    );
    assert_eq!(
        r.roster_item(D, "alice", "carol@example.net")
            .await
            .expect("item"),
        None
    );
    let roster = r.roster(D, "alice").await.expect("roster");
    assert_eq!((roster.version, roster.items.len()), (version, 8));
    // Removed then added again: a fresh item, the version still only goes up.
    version += 1;
    assert_eq!(
        r.set_roster_item(D, "alice", &item("carol@example.net", &[]), 100)
            .await
            .expect("re-add"),
        version
    );
    assert_eq!(
        r.roster_item(D, "alice", "carol@example.net")
            .await
            .expect("item"),
        Some(item("carol@example.net", &[]))
    );

    // Rosters are per user: bob's is untouched; the same contact on bob's roster is
    // another item; a user on another domain is another user.
    assert_eq!(r.roster(D, "bob").await.expect("roster"), Roster::default());
    assert_eq!(
        r.set_roster_item(D, "bob", &carol, 100)
            .await
            .expect("bob set"),
        1
    );
    assert_eq!(
        r.roster_item(D, "bob", "carol@example.net")
            .await
            .expect("item"),
        Some(carol.clone())
    );
    assert_eq!(
        r.roster_item(D, "alice", "carol@example.net")
            .await
            .expect("item"),
        Some(item("carol@example.net", &[]))
    );
    assert_eq!(r.roster(D, "alice").await.expect("roster").version, version);
    assert_eq!(
        r.roster("example.net", "alice").await.expect("roster"),
        Roster::default()
    );
    // The owner may be the contact of someone else, and a local contact is just a JID.
    assert_eq!(
        r.set_roster_item(D, "bob", &item("alice@example.org", &[]), 100)
            .await
            .expect("local contact"),
        2
    );
    drop_account(s, D, "alice").await;
    drop_account(s, D, "bob").await;
}

async fn roster_groups(s: &Storage) {
    let r = &s.roster;
    create(s, D, "alice").await;
    let cases: &[(&[&str], &[&str])] = &[
        // Order as given, not sorted.
        (&["Zeta", "Alpha", "Mid"], &["Zeta", "Alpha", "Mid"]),
        // Duplicates removed, the first occurrence stays.
        (&["b", "a", "b", "c", "a", "b"], &["b", "a", "c"]),
        // Byte-exact: case and spaces make different groups.
        (
            &["Work", "work", "Work ", "WORK"],
            &["Work", "work", "Work ", "WORK"],
        ),
        // Any text, including separators a naive encoding would split on.
        (
            &[
                "a,b",
                "c;d",
                "e\nf",
                "[\"g\"]",
                "\u{1f600} h\u{e9}",
                "",
                "a,b",
            ],
            &["a,b", "c;d", "e\nf", "[\"g\"]", "\u{1f600} h\u{e9}", ""],
        ),
        (&[], &[]),
    ];
    for (i, (given, stored)) in cases.iter().enumerate() {
        let jid = format!("c{i}@example.net");
        r.set_roster_item(D, "alice", &item(&jid, given), 100)
            .await
            .expect("set");
        assert_eq!(
            r.roster_item(D, "alice", &jid)
                .await
                .expect("item")
                .expect("present")
                .groups,
            strings(stored),
            "{given:?}"
        );
    }
    // The whole roster carries the same groups per item.
    let roster = r.roster(D, "alice").await.expect("roster");
    for (i, (_, stored)) in cases.iter().enumerate() {
        assert_eq!(roster.items[i].jid, format!("c{i}@example.net"));
        assert_eq!(roster.items[i].groups, strings(stored));
    }
    // Replacing the groups replaces them all (no leftovers, new order).
    r.set_roster_item(D, "alice", &item("c0@example.net", &["Mid", "New"]), 100)
        .await
        .expect("replace");
    assert_eq!(
        r.roster_item(D, "alice", "c0@example.net")
            .await
            .expect("item")
            .expect("present")
            .groups,
        strings(&["Mid", "New"])
    );
    r.set_roster_item(D, "alice", &item("c0@example.net", &[]), 100)
        .await
        .expect("replace");
    assert!(r
        .roster_item(D, "alice", "c0@example.net")
        .await
        .expect("item")
        .expect("present")
        .groups
        .is_empty());
    // Many groups.
    let many: Vec<String> = (0..200).rev().map(|i| format!("g{i:03}")).collect();
    r.set_roster_item(
        D,
        "alice",
        &RosterItem {
            groups: many.clone(),
            ..RosterItem::new("many@example.net")
        },
        100,
    )
    .await
    .expect("many groups");
    assert_eq!(
        r.roster_item(D, "alice", "many@example.net")
            .await
            .expect("item")
            .expect("present")
            .groups,
        many
    );
    // A removed item takes its groups along: re-added without groups, it has none.
    r.remove_roster_item(D, "alice", "c1@example.net")
        .await
        .expect("remove");
    r.set_roster_item(D, "alice", &item("c1@example.net", &[]), 100)
        .await
        .expect("re-add");
    assert!(r
        .roster_item(D, "alice", "c1@example.net")
        .await
        .expect("item")
        .expect("present")
        .groups
        .is_empty());
    drop_account(s, D, "alice").await;
}

async fn roster_max_items(s: &Storage) {
    let r = &s.roster;
    create(s, D, "alice").await;
    assert!(
        is_limit(r.set_roster_item(D, "alice", &item("a@x", &[]), 0).await),
        "max 0 refuses any add"
    );
    assert_eq!(
        r.roster(D, "alice").await.expect("roster"),
        Roster::default(),
        "a refused add changes nothing, not even the version"
    );
    assert_eq!(
        r.set_roster_item(D, "alice", &item("a@x", &[]), 2)
            .await
            .expect("1 of 2"),
        1
    );
    assert_eq!(
        r.set_roster_item(D, "alice", &item("b@x", &[]), 2)
            .await
            .expect("2 of 2"),
        2
    );
    assert!(is_limit(
        r.set_roster_item(D, "alice", &item("c@x", &["G"]), 2).await
    ));
    let roster = r.roster(D, "alice").await.expect("roster");
    assert_eq!((roster.version, jids(&roster)), (2, vec!["a@x", "b@x"]));
    assert_eq!(r.roster_item(D, "alice", "c@x").await.expect("item"), None);
    // Replacing is always allowed, at the limit and even above it.
    assert_eq!(
        r.set_roster_item(D, "alice", &item("a@x", &["G"]), 2)
            .await
            .expect("replace at limit"),
        3
    );
    assert_eq!(
        r.set_roster_item(D, "alice", &item("b@x", &["G"]), 0)
            .await
            .expect("replace over limit"),
        4
    );
    // A removal makes room.
    assert_eq!(
        r.remove_roster_item(D, "alice", "a@x")
            .await
            .expect("remove"),
        Some(5)
    );
    assert_eq!(
        r.set_roster_item(D, "alice", &item("c@x", &[]), 2)
            .await
            .expect("room again"),
        6
    );
    // The limit counts this user's items only.
    create(s, D, "bob").await;
    assert_eq!(
        r.set_roster_item(D, "bob", &item("a@x", &[]), 1)
            .await
            .expect("bob's first"),
        1
    );
    drop_account(s, D, "alice").await;
    drop_account(s, D, "bob").await;
}

async fn roster_pending_in(s: &Storage) {
    let r = &s.roster;
    create(s, D, "alice").await;
    create(s, D, "bob").await;
    let sub = |from: &str, n: u32| {
        format!("<presence from='{from}' to='alice@example.org' type='subscribe'><status>hi {n} \u{2603}</status></presence>")
    };
    assert!(r.pending_in(D, "alice").await.expect("pending").is_empty());
    r.add_pending_in(D, "alice", "zoe@example.net", &sub("zoe@example.net", 1))
        .await
        .expect("add");
    r.add_pending_in(
        D,
        "alice",
        "carol@example.net",
        &sub("carol@example.net", 1),
    )
    .await
    .expect("add");
    r.add_pending_in(D, "alice", "Zed@example.net", &sub("Zed@example.net", 1))
        .await
        .expect("add");
    // Adding again replaces the stanza.
    r.add_pending_in(D, "alice", "zoe@example.net", &sub("zoe@example.net", 2))
        .await
        .expect("replace");
    assert_eq!(
        r.pending_in(D, "alice").await.expect("pending"),
        vec![
            ("Zed@example.net".to_owned(), sub("Zed@example.net", 1)),
            ("carol@example.net".to_owned(), sub("carol@example.net", 1)),
            ("zoe@example.net".to_owned(), sub("zoe@example.net", 2)),
        ]
    );
    // Per user.
    assert!(r.pending_in(D, "bob").await.expect("pending").is_empty());
    r.add_pending_in(D, "bob", "zoe@example.net", "<presence type='subscribe'/>")
        .await
        .expect("bob add");
    // Pending requests are not roster items and do not move the version.
    assert_eq!(
        r.roster(D, "alice").await.expect("roster"),
        Roster::default()
    );
    // Remove: true once, then false; others stay.
    assert!(r
        .remove_pending_in(D, "alice", "zoe@example.net")
        .await
        .expect("remove"));
    assert!(!r
        .remove_pending_in(D, "alice", "zoe@example.net")
        .await
        .expect("remove again"));
    assert!(!r
        .remove_pending_in(D, "alice", "zed@example.net")
        .await
        .expect("byte-exact contact"));
    assert_eq!(
        r.pending_in(D, "alice").await.expect("pending"),
        vec![
            ("Zed@example.net".to_owned(), sub("Zed@example.net", 1)),
            ("carol@example.net".to_owned(), sub("carol@example.net", 1)),
        ]
    );
    assert_eq!(
        r.pending_in(D, "bob").await.expect("pending"),
        vec![(
            "zoe@example.net".to_owned(),
            "<presence type='subscribe'/>".to_owned()
        )]
    );
    // Removing a roster item leaves the pending requests alone.
    r.set_roster_item(D, "alice", &item("carol@example.net", &[]), 10)
        .await
        .expect("set");
    r.remove_roster_item(D, "alice", "carol@example.net")
        .await
        .expect("remove item");
    assert_eq!(r.pending_in(D, "alice").await.expect("pending").len(), 2);
    drop_account(s, D, "alice").await;
    drop_account(s, D, "bob").await;
}

async fn roster_concurrent(s: &Storage) {
    create(s, D, "alice").await;
    // Concurrent changes each get their own version: 1..=20, no gaps, no repeats.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let s = s.clone();
        set.spawn(async move {
            s.roster
                .set_roster_item(D, "alice", &item(&format!("c{i:02}@x"), &["G"]), 1000)
                .await
        });
    }
    let mut versions = BTreeSet::new();
    while let Some(r) = set.join_next().await {
        versions.insert(r.expect("join").expect("set"));
    }
    assert_eq!(versions, (1..=20).collect::<BTreeSet<u64>>());
    assert_eq!(
        s.roster.roster(D, "alice").await.expect("roster").version,
        20
    );
    drop_account(s, D, "alice").await;

    // Concurrent adds of different contacts never exceed max_items.
    create(s, D, "alice").await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let s = s.clone();
        set.spawn(async move {
            s.roster
                .set_roster_item(D, "alice", &item(&format!("c{i:02}@x"), &[]), 10)
                .await
        });
    }
    let (mut ok, mut limited) = (0, 0);
    while let Some(r) = set.join_next().await {
        match r.expect("join") {
            Ok(_) => ok += 1,
            Err(StorageError::LimitReached(_)) => limited += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!((ok, limited), (10, 10));
    let roster = s.roster.roster(D, "alice").await.expect("roster");
    assert_eq!((roster.version, roster.items.len()), (10, 10));
    drop_account(s, D, "alice").await;
}

async fn roster_account_deletion(s: &Storage) {
    let r = &s.roster;
    create(s, D, "alice").await;
    create(s, D, "bob").await;
    for u in ["alice", "bob"] {
        r.set_roster_item(D, u, &item("carol@example.net", &["G", "H"]), 10)
            .await
            .expect("set");
        r.set_roster_item(D, u, &item("dave@example.net", &[]), 10)
            .await
            .expect("set");
        r.add_pending_in(D, u, "eve@example.net", "<presence type='subscribe'/>")
            .await
            .expect("pending");
    }
    drop_account(s, D, "alice").await;
    // Gone with the account, and writes are refused now.
    assert_eq!(
        r.roster(D, "alice").await.expect("roster"),
        Roster::default()
    );
    assert!(r.pending_in(D, "alice").await.expect("pending").is_empty());
    assert!(is_not_found(
        r.set_roster_item(D, "alice", &item("x@y", &[]), 10).await
    ));
    assert!(is_not_found(
        r.add_pending_in(D, "alice", "x@y", "<presence/>").await
    ));
    // Re-created: empty, version 0, groups did not come back.
    create(s, D, "alice").await;
    assert_eq!(
        r.roster(D, "alice").await.expect("roster"),
        Roster::default()
    );
    assert!(r.pending_in(D, "alice").await.expect("pending").is_empty());
    assert_eq!(
        r.set_roster_item(D, "alice", &item("carol@example.net", &[]), 10)
            .await
            .expect("set"),
        1
    );
    assert!(r
        .roster_item(D, "alice", "carol@example.net")
        .await
        .expect("item")
        .expect("present")
        .groups
        .is_empty());
    // Another account's data is untouched.
    let bob = r.roster(D, "bob").await.expect("roster");
    assert_eq!(bob.version, 2);
    assert_eq!(bob.items[0].groups, strings(&["G", "H"]));
    assert_eq!(r.pending_in(D, "bob").await.expect("pending").len(), 1);
    drop_account(s, D, "alice").await;
    drop_account(s, D, "bob").await;
}

// ---------------------------------------------------------------------------------
// Offline messages

/// The whole [`crate::OfflineStore`] contract.
pub async fn offline_store(s: &Storage) {
    assert_no_accounts(s).await;
    offline_unknown_account(s).await;
    offline_order_peek_remove(s).await;
    offline_quota(s).await;
    offline_concurrent_quota(s).await;
    offline_account_deletion(s).await;
    assert_no_accounts(s).await;
}

fn msg(n: usize) -> String {
    format!("<message from='bob@example.net/r' to='alice@example.org' type='chat'><body>#{n} caf\u{e9} &amp; \u{1f600}</body></message>")
}

async fn offline_unknown_account(s: &Storage) {
    let o = &s.offline;
    assert!(is_not_found(o.push_offline(D, "ghost", &msg(1), 100).await));
    assert!(is_not_found(o.push_offline(D, "ghost", &msg(1), 0).await));
    assert!(o
        .peek_offline(D, "ghost", 100)
        .await
        .expect("peek")
        .is_empty());
    assert_eq!(o.count_offline(D, "ghost").await.expect("count"), 0);
    assert!(is_not_found(o.remove_offline(D, "ghost", &[1, 2, 3]).await));
    assert!(!s.accounts.account_exists(D, "ghost").await.expect("exists"));
}

async fn offline_order_peek_remove(s: &Storage) {
    let o = &s.offline;
    create(s, D, "alice").await;
    create(s, D, "bob").await;
    assert!(o
        .peek_offline(D, "alice", 10)
        .await
        .expect("peek")
        .is_empty());
    // Interleaved arrivals for two users: ids increase across the backend.
    let mut alice = Vec::new();
    let mut bob = Vec::new();
    let mut last = 0;
    for n in 0..6 {
        let user = if n % 3 == 2 { "bob" } else { "alice" };
        let id = o
            .push_offline(D, user, &msg(n), 100)
            .await
            .expect("push")
            .expect("stored");
        assert!(
            id > last,
            "ids increase in arrival order: {id} after {last}"
        );
        last = id;
        if user == "bob" { &mut bob } else { &mut alice }.push((id, msg(n)));
    }
    assert_eq!(o.count_offline(D, "alice").await.expect("count"), 4);
    assert_eq!(o.count_offline(D, "bob").await.expect("count"), 2);
    // Peek: oldest first, exactly `limit`, nothing removed.
    assert_eq!(o.peek_offline(D, "alice", 100).await.expect("peek"), alice);
    assert_eq!(o.peek_offline(D, "alice", 4).await.expect("peek"), alice);
    assert_eq!(
        o.peek_offline(D, "alice", 2).await.expect("peek"),
        alice[..2]
    );
    assert!(o
        .peek_offline(D, "alice", 0)
        .await
        .expect("peek")
        .is_empty());
    assert_eq!(
        o.peek_offline(D, "alice", usize::MAX).await.expect("peek"),
        alice
    );
    assert_eq!(o.peek_offline(D, "bob", 100).await.expect("peek"), bob);
    assert_eq!(o.count_offline(D, "alice").await.expect("count"), 4);
    // Remove by ids: unknown ids and other users' ids are ignored (and not removed).
    let removed = o
        .remove_offline(
            D,
            "alice",
            &[
                alice[0].0,
                bob[0].0,
                last + 1000,
                -1,
                0,
                alice[2].0,
                alice[0].0,
            ],
        )
        .await
        .expect("remove");
    assert_eq!(removed, 2);
    assert_eq!(
        o.peek_offline(D, "alice", 100).await.expect("peek"),
        vec![alice[1].clone(), alice[3].clone()]
    );
    assert_eq!(o.peek_offline(D, "bob", 100).await.expect("peek"), bob);
    assert_eq!(o.remove_offline(D, "alice", &[]).await.expect("none"), 0);
    assert_eq!(
        o.remove_offline(D, "alice", &[alice[0].0])
            .await
            .expect("again"),
        0
    );
    // New messages come after the remaining ones, with ids never used before.
    let id = o
        .push_offline(D, "alice", &msg(99), 100)
        .await
        .expect("push")
        .expect("stored");
    assert!(id > last);
    assert_eq!(
        o.peek_offline(D, "alice", 100).await.expect("peek"),
        vec![alice[1].clone(), alice[3].clone(), (id, msg(99))]
    );
    // Removing all of them.
    let ids: Vec<i64> = o
        .peek_offline(D, "alice", 100)
        .await
        .expect("peek")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(o.remove_offline(D, "alice", &ids).await.expect("all"), 3);
    assert_eq!(o.count_offline(D, "alice").await.expect("count"), 0);
    assert!(o
        .peek_offline(D, "alice", 100)
        .await
        .expect("peek")
        .is_empty());
    // A large stanza round-trips exactly.
    let big = format!(
        "<message><body>{}</body></message>",
        "\u{e9}x".repeat(100_000)
    );
    let id = o
        .push_offline(D, "alice", &big, 100)
        .await
        .expect("push")
        .expect("stored");
    assert_eq!(
        o.peek_offline(D, "alice", 1).await.expect("peek"),
        vec![(id, big)]
    );
    drop_account(s, D, "alice").await;
    drop_account(s, D, "bob").await;
}

async fn offline_quota(s: &Storage) {
    let o = &s.offline;
    create(s, D, "alice").await;
    create(s, D, "bob").await;
    assert_eq!(
        o.push_offline(D, "alice", &msg(0), 0).await.expect("push"),
        None,
        "quota 0 stores nothing"
    );
    assert_eq!(o.count_offline(D, "alice").await.expect("count"), 0);
    // Exactly `max` fit: the one at count = max - 1 is stored, at count = max it is not.
    for n in 0..3 {
        assert!(o
            .push_offline(D, "alice", &msg(n), 3)
            .await
            .expect("push")
            .is_some());
    }
    assert_eq!(
        o.push_offline(D, "alice", &msg(3), 3).await.expect("push"),
        None
    );
    assert_eq!(o.count_offline(D, "alice").await.expect("count"), 3);
    // A lower quota than what is stored refuses too; nothing is dropped.
    assert_eq!(
        o.push_offline(D, "alice", &msg(3), 1).await.expect("push"),
        None
    );
    assert_eq!(o.count_offline(D, "alice").await.expect("count"), 3);
    // A refused message is not stored.
    let stored: Vec<String> = o
        .peek_offline(D, "alice", 10)
        .await
        .expect("peek")
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert_eq!(stored, vec![msg(0), msg(1), msg(2)]);
    // The quota is per user.
    assert!(o
        .push_offline(D, "bob", &msg(0), 3)
        .await
        .expect("push")
        .is_some());
    // Removing one makes room for exactly one.
    let first = o.peek_offline(D, "alice", 1).await.expect("peek")[0].0;
    assert_eq!(o.remove_offline(D, "alice", &[first]).await.expect("rm"), 1);
    assert!(o
        .push_offline(D, "alice", &msg(4), 3)
        .await
        .expect("push")
        .is_some());
    assert_eq!(
        o.push_offline(D, "alice", &msg(5), 3).await.expect("push"),
        None
    );
    assert_eq!(o.count_offline(D, "alice").await.expect("count"), 3);
    drop_account(s, D, "alice").await;
    drop_account(s, D, "bob").await;
}

async fn offline_concurrent_quota(s: &Storage) {
    create(s, D, "alice").await;
    let mut set = tokio::task::JoinSet::new();
    for n in 0..20 {
        let s = s.clone();
        set.spawn(async move { s.offline.push_offline(D, "alice", &msg(n), 10).await });
    }
    let mut ids = BTreeSet::new();
    let mut refused = 0;
    while let Some(r) = set.join_next().await {
        match r.expect("join").expect("push") {
            Some(id) => assert!(ids.insert(id), "id {id} handed out twice"),
            None => refused += 1,
        }
    }
    assert_eq!(
        (ids.len(), refused),
        (10, 10),
        "exactly the quota is stored"
    );
    assert_eq!(
        s.offline.count_offline(D, "alice").await.expect("count"),
        10
    );
    let peeked: Vec<i64> = s
        .offline
        .peek_offline(D, "alice", 100)
        .await
        .expect("peek")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(peeked, ids.into_iter().collect::<Vec<_>>());
    drop_account(s, D, "alice").await;
}

async fn offline_account_deletion(s: &Storage) {
    let o = &s.offline;
    create(s, D, "alice").await;
    create(s, D, "bob").await;
    let mut last = 0;
    for n in 0..5 {
        for u in ["alice", "bob"] {
            last = o
                .push_offline(D, u, &msg(n), 100)
                .await
                .expect("push")
                .expect("stored");
        }
    }
    let old_ids: Vec<i64> = o
        .peek_offline(D, "alice", 100)
        .await
        .expect("peek")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    drop_account(s, D, "alice").await;
    assert_eq!(o.count_offline(D, "alice").await.expect("count"), 0);
    assert!(o
        .peek_offline(D, "alice", 100)
        .await
        .expect("peek")
        .is_empty());
    assert!(is_not_found(o.push_offline(D, "alice", &msg(0), 100).await));
    create(s, D, "alice").await;
    assert_eq!(o.count_offline(D, "alice").await.expect("count"), 0);
    // Ids are not reused after a deletion: the old ids remove nothing new.
    let id = o
        .push_offline(D, "alice", &msg(7), 100)
        .await
        .expect("push")
        .expect("stored");
    assert!(id > last);
    assert_eq!(o.remove_offline(D, "alice", &old_ids).await.expect("rm"), 0);
    assert_eq!(
        o.peek_offline(D, "alice", 100).await.expect("peek"),
        vec![(id, msg(7))]
    );
    // Bob's messages are untouched.
    assert_eq!(o.count_offline(D, "bob").await.expect("count"), 5);
    drop_account(s, D, "alice").await;
    drop_account(s, D, "bob").await;
}

// ---------------------------------------------------------------------------------
// User data

/// The whole [`crate::UserDataStore`] contract.
pub async fn user_data_store(s: &Storage) {
    assert_no_accounts(s).await;
    let u = &s.user_data;
    const M: usize = 1 << 20;

    // Unknown account: reads are empty, writes refused.
    assert_eq!(
        u.get_data(D, "ghost", "vcard", "").await.expect("get"),
        None
    );
    assert!(u
        .data_keys(D, "ghost", "vcard")
        .await
        .expect("keys")
        .is_empty());
    assert!(is_not_found(
        u.set_data(D, "ghost", "vcard", "", Some("<vCard/>"), M)
            .await
    ));
    assert!(is_not_found(
        u.set_data(D, "ghost", "vcard", "", None, M).await
    ));
    assert!(!s.accounts.account_exists(D, "ghost").await.expect("exists"));

    create(s, D, "alice").await;
    create(s, D, "bob").await;
    // Set, get, replace, delete.
    assert_eq!(
        u.get_data(D, "alice", "vcard", "").await.expect("get"),
        None
    );
    let vcard = "<vCard xmlns='vcard-temp'><FN>Alice \u{2603}</FN></vCard>";
    u.set_data(D, "alice", "vcard", "", Some(vcard), M)
        .await
        .expect("set");
    assert_eq!(
        u.get_data(D, "alice", "vcard", "")
            .await
            .expect("get")
            .as_deref(),
        Some(vcard)
    );
    u.set_data(
        D,
        "alice",
        "vcard",
        "",
        Some("<vCard xmlns='vcard-temp'/>"),
        M,
    )
    .await
    .expect("replace");
    assert_eq!(
        u.get_data(D, "alice", "vcard", "")
            .await
            .expect("get")
            .as_deref(),
        Some("<vCard xmlns='vcard-temp'/>")
    );
    u.set_data(D, "alice", "vcard", "", None, M)
        .await
        .expect("delete");
    assert_eq!(
        u.get_data(D, "alice", "vcard", "").await.expect("get"),
        None
    );
    u.set_data(D, "alice", "vcard", "", None, M)
        .await
        .expect("deleting an absent key is fine");
    // The empty string is a value, distinct from absence.
    u.set_data(D, "alice", "last", "", Some(""), M)
        .await
        .expect("set empty");
    assert_eq!(
        u.get_data(D, "alice", "last", "")
            .await
            .expect("get")
            .as_deref(),
        Some("")
    );
    assert_eq!(
        u.data_keys(D, "alice", "last").await.expect("keys"),
        strings(&[""])
    );

    // Stores, keys and users are independent namespaces.
    for (store, key, value) in [
        (
            "private",
            "storage storage:bookmarks",
            "<storage xmlns='storage:bookmarks'/>",
        ),
        ("private", "prefs urn:x", "<prefs xmlns='urn:x'/>"),
        ("private", "Prefs urn:x", "<Prefs xmlns='urn:x'/>"),
        (
            "private",
            "\u{e9}l\u{e9}ment urn:y",
            "<\u{e9}l\u{e9}ment xmlns='urn:y'/>",
        ),
        ("vcard", "", "<vCard/>"),
        ("privatex", "a", "other store"),
        ("privat", "a", "other store"),
    ] {
        u.set_data(D, "alice", store, key, Some(value), M)
            .await
            .expect("set");
    }
    assert_eq!(
        u.data_keys(D, "alice", "private").await.expect("keys"),
        strings(&[
            "Prefs urn:x",
            "prefs urn:x",
            "storage storage:bookmarks",
            "\u{e9}l\u{e9}ment urn:y",
        ])
    );
    assert_eq!(
        u.data_keys(D, "alice", "vcard").await.expect("keys"),
        strings(&[""])
    );
    assert_eq!(
        u.data_keys(D, "alice", "privat").await.expect("keys"),
        strings(&["a"])
    );
    assert!(u
        .data_keys(D, "alice", "blocklist")
        .await
        .expect("keys")
        .is_empty());
    assert!(u
        .data_keys(D, "alice", "Private")
        .await
        .expect("keys")
        .is_empty());
    assert_eq!(
        u.get_data(D, "alice", "private", "prefs urn:x")
            .await
            .expect("get")
            .as_deref(),
        Some("<prefs xmlns='urn:x'/>")
    );
    assert_eq!(
        u.get_data(D, "alice", "private", "Prefs urn:x")
            .await
            .expect("get")
            .as_deref(),
        Some("<Prefs xmlns='urn:x'/>")
    );
    assert_eq!(
        u.get_data(D, "alice", "vcard", "prefs urn:x")
            .await
            .expect("get"),
        None
    );
    assert_eq!(u.get_data(D, "bob", "vcard", "").await.expect("get"), None);
    assert!(u
        .data_keys(D, "bob", "private")
        .await
        .expect("keys")
        .is_empty());
    u.set_data(D, "bob", "vcard", "", Some("<vCard>bob</vCard>"), M)
        .await
        .expect("bob set");
    assert_eq!(
        u.get_data(D, "alice", "vcard", "")
            .await
            .expect("get")
            .as_deref(),
        Some("<vCard/>")
    );
    // Deleting one key leaves the others.
    u.set_data(D, "alice", "private", "prefs urn:x", None, M)
        .await
        .expect("delete");
    assert_eq!(
        u.data_keys(D, "alice", "private").await.expect("keys"),
        strings(&[
            "Prefs urn:x",
            "storage storage:bookmarks",
            "\u{e9}l\u{e9}ment urn:y"
        ])
    );

    // Limits: exactly max_bytes (bytes, not chars) fits; one more is refused and changes
    // nothing; a deletion is never refused.
    let at = "\u{e9}".repeat(50); // 100 bytes
    u.set_data(D, "alice", "vcard", "", Some(&at), 100)
        .await
        .expect("exactly at the limit");
    assert_eq!(
        u.get_data(D, "alice", "vcard", "").await.expect("get"),
        Some(at.clone())
    );
    let over = format!("{at}x");
    assert!(is_limit(
        u.set_data(D, "alice", "vcard", "", Some(&over), 100).await
    ));
    assert!(is_limit(
        u.set_data(D, "alice", "blocklist", "", Some(&over), 100)
            .await
    ));
    assert!(is_limit(
        u.set_data(D, "alice", "blocklist", "", Some("x"), 0).await
    ));
    assert_eq!(
        u.get_data(D, "alice", "vcard", "").await.expect("get"),
        Some(at),
        "a refused set keeps the old value"
    );
    assert_eq!(
        u.get_data(D, "alice", "blocklist", "").await.expect("get"),
        None
    );
    u.set_data(D, "alice", "last", "", Some(""), 0)
        .await
        .expect("empty value within 0 bytes");
    u.set_data(D, "alice", "vcard", "", None, 0)
        .await
        .expect("delete ignores the limit");
    assert_eq!(
        u.get_data(D, "alice", "vcard", "").await.expect("get"),
        None
    );
    // A large document round-trips.
    let big = "<vCard>".to_owned() + &"A".repeat(300_000) + "</vCard>";
    u.set_data(D, "alice", "vcard", "", Some(&big), M)
        .await
        .expect("big");
    assert_eq!(
        u.get_data(D, "alice", "vcard", "").await.expect("get"),
        Some(big)
    );

    // Account deletion wipes every store of the user, and only that user.
    drop_account(s, D, "alice").await;
    for store in ["vcard", "private", "last", "privat"] {
        assert!(u
            .data_keys(D, "alice", store)
            .await
            .expect("keys")
            .is_empty());
    }
    assert!(is_not_found(
        u.set_data(D, "alice", "vcard", "", Some("x"), M).await
    ));
    create(s, D, "alice").await;
    for store in ["vcard", "private", "last", "privat"] {
        assert!(u
            .data_keys(D, "alice", store)
            .await
            .expect("keys")
            .is_empty());
    }
    assert_eq!(
        u.get_data(D, "alice", "private", "storage storage:bookmarks")
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        u.get_data(D, "bob", "vcard", "")
            .await
            .expect("get")
            .as_deref(),
        Some("<vCard>bob</vCard>")
    );
    drop_account(s, D, "alice").await;
    drop_account(s, D, "bob").await;
    assert_no_accounts(s).await;
}

// ---------------------------------------------------------------------------------
// Account deletion across every store

/// Deleting an account wipes it from every store at once; a same-named account on
/// another domain and other accounts keep everything.
pub async fn account_deletion(s: &Storage) {
    assert_no_accounts(s).await;
    let users = [(D, "alice"), ("example.net", "alice"), (D, "bob")];
    for (d, u) in users {
        create(s, d, u).await;
        s.roster
            .set_roster_item(d, u, &item("carol@example.com", &["G"]), 10)
            .await
            .expect("roster");
        s.roster
            .add_pending_in(d, u, "dave@example.com", "<presence type='subscribe'/>")
            .await
            .expect("pending");
        s.offline
            .push_offline(d, u, &msg(1), 10)
            .await
            .expect("offline")
            .expect("stored");
        for (store, key) in [
            ("vcard", ""),
            ("private", "a b"),
            ("last", ""),
            ("blocklist", ""),
        ] {
            s.user_data
                .set_data(d, u, store, key, Some("<x/>"), 100)
                .await
                .expect("data");
        }
        s.archive
            .append_archive(d, u, &archived(1, "carol@example.com", "", 10))
            .await
            .expect("archive");
        let pep = PubSubService::Account { domain: d, user: u };
        s.pubsub
            .create_node(pep, "urn:xmpp:avatar:metadata", "{}", "x@y", 10)
            .await
            .expect("pep node");
        s.pubsub
            .publish_item(pep, "urn:xmpp:avatar:metadata", &ps_item("a", 1), 1, 10)
            .await
            .expect("pep item");
    }
    drop_account(s, D, "alice").await;
    check_empty(s, D, "alice").await;
    for (d, u) in [("example.net", "alice"), (D, "bob")] {
        let roster = s.roster.roster(d, u).await.expect("roster");
        assert_eq!((roster.version, roster.items.len()), (1, 1), "{u}@{d}");
        assert_eq!(s.roster.pending_in(d, u).await.expect("pending").len(), 1);
        assert_eq!(s.offline.count_offline(d, u).await.expect("count"), 1);
        assert_eq!(
            page(s, d, u, ArchiveFilter::default(), PageRequest::First, 10)
                .await
                .count,
            1
        );
        assert_eq!(
            s.user_data.data_keys(d, u, "private").await.expect("keys"),
            strings(&["a b"])
        );
        assert!(s
            .accounts
            .get_credentials(d, u, HashAlg::Sha256)
            .await
            .expect("creds")
            .is_some());
        let pep = PubSubService::Account { domain: d, user: u };
        assert_eq!(
            all_item_ids(s, pep, "urn:xmpp:avatar:metadata").await,
            strings(&["a"])
        );
    }
    create(s, D, "alice").await;
    check_empty(s, D, "alice").await;
    for (d, u) in users {
        drop_account(s, d, u).await;
    }
    for (d, u) in users {
        check_empty(s, d, u).await;
    }
    assert_no_accounts(s).await;
}

async fn check_empty(s: &Storage, d: &str, u: &str) {
    assert_eq!(
        s.roster.roster(d, u).await.expect("roster"),
        Roster::default()
    );
    assert!(s.roster.pending_in(d, u).await.expect("pending").is_empty());
    assert_eq!(s.offline.count_offline(d, u).await.expect("count"), 0);
    assert_eq!(
        page(s, d, u, ArchiveFilter::default(), PageRequest::First, 10).await,
        ArchivePage {
            complete: true,
            ..ArchivePage::default()
        }
    );
    assert_eq!(s.archive.archive_bounds(d, u).await.expect("bounds"), None);
    let pep = PubSubService::Account { domain: d, user: u };
    assert!(s.pubsub.list_nodes(pep).await.expect("nodes").is_empty());
    assert_eq!(
        s.pubsub
            .get_items(pep, "urn:xmpp:avatar:metadata", page_sel(None, None, 10))
            .await
            .expect("items"),
        ItemPage::default()
    );
    assert!(s
        .offline
        .peek_offline(d, u, 10)
        .await
        .expect("peek")
        .is_empty());
    for (store, key) in [
        ("vcard", ""),
        ("private", "a b"),
        ("last", ""),
        ("blocklist", ""),
    ] {
        assert_eq!(
            s.user_data.get_data(d, u, store, key).await.expect("get"),
            None,
            "{store}"
        );
        assert!(s
            .user_data
            .data_keys(d, u, store)
            .await
            .expect("keys")
            .is_empty());
    }
}

// ---------------------------------------------------------------------------------
// Message archives

/// Entry number `n`. Its id is in an order unrelated to archive order, as random ids are.
fn archived(n: usize, with_bare: &str, with_resource: &str, timestamp_us: i64) -> ArchiveEntry {
    ArchiveEntry {
        id: format!("id-{}", (n * 7919) % 10007),
        timestamp_us,
        with_bare: with_bare.to_owned(),
        with_resource: with_resource.to_owned(),
        stanza: format!("<message xmlns='jabber:client' id='m{n}'><body>{n}</body></message>"),
    }
}

async fn page(
    s: &Storage,
    d: &str,
    u: &str,
    filter: ArchiveFilter,
    page: PageRequest,
    max: usize,
) -> ArchivePage {
    s.archive
        .query_archive(d, u, &ArchiveQuery { filter, page, max })
        .await
        .expect("query")
}

fn ids_of(p: &ArchivePage) -> Vec<String> {
    p.entries.iter().map(|e| e.id.clone()).collect()
}

/// The whole [`crate::ArchiveStore`] contract.
pub async fn archive_store(s: &Storage) {
    assert_no_accounts(s).await;
    archive_unknown_account(s).await;
    let all = archive_fill(s).await;
    // A backend that counts its entries counts at least those just added (None: it does
    // not count, which the contract allows).
    if let Some(n) = s.archive.count_archived().await.expect("count") {
        assert!(
            n >= all.len() as u64,
            "{n} entries counted, {} added",
            all.len()
        );
    }
    archive_paging(s, &all).await;
    archive_filters(s, &all).await;
    archive_unknown_ids(s, &all).await;
    archive_purge(s).await;
    archive_concurrent(s).await;
    archive_replace_and_delete(s).await;
    drop_account(s, D, "alice").await;
    drop_account(s, D, "bob").await;
    assert_no_accounts(s).await;
    // Deleting the accounts deleted their archives.
    assert!(matches!(
        s.archive.count_archived().await,
        Ok(None | Some(0))
    ));
}

/// The [`crate::ArchiveStore`] contract for room archives (`room_archive`): the account
/// archive's paging, filters, ids and purge, but an archive needs no account, is apart from
/// the account archive of the same name, and outlives account deletion. Leaves nothing.
pub async fn room_archive_store(s: &Storage) {
    assert_no_accounts(s).await;
    let rooms = Storage {
        archive: s.room_archive.clone(),
        ..s.clone()
    };
    // No account is needed.
    rooms
        .archive
        .append_archive(
            "conference.example.org",
            "lobby",
            &archived(1, "x@y", "", 1),
        )
        .await
        .expect("a room archive starts with its first entry");
    assert_eq!(
        rooms
            .archive
            .delete_archive("conference.example.org", "lobby")
            .await
            .expect("delete"),
        1
    );
    let all = archive_fill(&rooms).await;
    // The account archives of the same names are untouched.
    assert_eq!(s.archive.archive_bounds(D, "alice").await.expect("b"), None);
    archive_paging(&rooms, &all).await;
    archive_filters(&rooms, &all).await;
    archive_unknown_ids(&rooms, &all).await;
    archive_purge(&rooms).await;
    // Deleting the accounts of the same names leaves the room archives.
    drop_account(s, D, "alice").await;
    drop_account(s, D, "bob").await;
    assert!(rooms
        .archive
        .archive_bounds(D, "alice")
        .await
        .expect("b")
        .is_some());
    create(s, D, "alice").await;
    create(s, D, "bob").await;
    archive_replace_and_delete(&rooms).await;
    drop_account(s, D, "alice").await;
    drop_account(s, D, "bob").await;
    assert_eq!(rooms.archive.delete_archive(D, "bob").await.expect("d"), 0);
    assert_eq!(
        rooms
            .archive
            .purge_archive(i64::MAX, 1000)
            .await
            .expect("p"),
        0
    );
    assert_no_accounts(s).await;
}

/// A tombstone replaces one entry's stanza and nothing else; deleting an archive empties
/// it and no other.
async fn archive_replace_and_delete(s: &Storage) {
    let before = page(
        s,
        D,
        "alice",
        ArchiveFilter::default(),
        PageRequest::First,
        1000,
    )
    .await;
    assert!(before.entries.len() > 2, "needs a filled archive");
    let target = before.entries[1].clone();
    s.archive
        .replace_archived(D, "alice", &target.id, "<message><retracted/></message>")
        .await
        .expect("replace");
    assert!(is_not_found(
        s.archive
            .replace_archived(D, "alice", "no-such-id", "<message/>")
            .await
    ));
    assert!(is_not_found(
        s.archive
            .replace_archived(D, "nobody", &target.id, "<message/>")
            .await
    ));
    let after = page(
        s,
        D,
        "alice",
        ArchiveFilter::default(),
        PageRequest::First,
        1000,
    )
    .await;
    let mut want = before.entries.clone();
    want[1].stanza = "<message><retracted/></message>".into();
    assert_eq!(after.entries, want);
    // A replaced entry still counts once.
    assert_eq!((after.count, after.first_index), (before.count, Some(0)));
    let bob_before = page(
        s,
        D,
        "bob",
        ArchiveFilter::default(),
        PageRequest::First,
        1000,
    )
    .await
    .count;
    assert_eq!(
        s.archive.delete_archive(D, "alice").await.expect("delete"),
        before.entries.len()
    );
    assert_eq!(s.archive.archive_bounds(D, "alice").await.expect("b"), None);
    assert_eq!(
        page(
            s,
            D,
            "bob",
            ArchiveFilter::default(),
            PageRequest::First,
            1000
        )
        .await
        .count,
        bob_before
    );
    assert_eq!(
        s.archive.delete_archive(D, "alice").await.expect("again"),
        0
    );
    // An archive started again after its deletion counts from its new first entry.
    for n in 0..3 {
        let with = if n == 1 {
            "carol@example.net"
        } else {
            "bob@example.org"
        };
        s.archive
            .append_archive(D, "alice", &archived(100 + n, with, "", 5_000_000))
            .await
            .expect("append");
    }
    let p = page(
        s,
        D,
        "alice",
        ArchiveFilter::default(),
        PageRequest::Last,
        2,
    )
    .await;
    assert_eq!((p.count, p.first_index), (3, Some(1)));
    let p = page(
        s,
        D,
        "alice",
        ArchiveFilter {
            with: Some(WithFilter {
                bare: "bob@example.org".into(),
                resource: None,
            }),
            ..ArchiveFilter::default()
        },
        PageRequest::Last,
        1,
    )
    .await;
    assert_eq!((p.count, p.first_index), (2, Some(1)));
    assert_eq!(
        s.archive.delete_archive(D, "alice").await.expect("third"),
        3
    );
}

async fn archive_unknown_account(s: &Storage) {
    assert!(is_not_found(
        s.archive
            .append_archive(D, "ghost", &archived(1, "x@y", "", 1))
            .await
    ));
    let p = page(
        s,
        D,
        "ghost",
        ArchiveFilter::default(),
        PageRequest::Last,
        10,
    )
    .await;
    assert_eq!((p.count, p.entries.len(), p.first_index), (0, 0, None));
    assert!(p.complete);
    assert_eq!(s.archive.archive_bounds(D, "ghost").await.expect("b"), None);
}

/// alice's archive: 30 entries with bob (resources r1, r2, none) and carol, timestamps
/// 1000 µs apart; bob has one entry so his archive is distinct. Returns alice's entries as
/// stored.
async fn archive_fill(s: &Storage) -> Vec<ArchiveEntry> {
    create(s, D, "alice").await;
    create(s, D, "bob").await;
    let mut all = Vec::new();
    for n in 0..30 {
        let (bare, res) = match n % 4 {
            0 => ("bob@example.org", "r1"),
            1 => ("bob@example.org", "r2"),
            2 => ("carol@example.net", ""),
            _ => ("bob@example.org", ""),
        };
        let e = archived(n, bare, res, 1_000_000 + 1000 * n as i64);
        let stored = s
            .archive
            .append_archive(D, "alice", &e)
            .await
            .expect("append");
        assert_eq!(stored, e.timestamp_us);
        all.push(e);
    }
    // The same id in another archive is fine; twice in one archive is not.
    s.archive
        .append_archive(D, "bob", &archived(0, "alice@example.org", "", 5))
        .await
        .expect("bob's");
    assert!(matches!(
        s.archive
            .append_archive(D, "alice", &archived(0, "x@y", "", 2_000_000))
            .await,
        Err(StorageError::AlreadyExists)
    ));
    // A clock that went back: the timestamp is raised to the newest one.
    let mut late = archived(30, "carol@example.net", "phone", 10);
    let stored = s
        .archive
        .append_archive(D, "alice", &late)
        .await
        .expect("append");
    assert_eq!(stored, all[29].timestamp_us);
    late.timestamp_us = stored;
    all.push(late);
    let (first, last) = s
        .archive
        .archive_bounds(D, "alice")
        .await
        .expect("bounds")
        .expect("not empty");
    assert_eq!(
        (first.id.as_str(), first.timestamp_us),
        (all[0].id.as_str(), all[0].timestamp_us)
    );
    assert_eq!(
        (last.id.as_str(), last.timestamp_us),
        (all[30].id.as_str(), stored)
    );
    all
}

/// Walk the whole archive forwards and backwards with every page size from 1 to past the
/// end: every entry exactly once, in order, `complete` on the last page only.
async fn archive_paging(s: &Storage, all: &[ArchiveEntry]) {
    let want: Vec<String> = all.iter().map(|e| e.id.clone()).collect();
    for max in [1, 2, 7, 30, 31, 100] {
        let mut seen = Vec::new();
        let mut req = PageRequest::First;
        loop {
            let p = page(s, D, "alice", ArchiveFilter::default(), req.clone(), max).await;
            assert_eq!(p.count, all.len());
            assert_eq!(p.first_index, (!p.entries.is_empty()).then_some(seen.len()));
            assert!(p.entries.len() <= max);
            seen.extend(ids_of(&p));
            assert_eq!(p.complete, seen.len() == all.len(), "forward max {max}");
            if p.complete {
                break;
            }
            req = PageRequest::After(seen.last().expect("non-empty page").clone());
        }
        assert_eq!(seen, want, "forward, max {max}");
        entries_come_back_as_stored(s, all).await;

        let mut seen: Vec<String> = Vec::new();
        let mut req = PageRequest::Last;
        loop {
            let p = page(s, D, "alice", ArchiveFilter::default(), req.clone(), max).await;
            assert_eq!(p.count, all.len());
            let mut ids = ids_of(&p);
            assert_eq!(
                p.first_index,
                (!ids.is_empty()).then(|| all.len() - seen.len() - ids.len())
            );
            ids.extend(seen);
            seen = ids;
            assert_eq!(p.complete, seen.len() == all.len(), "backward max {max}");
            if p.complete {
                break;
            }
            req = PageRequest::Before(seen[0].clone());
        }
        assert_eq!(seen, want, "backward, max {max}");
    }
    // max 0: the count alone.
    let p = page(
        s,
        D,
        "alice",
        ArchiveFilter::default(),
        PageRequest::First,
        0,
    )
    .await;
    assert_eq!(
        (p.count, p.entries.len(), p.first_index),
        (all.len(), 0, None)
    );
    // After the last / before the first: an empty, complete page.
    let p = page(
        s,
        D,
        "alice",
        ArchiveFilter::default(),
        PageRequest::After(all[30].id.clone()),
        5,
    )
    .await;
    assert!(p.entries.is_empty() && p.complete && p.count == all.len());
    let p = page(
        s,
        D,
        "alice",
        ArchiveFilter::default(),
        PageRequest::Before(all[0].id.clone()),
        5,
    )
    .await;
    assert!(p.entries.is_empty() && p.complete);
}

/// Entries come back exactly as stored (every field).
async fn entries_come_back_as_stored(s: &Storage, all: &[ArchiveEntry]) {
    let p = page(
        s,
        D,
        "alice",
        ArchiveFilter::default(),
        PageRequest::First,
        100,
    )
    .await;
    assert_eq!(p.entries, all);
}

async fn archive_filters(s: &Storage, all: &[ArchiveEntry]) {
    let expect = |pred: &dyn Fn(usize, &ArchiveEntry) -> bool| -> Vec<String> {
        all.iter()
            .enumerate()
            .filter(|(i, e)| pred(*i, e))
            .map(|(_, e)| e.id.clone())
            .collect()
    };
    let with = |bare: &str, resource: Option<&str>| ArchiveFilter {
        with: Some(WithFilter {
            bare: bare.to_owned(),
            resource: resource.map(str::to_owned),
        }),
        ..ArchiveFilter::default()
    };
    // A bare JID matches every resource; a full JID exactly.
    let bob = expect(&|_, e| e.with_bare == "bob@example.org");
    let p = page(
        s,
        D,
        "alice",
        with("bob@example.org", None),
        PageRequest::First,
        100,
    )
    .await;
    assert_eq!(
        (ids_of(&p), p.count, p.complete),
        (bob.clone(), bob.len(), true)
    );
    let r2 = expect(&|_, e| e.with_bare == "bob@example.org" && e.with_resource == "r2");
    let p = page(
        s,
        D,
        "alice",
        with("bob@example.org", Some("r2")),
        PageRequest::First,
        100,
    )
    .await;
    assert_eq!(ids_of(&p), r2);
    let p = page(
        s,
        D,
        "alice",
        with("nobody@example.org", None),
        PageRequest::Last,
        100,
    )
    .await;
    assert_eq!((p.count, p.complete), (0, true));

    // Paging within a filtered set: the last 3 of bob's, then the 3 before them.
    let p = page(
        s,
        D,
        "alice",
        with("bob@example.org", None),
        PageRequest::Last,
        3,
    )
    .await;
    assert_eq!(ids_of(&p), bob[bob.len() - 3..]);
    assert_eq!((p.first_index, p.complete), (Some(bob.len() - 3), false));
    let p = page(
        s,
        D,
        "alice",
        with("bob@example.org", None),
        PageRequest::Before(bob[bob.len() - 3].clone()),
        3,
    )
    .await;
    assert_eq!(ids_of(&p), bob[bob.len() - 6..bob.len() - 3]);
    // RSM after an id that isn't in the filtered set (but is in the archive): the page
    // starts after its position.
    let carol_first = &all[2].id;
    let p = page(
        s,
        D,
        "alice",
        with("bob@example.org", None),
        PageRequest::After(carol_first.clone()),
        2,
    )
    .await;
    assert_eq!(ids_of(&p), bob[2..4]);
    assert_eq!(p.first_index, Some(2));

    // start and end are inclusive.
    let f = ArchiveFilter {
        start_us: Some(all[5].timestamp_us),
        end_us: Some(all[12].timestamp_us),
        ..ArchiveFilter::default()
    };
    let p = page(s, D, "alice", f.clone(), PageRequest::First, 100).await;
    assert_eq!(ids_of(&p), expect(&|i, _| (5..=12).contains(&i)));
    let p = page(s, D, "alice", f, PageRequest::Last, 3).await;
    assert_eq!(ids_of(&p), expect(&|i, _| (10..=12).contains(&i)));
    assert_eq!(p.first_index, Some(5));
    // Between two timestamps; an end before the start selects nothing.
    let f = ArchiveFilter {
        start_us: Some(all[5].timestamp_us + 1),
        end_us: Some(all[4].timestamp_us),
        ..ArchiveFilter::default()
    };
    assert_eq!(
        page(s, D, "alice", f, PageRequest::First, 100).await.count,
        0
    );
    // The two entries sharing the last timestamp both match an end at it.
    let f = ArchiveFilter {
        start_us: Some(all[29].timestamp_us),
        ..ArchiveFilter::default()
    };
    assert_eq!(
        page(s, D, "alice", f, PageRequest::First, 100).await.count,
        2
    );

    // after-id / before-id are exclusive, combine with each other and with `with`.
    let f = ArchiveFilter {
        after_id: Some(all[3].id.clone()),
        before_id: Some(all[20].id.clone()),
        ..with("bob@example.org", None)
    };
    let p = page(s, D, "alice", f, PageRequest::First, 100).await;
    assert_eq!(
        ids_of(&p),
        expect(&|i, e| i > 3 && i < 20 && e.with_bare == "bob@example.org")
    );
    let f = ArchiveFilter {
        after_id: Some(all[27].id.clone()),
        ..ArchiveFilter::default()
    };
    let p = page(s, D, "alice", f, PageRequest::First, 100).await;
    assert_eq!(ids_of(&p), expect(&|i, _| i > 27));

    // ids: those entries, in archive order whatever order they were asked in.
    let f = ArchiveFilter {
        ids: Some(vec![
            all[9].id.clone(),
            all[2].id.clone(),
            all[30].id.clone(),
        ]),
        ..ArchiveFilter::default()
    };
    let p = page(s, D, "alice", f.clone(), PageRequest::First, 100).await;
    assert_eq!(ids_of(&p), expect(&|i, _| [2, 9, 30].contains(&i)));
    let p = page(s, D, "alice", f, PageRequest::First, 2).await;
    assert_eq!((p.count, p.entries.len(), p.complete), (3, 2, false));
    // bob's archive is his own.
    let p = page(
        s,
        D,
        "bob",
        ArchiveFilter::default(),
        PageRequest::First,
        100,
    )
    .await;
    assert_eq!(p.count, 1);
    assert_eq!(p.entries[0].with_bare, "alice@example.org");
}

async fn archive_unknown_ids(s: &Storage, all: &[ArchiveEntry]) {
    let unknown = "no-such-id".to_owned();
    let queries = [
        (
            ArchiveFilter {
                after_id: Some(unknown.clone()),
                ..ArchiveFilter::default()
            },
            PageRequest::First,
        ),
        (
            ArchiveFilter {
                before_id: Some(unknown.clone()),
                ..ArchiveFilter::default()
            },
            PageRequest::First,
        ),
        (
            ArchiveFilter {
                ids: Some(vec![all[1].id.clone(), unknown.clone()]),
                ..ArchiveFilter::default()
            },
            PageRequest::First,
        ),
        (
            ArchiveFilter::default(),
            PageRequest::After(unknown.clone()),
        ),
        (
            ArchiveFilter::default(),
            PageRequest::Before(unknown.clone()),
        ),
        // Another account's id is unknown here.
        (
            ArchiveFilter::default(),
            PageRequest::After(all[5].id.clone()),
        ),
    ];
    for (i, (filter, req)) in queries.into_iter().enumerate() {
        let user = if i == 5 { "bob" } else { "alice" };
        let r = s
            .archive
            .query_archive(
                D,
                user,
                &ArchiveQuery {
                    filter,
                    page: req,
                    max: 10,
                },
            )
            .await;
        assert!(is_not_found(r), "query {i}");
    }
}

async fn archive_purge(s: &Storage) {
    let before = page(
        s,
        D,
        "alice",
        ArchiveFilter::default(),
        PageRequest::First,
        100,
    )
    .await;
    let cutoff = before.entries[7].timestamp_us;
    // In batches of 3: alice's 7 older entries and bob's one (timestamp 5).
    let mut batches = Vec::new();
    loop {
        let n = s.archive.purge_archive(cutoff, 3).await.expect("purge");
        batches.push(n);
        if n < 3 {
            break;
        }
    }
    assert_eq!(batches.iter().sum::<usize>(), 8, "{batches:?}");
    assert!(batches.iter().all(|n| *n <= 3));
    let after = page(
        s,
        D,
        "alice",
        ArchiveFilter::default(),
        PageRequest::First,
        100,
    )
    .await;
    assert_eq!(after.entries, before.entries[7..]);
    // Counts and first indexes after a purge are those of what is left.
    let left = &before.entries[7..];
    assert_eq!((after.count, after.first_index), (left.len(), Some(0)));
    let p = page(
        s,
        D,
        "alice",
        ArchiveFilter::default(),
        PageRequest::After(left[2].id.clone()),
        4,
    )
    .await;
    assert_eq!(p.entries, left[3..7]);
    assert_eq!((p.count, p.first_index), (left.len(), Some(3)));
    let p = page(
        s,
        D,
        "alice",
        ArchiveFilter::default(),
        PageRequest::Last,
        4,
    )
    .await;
    assert_eq!((p.count, p.first_index), (left.len(), Some(left.len() - 4)));
    let bob_left: Vec<String> = left
        .iter()
        .filter(|e| e.with_bare == "bob@example.org")
        .map(|e| e.id.clone())
        .collect();
    let bob = ArchiveFilter {
        with: Some(WithFilter {
            bare: "bob@example.org".into(),
            resource: None,
        }),
        ..ArchiveFilter::default()
    };
    let p = page(s, D, "alice", bob.clone(), PageRequest::Last, 2).await;
    assert_eq!(ids_of(&p), bob_left[bob_left.len() - 2..]);
    assert_eq!(
        (p.count, p.first_index),
        (bob_left.len(), Some(bob_left.len() - 2))
    );
    let p = page(
        s,
        D,
        "alice",
        bob,
        PageRequest::After(bob_left[0].clone()),
        1,
    )
    .await;
    assert_eq!((p.count, p.first_index), (bob_left.len(), Some(1)));
    let window = ArchiveFilter {
        start_us: Some(left[5].timestamp_us),
        end_us: Some(left[10].timestamp_us),
        ..ArchiveFilter::default()
    };
    let p = page(
        s,
        D,
        "alice",
        window,
        PageRequest::After(left[6].id.clone()),
        2,
    )
    .await;
    assert_eq!(p.entries, left[7..9]);
    assert_eq!((p.count, p.first_index, p.complete), (6, Some(2), false));
    assert_eq!(
        page(
            s,
            D,
            "bob",
            ArchiveFilter::default(),
            PageRequest::First,
            100
        )
        .await
        .count,
        0
    );
    assert_eq!(s.archive.purge_archive(cutoff, 3).await.expect("purge"), 0);
    let (first, _) = s
        .archive
        .archive_bounds(D, "alice")
        .await
        .expect("b")
        .expect("some");
    assert_eq!(first.id, before.entries[7].id);
}

/// Appends from many tasks at once (as many connections archive at once): each is stored
/// exactly once, a failure (unknown account, duplicate id) fails only itself, and every
/// archive stays in time order.
async fn archive_concurrent(s: &Storage) {
    let before = page(
        s,
        D,
        "bob",
        ArchiveFilter::default(),
        PageRequest::First,
        1000,
    )
    .await
    .count;
    let mut tasks = Vec::new();
    for n in 0..64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let user = match n % 3 {
                0 => "bob",
                1 => "ghost",
                _ => "alice",
            };
            let e = ArchiveEntry {
                id: format!("c{n}"),
                ..archived(n, "x@example.net", "", 3_000_000 - n as i64)
            };
            let first = s.archive.append_archive(D, user, &e).await;
            let again = s.archive.append_archive(D, user, &e).await;
            (user, first, again)
        }));
    }
    let mut stored = std::collections::HashMap::new();
    for t in tasks {
        let (user, first, again) = t.await.expect("task");
        if user == "ghost" {
            assert!(is_not_found(first) && is_not_found(again));
        } else {
            first.expect("stored");
            assert!(
                matches!(again, Err(StorageError::AlreadyExists)),
                "{again:?}"
            );
            *stored.entry(user).or_insert(0usize) += 1;
        }
    }
    let bob = page(
        s,
        D,
        "bob",
        ArchiveFilter::default(),
        PageRequest::First,
        1000,
    )
    .await;
    assert_eq!(bob.count, before + stored["bob"]);
    let alice = page(
        s,
        D,
        "alice",
        ArchiveFilter::default(),
        PageRequest::First,
        1000,
    )
    .await;
    for p in [&bob, &alice] {
        assert!(p
            .entries
            .windows(2)
            .all(|w| w[0].timestamp_us <= w[1].timestamp_us));
    }
}

// ---------------------------------------------------------------------------------
// PubSub

/// The service domain the PubSub checks use.
const PS: PubSubService<'static> = PubSubService::Domain("pubsub.example.org");

/// The PEP service of `user@example.org`.
fn pep(user: &'static str) -> PubSubService<'static> {
    PubSubService::Account { domain: D, user }
}

/// Item `id`, with a publisher, payload and time derived from `n`.
fn ps_item(id: &str, n: i64) -> ItemRecord {
    ItemRecord {
        id: id.to_owned(),
        publisher: format!("p{n}@example.org/r"),
        payload: format!("<entry xmlns='urn:x' n='{n}'>caf\u{e9} &amp; \u{1F426}</entry>"),
        published_us: 1_700_000_000_000_000 + n,
    }
}

fn ps_sub(jid: &str, subid: &str, state: &str) -> SubscriptionRecord {
    SubscriptionRecord {
        jid: jid.to_owned(),
        subid: subid.to_owned(),
        state: state.to_owned(),
        options: format!("<x xmlns='jabber:x:data' type='submit'><!-- {jid} {subid} --></x>"),
    }
}

fn page_sel<'a>(after: Option<&'a str>, before: Option<&'a str>, max: usize) -> ItemSelection<'a> {
    ItemSelection::Page { after, before, max }
}

fn item_ids(p: &ItemPage) -> Vec<&str> {
    p.items.iter().map(|i| i.id.as_str()).collect()
}

/// Every item id of a node, newest first.
async fn all_item_ids(s: &Storage, svc: PubSubService<'_>, node: &str) -> Vec<String> {
    let p = s
        .pubsub
        .get_items(svc, node, page_sel(None, None, usize::MAX))
        .await
        .expect("items");
    assert_eq!(p.count, p.items.len(), "count of {node}");
    p.items.into_iter().map(|i| i.id).collect()
}

async fn publish(s: &Storage, svc: PubSubService<'_>, node: &str, id: &str, n: i64) -> Published {
    s.pubsub
        .publish_item(svc, node, &ps_item(id, n), 1000, 100_000)
        .await
        .expect("publish")
}

async fn create_node(s: &Storage, svc: PubSubService<'_>, node: &str) {
    s.pubsub
        .create_node(svc, node, "{}", "owner@example.org", 100)
        .await
        .expect("create node");
}

/// Deletes every node of a service (the checks leave no node behind).
async fn delete_nodes(s: &Storage, svc: PubSubService<'_>) {
    for n in s.pubsub.list_nodes(svc).await.expect("list") {
        assert!(s.pubsub.delete_node(svc, &n.node).await.expect("delete"));
    }
    assert!(s.pubsub.list_nodes(svc).await.expect("list").is_empty());
}

fn affs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// The whole [`crate::PubSubStore`] contract, on a service domain and on a PEP service.
/// Leaves no account and no node behind.
pub async fn pubsub_store(s: &Storage) {
    assert_no_accounts(s).await;
    pubsub_unknown(s).await;
    create(s, D, "alice").await;
    for svc in [PS, pep("alice")] {
        pubsub_nodes(s, svc).await;
        pubsub_delete_node(s, svc).await;
        pubsub_publish(s, svc).await;
        pubsub_service_items(s, svc).await;
        pubsub_paging(s, svc).await;
        pubsub_ids(s, svc).await;
        pubsub_retract_purge(s, svc).await;
        pubsub_affiliations(s, svc).await;
        pubsub_subscriptions(s, svc).await;
        pubsub_concurrent(s, svc).await;
        assert!(s.pubsub.list_nodes(svc).await.expect("list").is_empty());
    }
    drop_account(s, D, "alice").await;
    pubsub_services_apart(s).await;
    pubsub_account_deletion(s).await;
    assert_no_accounts(s).await;
}

/// No node anywhere: reads are empty; writes to an absent node fail or do nothing as
/// documented; every write to the service of an account that doesn't exist is NotFound,
/// even those that would be a no-op on a domain service.
async fn pubsub_unknown(s: &Storage) {
    let p = &s.pubsub;
    for svc in [PS, pep("alice")] {
        assert_eq!(p.get_node(svc, "n").await.expect("get"), None);
        assert!(p.list_nodes(svc).await.expect("list").is_empty());
        assert_eq!(
            p.get_items(svc, "n", page_sel(None, None, 10))
                .await
                .expect("items"),
            ItemPage::default()
        );
        let ids = strings(&["a", "b"]);
        assert_eq!(
            p.get_items(svc, "n", ItemSelection::Ids(&ids))
                .await
                .expect("items"),
            ItemPage::default()
        );
        // An unknown node has no item to page from.
        assert!(is_not_found(
            p.get_items(svc, "n", page_sel(Some("a"), None, 10)).await
        ));
        assert!(is_not_found(
            p.get_items(svc, "n", page_sel(None, Some("a"), 10)).await
        ));
        assert!(p.affiliations(svc, "n").await.expect("affs").is_empty());
        assert!(p
            .affiliations_of(svc, "bob@example.org")
            .await
            .expect("affs")
            .is_empty());
        assert!(p.subscriptions(svc, "n").await.expect("subs").is_empty());
        assert!(p
            .subscriptions_of(svc, "bob@example.org", true)
            .await
            .expect("subs")
            .is_empty());
        // Writes that need the node.
        assert!(is_not_found(p.set_node_config(svc, "n", "{}").await));
        assert!(is_not_found(
            p.publish_item(svc, "n", &ps_item("a", 1), 10, 10).await
        ));
        assert!(is_not_found(
            p.set_affiliation(svc, "n", "bob@example.org", Some("member"))
                .await
        ));
        assert!(is_not_found(
            p.set_affiliation(svc, "n", "bob@example.org", None).await
        ));
        assert!(is_not_found(
            p.set_subscription(svc, "n", &ps_sub("bob@example.org", "1", "subscribed"), 10)
                .await
        ));
    }
    // The account doesn't exist: no write to its service.
    let svc = pep("alice");
    assert!(is_not_found(
        p.create_node(svc, "n", "{}", "alice@example.org", 10).await
    ));
    assert!(is_not_found(p.delete_node(svc, "n").await));
    assert!(is_not_found(p.retract_item(svc, "n", "a").await));
    assert!(is_not_found(p.purge_node(svc, "n").await));
    assert!(is_not_found(
        p.remove_subscription(svc, "n", "bob@example.org", None)
            .await
    ));
    // A domain service needs no account; an absent node is just absent.
    assert!(!p.delete_node(PS, "n").await.expect("delete"));
    assert!(!p.retract_item(PS, "n", "a").await.expect("retract"));
    assert_eq!(p.purge_node(PS, "n").await.expect("purge"), 0);
    assert_eq!(
        p.remove_subscription(PS, "n", "bob@example.org", Some("1"))
            .await
            .expect("remove"),
        0
    );
    // Nothing was created along the way.
    for svc in [PS, pep("alice")] {
        assert!(p.list_nodes(svc).await.expect("list").is_empty());
    }
}

/// Creating, listing, configuring nodes; AlreadyExists; `max_nodes`.
async fn pubsub_nodes(s: &Storage, svc: PubSubService<'static>) {
    let p = &s.pubsub;
    let odd = "{\"title\":\"Caf\u{e9} 'quoted' \\\"and\\\" <tags> \u{1F426}\",\"x\":\"\n\"}";
    p.create_node(svc, "urn:xmpp:microblog:0", odd, "hamlet@denmark.lit", 3)
        .await
        .expect("create");
    assert_eq!(
        p.get_node(svc, "urn:xmpp:microblog:0").await.expect("get"),
        Some(NodeRecord {
            node: "urn:xmpp:microblog:0".into(),
            config: odd.into(),
        })
    );
    // The creator is the owner.
    assert_eq!(
        p.affiliations(svc, "urn:xmpp:microblog:0")
            .await
            .expect("affs"),
        affs(&[("hamlet@denmark.lit", "owner")])
    );
    // Creating it again is refused and changes nothing.
    assert!(matches!(
        p.create_node(svc, "urn:xmpp:microblog:0", "{}", "other@denmark.lit", 3)
            .await,
        Err(StorageError::AlreadyExists)
    ));
    assert_eq!(
        p.get_node(svc, "urn:xmpp:microblog:0")
            .await
            .expect("get")
            .map(|n| n.config),
        Some(odd.to_owned())
    );
    assert_eq!(
        p.affiliations(svc, "urn:xmpp:microblog:0")
            .await
            .expect("affs"),
        affs(&[("hamlet@denmark.lit", "owner")])
    );
    p.create_node(svc, "alpha", "{\"a\":1}", "hamlet@denmark.lit", 3)
        .await
        .expect("create");
    p.create_node(svc, "Zeta", "{\"z\":1}", "hamlet@denmark.lit", 3)
        .await
        .expect("create");
    // At the limit: a new node is refused, an existing one is still AlreadyExists.
    assert!(is_limit(
        p.create_node(svc, "beta", "{}", "hamlet@denmark.lit", 3)
            .await
    ));
    assert!(matches!(
        p.create_node(svc, "alpha", "{}", "hamlet@denmark.lit", 3)
            .await,
        Err(StorageError::AlreadyExists)
    ));
    assert_eq!(p.get_node(svc, "beta").await.expect("get"), None);
    assert!(is_limit(
        p.create_node(svc, "beta", "{}", "hamlet@denmark.lit", 0)
            .await
    ));
    // Listed sorted by name, byte order.
    let names = |v: Vec<NodeRecord>| v.into_iter().map(|n| n.node).collect::<Vec<_>>();
    assert_eq!(
        names(p.list_nodes(svc).await.expect("list")),
        strings(&["Zeta", "alpha", "urn:xmpp:microblog:0"])
    );
    // A larger limit lets it in.
    p.create_node(svc, "beta", "{}", "hamlet@denmark.lit", 4)
        .await
        .expect("create");
    // Replacing a configuration changes that node only.
    p.set_node_config(svc, "alpha", "{\"a\":2}")
        .await
        .expect("config");
    let listed = p.list_nodes(svc).await.expect("list");
    assert_eq!(
        listed,
        vec![
            NodeRecord {
                node: "Zeta".into(),
                config: "{\"z\":1}".into()
            },
            NodeRecord {
                node: "alpha".into(),
                config: "{\"a\":2}".into()
            },
            NodeRecord {
                node: "beta".into(),
                config: "{}".into()
            },
            NodeRecord {
                node: "urn:xmpp:microblog:0".into(),
                config: odd.into()
            },
        ]
    );
    assert!(is_not_found(p.set_node_config(svc, "gamma", "{}").await));
    assert_eq!(p.get_node(svc, "gamma").await.expect("get"), None);
    // Node names are byte-exact.
    assert_eq!(p.get_node(svc, "Alpha").await.expect("get"), None);
    delete_nodes(s, svc).await;
}

/// Deleting a node deletes its items, affiliations and subscriptions, and only its.
async fn pubsub_delete_node(s: &Storage, svc: PubSubService<'static>) {
    let p = &s.pubsub;
    for node in ["doomed", "kept"] {
        create_node(s, svc, node).await;
        for i in 0..3 {
            publish(s, svc, node, &format!("i{i}"), i).await;
        }
        p.set_affiliation(svc, node, "bob@example.net", Some("publisher"))
            .await
            .expect("aff");
        p.set_subscription(svc, node, &ps_sub("bob@example.net", "s", "subscribed"), 10)
            .await
            .expect("sub");
    }
    assert!(p.delete_node(svc, "doomed").await.expect("delete"));
    assert_eq!(p.get_node(svc, "doomed").await.expect("get"), None);
    assert_eq!(
        p.get_items(svc, "doomed", page_sel(None, None, 10))
            .await
            .expect("items"),
        ItemPage::default()
    );
    assert!(p
        .affiliations(svc, "doomed")
        .await
        .expect("affs")
        .is_empty());
    assert!(p
        .subscriptions(svc, "doomed")
        .await
        .expect("subs")
        .is_empty());
    assert_eq!(
        p.affiliations_of(svc, "bob@example.net")
            .await
            .expect("affs"),
        affs(&[("kept", "publisher")])
    );
    assert_eq!(
        p.subscriptions_of(svc, "bob@example.net", false)
            .await
            .expect("subs"),
        vec![(
            "kept".to_owned(),
            ps_sub("bob@example.net", "s", "subscribed")
        )]
    );
    assert!(!p.delete_node(svc, "doomed").await.expect("delete again"));
    // The other node keeps everything.
    assert_eq!(
        all_item_ids(s, svc, "kept").await,
        strings(&["i2", "i1", "i0"])
    );
    assert_eq!(p.affiliations(svc, "kept").await.expect("affs").len(), 2);
    assert_eq!(p.subscriptions(svc, "kept").await.expect("subs").len(), 1);
    // Created again, the node starts empty, with its new owner only.
    p.create_node(svc, "doomed", "{\"new\":true}", "carol@example.net", 10)
        .await
        .expect("recreate");
    assert!(all_item_ids(s, svc, "doomed").await.is_empty());
    assert_eq!(
        p.affiliations(svc, "doomed").await.expect("affs"),
        affs(&[("carol@example.net", "owner")])
    );
    assert!(p
        .subscriptions(svc, "doomed")
        .await
        .expect("subs")
        .is_empty());
    // Its old items do not come back through an id either.
    let ids = strings(&["i0", "i1", "i2"]);
    assert_eq!(
        p.get_items(svc, "doomed", ItemSelection::Ids(&ids))
            .await
            .expect("items"),
        ItemPage::default()
    );
    delete_nodes(s, svc).await;
}

/// Items come back as stored, newest first; republishing replaces and makes newest;
/// `max_items` evicts the oldest (returned oldest first) and keeps at least the new one.
async fn pubsub_publish(s: &Storage, svc: PubSubService<'static>) {
    let p = &s.pubsub;
    create_node(s, svc, "n").await;
    create_node(s, svc, "other").await;
    publish(s, svc, "other", "i0", 100).await;
    for i in 0..5 {
        assert_eq!(
            publish(s, svc, "n", &format!("i{i}"), i).await,
            Published::default(),
            "a new id replaces nothing and evicts nothing"
        );
    }
    let page = p
        .get_items(svc, "n", page_sel(None, None, 100))
        .await
        .expect("items");
    assert_eq!(item_ids(&page), ["i4", "i3", "i2", "i1", "i0"]);
    assert_eq!((page.count, page.first_index), (5, 0));
    // Every field as stored.
    assert_eq!(page.items[0], ps_item("i4", 4));
    assert_eq!(page.items[4], ps_item("i0", 0));
    // An empty payload is a payload.
    let empty = ItemRecord {
        payload: String::new(),
        ..ps_item("i1", 11)
    };
    // Republishing an id replaces it and moves it to the newest place.
    assert_eq!(
        p.publish_item(svc, "n", &empty, 1000, 100_000)
            .await
            .expect("republish"),
        Published {
            replaced: true,
            evicted: vec![]
        }
    );
    let page = p
        .get_items(svc, "n", page_sel(None, None, 100))
        .await
        .expect("items");
    assert_eq!(item_ids(&page), ["i1", "i4", "i3", "i2", "i0"]);
    assert_eq!(page.count, 5);
    assert_eq!(page.items[0], empty);
    // A lower max_items: the oldest go, oldest first.
    assert_eq!(
        p.publish_item(svc, "n", &ps_item("i5", 5), 3, 100_000)
            .await
            .expect("publish"),
        Published {
            replaced: false,
            evicted: strings(&["i0", "i2", "i3"])
        }
    );
    assert_eq!(
        all_item_ids(s, svc, "n").await,
        strings(&["i5", "i1", "i4"])
    );
    // Republishing at the limit evicts nothing.
    assert_eq!(
        p.publish_item(svc, "n", &ps_item("i4", 44), 3, 100_000)
            .await
            .expect("publish"),
        Published {
            replaced: true,
            evicted: vec![]
        }
    );
    assert_eq!(
        all_item_ids(s, svc, "n").await,
        strings(&["i4", "i5", "i1"])
    );
    // Republishing with a lower limit replaces and evicts.
    assert_eq!(
        p.publish_item(svc, "n", &ps_item("i1", 111), 2, 100_000)
            .await
            .expect("publish"),
        Published {
            replaced: true,
            evicted: strings(&["i5"])
        }
    );
    assert_eq!(all_item_ids(s, svc, "n").await, strings(&["i1", "i4"]));
    // max_items 0 still keeps the item just published.
    assert_eq!(
        p.publish_item(svc, "n", &ps_item("i6", 6), 0, 100_000)
            .await
            .expect("publish"),
        Published {
            replaced: false,
            evicted: strings(&["i4", "i1"])
        }
    );
    assert_eq!(all_item_ids(s, svc, "n").await, strings(&["i6"]));
    assert_eq!(
        p.publish_item(svc, "n", &ps_item("i6", 66), 1, 100_000)
            .await
            .expect("publish"),
        Published {
            replaced: true,
            evicted: vec![]
        }
    );
    assert_eq!(
        p.publish_item(svc, "n", &ps_item("i7", 7), 1, 100_000)
            .await
            .expect("publish"),
        Published {
            replaced: false,
            evicted: strings(&["i6"])
        }
    );
    let page = p
        .get_items(svc, "n", page_sel(None, None, 100))
        .await
        .expect("items");
    assert_eq!(page.items, vec![ps_item("i7", 7)]);
    assert_eq!(page.count, 1);
    // An evicted id is gone, and publishing it again is new.
    let ids = strings(&["i6", "i0"]);
    assert!(p
        .get_items(svc, "n", ItemSelection::Ids(&ids))
        .await
        .expect("items")
        .items
        .is_empty());
    assert!(!publish(s, svc, "n", "i6", 8).await.replaced);
    // Item ids are per node: the other node's i0 was never touched.
    assert_eq!(
        p.get_items(svc, "other", page_sel(None, None, 10))
            .await
            .expect("items")
            .items,
        vec![ps_item("i0", 100)]
    );
    // Ids are byte-exact.
    assert!(!publish(s, svc, "n", "I6", 9).await.replaced);
    assert_eq!(
        all_item_ids(s, svc, "n").await,
        strings(&["I6", "i6", "i7"])
    );
    delete_nodes(s, svc).await;
}

/// `max_service_items` counts the items of every node of the service, after eviction;
/// a refused publication writes nothing.
async fn pubsub_service_items(s: &Storage, svc: PubSubService<'static>) {
    let p = &s.pubsub;
    let pub_ = |node: &'static str, id: &'static str, max_items: usize, max_service: usize| {
        let s = s.clone();
        async move {
            s.pubsub
                .publish_item(svc, node, &ps_item(id, 7), max_items, max_service)
                .await
        }
    };
    create_node(s, svc, "a").await;
    create_node(s, svc, "b").await;
    pub_("a", "a1", 10, 3).await.expect("a1");
    pub_("a", "a2", 10, 3).await.expect("a2");
    pub_("b", "b1", 10, 3).await.expect("b1");
    // Three items in the service: a fourth is refused, whichever node it goes to.
    assert!(is_limit(pub_("b", "b2", 10, 3).await));
    assert!(is_limit(pub_("a", "a3", 10, 3).await));
    assert_eq!(all_item_ids(s, svc, "a").await, strings(&["a2", "a1"]));
    assert_eq!(all_item_ids(s, svc, "b").await, strings(&["b1"]));
    // Replacing keeps the total: allowed at the limit.
    assert!(pub_("a", "a1", 10, 3).await.expect("replace").replaced);
    assert_eq!(all_item_ids(s, svc, "a").await, strings(&["a1", "a2"]));
    // A refused replacement leaves the old item (and its place) as it was.
    let before = p
        .get_items(svc, "a", page_sel(None, None, 10))
        .await
        .expect("items");
    assert!(is_limit(
        p.publish_item(svc, "a", &ps_item("a2", 99), 10, 2).await
    ));
    assert_eq!(
        p.get_items(svc, "a", page_sel(None, None, 10))
            .await
            .expect("items"),
        before
    );
    // Eviction makes room: node a at 2 items with max_items 2 evicts one for the new one.
    assert_eq!(
        pub_("a", "a3", 2, 3).await.expect("a3").evicted,
        strings(&["a2"])
    );
    assert_eq!(all_item_ids(s, svc, "a").await, strings(&["a3", "a1"]));
    // Retracting frees a place.
    assert!(p.retract_item(svc, "a", "a1").await.expect("retract"));
    pub_("b", "b2", 10, 3).await.expect("b2");
    assert!(is_limit(pub_("b", "b3", 10, 3).await));
    // Purging frees its node's places.
    assert_eq!(p.purge_node(svc, "b").await.expect("purge"), 2);
    pub_("b", "b3", 10, 3).await.expect("b3");
    pub_("b", "b4", 10, 3).await.expect("b4");
    assert!(is_limit(pub_("a", "a4", 10, 3).await));
    // Deleting a node frees its places.
    assert!(p.delete_node(svc, "b").await.expect("delete"));
    create_node(s, svc, "b").await;
    pub_("b", "b5", 10, 3).await.expect("b5");
    pub_("a", "a5", 10, 3).await.expect("a5");
    assert!(is_limit(pub_("a", "a6", 10, 3).await));
    assert_eq!(all_item_ids(s, svc, "a").await, strings(&["a5", "a3"]));
    assert_eq!(all_item_ids(s, svc, "b").await, strings(&["b5"]));
    // A limit of 0 refuses any new item.
    assert!(is_limit(pub_("a", "a7", 10, 0).await));
    // Another service's items do not count.
    let other = match svc {
        PubSubService::Domain(_) => pep("alice"),
        PubSubService::Account { .. } => PS,
    };
    create_node(s, other, "a").await;
    for id in ["x1", "x2", "x3"] {
        p.publish_item(other, "a", &ps_item(id, 1), 10, 3)
            .await
            .expect("other service");
    }
    delete_nodes(s, other).await;
    delete_nodes(s, svc).await;
}

/// RSM pages of the newest-first list: from either end of any item, every size, with
/// `count` and `first_index`; unknown ids are NotFound.
async fn pubsub_paging(s: &Storage, svc: PubSubService<'static>) {
    let p = &s.pubsub;
    create_node(s, svc, "feed").await;
    // Ids in an order unrelated to publication order, as random ids are.
    let id = |n: usize| format!("{:02}-{}", (n * 7) % 20, n);
    for n in 0..20 {
        publish(s, svc, "feed", &id(n), n as i64).await;
    }
    let all: Vec<String> = (0..20).rev().map(id).collect();
    assert_eq!(all_item_ids(s, svc, "feed").await, all);
    let get = |after: Option<String>, before: Option<String>, max: usize| {
        let s = s.clone();
        async move {
            s.pubsub
                .get_items(
                    svc,
                    "feed",
                    page_sel(after.as_deref(), before.as_deref(), max),
                )
                .await
        }
    };
    // The first page.
    let first = get(None, None, 5).await.expect("page");
    assert_eq!(item_ids(&first), all[..5].to_vec());
    assert_eq!((first.count, first.first_index), (20, 0));
    // The last page (an empty RSM `<before/>`): the oldest, newest first.
    for (max, from) in [(5, 15), (20, 0), (25, 0), (0, 20)] {
        let last = p
            .get_items(svc, "feed", ItemSelection::Oldest { max })
            .await
            .expect("last page");
        assert_eq!(item_ids(&last), all[from..].to_vec(), "max {max}");
        assert_eq!((last.count, last.first_index), (20, from), "max {max}");
    }
    let none = p
        .get_items(svc, "nothing", ItemSelection::Oldest { max: 5 })
        .await
        .expect("unknown node");
    assert_eq!((none.items.len(), none.count), (0, 0));
    for max in 1..=21 {
        // Forwards (older) with `after`, from the newest.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = get(after.clone(), None, max).await.expect("page");
            assert_eq!(page.count, 20);
            assert_eq!(page.first_index, seen.len(), "max {max}");
            assert!(page.items.len() <= max);
            if page.items.is_empty() {
                break;
            }
            after = page.items.last().map(|i| i.id.clone());
            seen.extend(page.items.into_iter().map(|i| i.id));
        }
        assert_eq!(seen, all, "forwards, max {max}");
        // Backwards (newer) with `before`, from the oldest.
        let mut seen: Vec<String> = vec![all[19].clone()];
        let mut before = Some(all[19].clone());
        loop {
            let page = get(None, before.clone(), max).await.expect("page");
            assert_eq!(page.count, 20);
            assert!(page.items.len() <= max);
            assert_eq!(
                page.first_index + page.items.len(),
                20 - seen.len(),
                "max {max}"
            );
            if page.items.is_empty() {
                break;
            }
            assert_eq!(
                item_ids(&page),
                all[page.first_index..page.first_index + page.items.len()].to_vec()
            );
            before = page.items.first().map(|i| i.id.clone());
            let mut ids: Vec<String> = page.items.into_iter().map(|i| i.id).collect();
            ids.extend(seen);
            seen = ids;
        }
        assert_eq!(seen, all, "backwards, max {max}");
    }
    // After the oldest, before the newest: nothing, at the end and the start.
    let page = get(Some(all[19].clone()), None, 5).await.expect("page");
    assert_eq!(
        (page.items.len(), page.first_index, page.count),
        (0, 20, 20)
    );
    let page = get(None, Some(all[0].clone()), 5).await.expect("page");
    assert_eq!((page.items.len(), page.first_index, page.count), (0, 0, 20));
    // max 0: no item, the position where the page would start.
    let page = get(None, None, 0).await.expect("page");
    assert_eq!((page.items.len(), page.first_index, page.count), (0, 0, 20));
    let page = get(Some(all[4].clone()), None, 0).await.expect("page");
    assert_eq!((page.items.len(), page.first_index, page.count), (0, 5, 20));
    // Both: the `max` items just newer than `before` and older than `after`.
    let page = get(Some(all[4].clone()), Some(all[14].clone()), 3)
        .await
        .expect("page");
    assert_eq!(item_ids(&page), all[11..14].to_vec());
    assert_eq!((page.first_index, page.count), (11, 20));
    let page = get(Some(all[4].clone()), Some(all[14].clone()), 20)
        .await
        .expect("page");
    assert_eq!(item_ids(&page), all[5..14].to_vec());
    assert_eq!(page.first_index, 5);
    // ... and nothing when `after` is not newer than `before`.
    let page = get(Some(all[14].clone()), Some(all[4].clone()), 20)
        .await
        .expect("page");
    assert_eq!((page.items.len(), page.first_index), (0, 4));
    // Unknown ids, and ids of another node, are NotFound.
    create_node(s, svc, "other").await;
    publish(s, svc, "other", "elsewhere", 1).await;
    for bad in ["nope", "elsewhere", ""] {
        assert!(is_not_found(get(Some(bad.into()), None, 5).await), "{bad}");
        assert!(is_not_found(get(None, Some(bad.into()), 5).await), "{bad}");
        assert!(is_not_found(
            get(Some(all[3].clone()), Some(bad.into()), 5).await
        ));
    }
    // A retracted id is unknown; a republished one pages from its new place.
    assert!(p
        .retract_item(svc, "feed", &all[10])
        .await
        .expect("retract"));
    assert!(is_not_found(get(Some(all[10].clone()), None, 5).await));
    publish(s, svc, "feed", &all[15], 99).await;
    let page = get(None, None, 3).await.expect("page");
    assert_eq!(item_ids(&page), [&all[15], &all[0], &all[1]]);
    assert_eq!(page.count, 19);
    let page = get(Some(all[15].clone()), None, 2).await.expect("page");
    assert_eq!(item_ids(&page), [&all[0], &all[1]]);
    assert_eq!(page.first_index, 1);
    let page = get(None, Some(all[16].clone()), 2).await.expect("page");
    assert_eq!(item_ids(&page), [&all[13], &all[14]]);
    assert_eq!((page.first_index, page.count), (13, 19));
    delete_nodes(s, svc).await;
}

/// Selection by ids: in the order given, unknown ids skipped, `count` the node's.
async fn pubsub_ids(s: &Storage, svc: PubSubService<'static>) {
    let p = &s.pubsub;
    create_node(s, svc, "n").await;
    create_node(s, svc, "other").await;
    for i in 0..6 {
        publish(s, svc, "n", &format!("i{i}"), i).await;
    }
    publish(s, svc, "other", "x", 1).await;
    let ids = strings(&["i1", "nope", "i4", "x", "i0"]);
    let page = p
        .get_items(svc, "n", ItemSelection::Ids(&ids))
        .await
        .expect("items");
    assert_eq!(
        page.items,
        vec![ps_item("i1", 1), ps_item("i4", 4), ps_item("i0", 0)]
    );
    assert_eq!(page.count, 6);
    // Its first item's place in the newest-first list (i5 i4 i3 i2 i1 i0).
    assert_eq!(page.first_index, 4);
    let ids = strings(&["nope", "x"]);
    assert_eq!(
        p.get_items(svc, "n", ItemSelection::Ids(&ids))
            .await
            .expect("items"),
        ItemPage {
            items: vec![],
            count: 6,
            first_index: 0
        }
    );
    assert_eq!(
        p.get_items(svc, "n", ItemSelection::Ids(&[]))
            .await
            .expect("items"),
        ItemPage {
            items: vec![],
            count: 6,
            first_index: 0
        }
    );
    let ids = strings(&["i5"]);
    assert_eq!(
        p.get_items(svc, "n", ItemSelection::Ids(&ids))
            .await
            .expect("items")
            .items,
        vec![ps_item("i5", 5)]
    );
    delete_nodes(s, svc).await;
}

/// Retracting one item and purging a node.
async fn pubsub_retract_purge(s: &Storage, svc: PubSubService<'static>) {
    let p = &s.pubsub;
    create_node(s, svc, "r").await;
    create_node(s, svc, "q").await;
    for i in 0..5 {
        publish(s, svc, "r", &format!("i{i}"), i).await;
    }
    publish(s, svc, "q", "i2", 1).await;
    p.set_affiliation(svc, "r", "bob@example.net", Some("publisher"))
        .await
        .expect("aff");
    p.set_subscription(svc, "r", &ps_sub("bob@example.net", "s", "subscribed"), 10)
        .await
        .expect("sub");
    assert!(p.retract_item(svc, "r", "i2").await.expect("retract"));
    assert!(!p.retract_item(svc, "r", "i2").await.expect("again"));
    assert!(!p.retract_item(svc, "r", "nope").await.expect("unknown"));
    assert!(!p.retract_item(svc, "absent", "i1").await.expect("no node"));
    assert_eq!(
        all_item_ids(s, svc, "r").await,
        strings(&["i4", "i3", "i1", "i0"])
    );
    // Same id in another node: untouched.
    assert_eq!(all_item_ids(s, svc, "q").await, strings(&["i2"]));
    // Retracting the newest and the oldest.
    assert!(p.retract_item(svc, "r", "i4").await.expect("retract"));
    assert!(p.retract_item(svc, "r", "i0").await.expect("retract"));
    assert_eq!(all_item_ids(s, svc, "r").await, strings(&["i3", "i1"]));
    // Purging removes every item of that node only, and reports how many.
    assert_eq!(p.purge_node(svc, "r").await.expect("purge"), 2);
    assert_eq!(
        p.get_items(svc, "r", page_sel(None, None, 10))
            .await
            .expect("items"),
        ItemPage::default()
    );
    assert_eq!(p.purge_node(svc, "r").await.expect("again"), 0);
    assert_eq!(all_item_ids(s, svc, "q").await, strings(&["i2"]));
    // The node, its configuration, affiliations and subscriptions stay.
    assert!(p.get_node(svc, "r").await.expect("get").is_some());
    assert_eq!(p.affiliations(svc, "r").await.expect("affs").len(), 2);
    assert_eq!(p.subscriptions(svc, "r").await.expect("subs").len(), 1);
    // And it takes items again.
    publish(s, svc, "r", "i0", 10).await;
    assert_eq!(all_item_ids(s, svc, "r").await, strings(&["i0"]));
    delete_nodes(s, svc).await;
}

/// Affiliations: set, replace, remove; sorted by JID; a JID's across nodes sorted by node.
async fn pubsub_affiliations(s: &Storage, svc: PubSubService<'static>) {
    let p = &s.pubsub;
    create_node(s, svc, "b").await;
    create_node(s, svc, "a").await;
    create_node(s, svc, "c").await;
    for (jid, aff) in [
        ("p@example.net", "publisher"),
        ("Z@example.net", "outcast"),
        ("m@example.net", "member"),
        ("m@example.net/res", "member"),
    ] {
        p.set_affiliation(svc, "a", jid, Some(aff))
            .await
            .expect("set");
    }
    assert_eq!(
        p.affiliations(svc, "a").await.expect("affs"),
        affs(&[
            ("Z@example.net", "outcast"),
            ("m@example.net", "member"),
            ("m@example.net/res", "member"),
            ("owner@example.org", "owner"),
            ("p@example.net", "publisher"),
        ])
    );
    // Replace, remove, remove what is absent.
    p.set_affiliation(svc, "a", "m@example.net", Some("publish-only"))
        .await
        .expect("replace");
    p.set_affiliation(svc, "a", "Z@example.net", None)
        .await
        .expect("remove");
    p.set_affiliation(svc, "a", "nobody@example.net", None)
        .await
        .expect("remove absent");
    assert_eq!(
        p.affiliations(svc, "a").await.expect("affs"),
        affs(&[
            ("m@example.net", "publish-only"),
            ("m@example.net/res", "member"),
            ("owner@example.org", "owner"),
            ("p@example.net", "publisher"),
        ])
    );
    // The owner's affiliation can change like any other.
    p.set_affiliation(svc, "c", "owner@example.org", None)
        .await
        .expect("remove owner");
    assert!(p.affiliations(svc, "c").await.expect("affs").is_empty());
    p.set_affiliation(svc, "b", "p@example.net", Some("member"))
        .await
        .expect("set");
    // One JID across the service's nodes, sorted by node; exact JIDs only.
    assert_eq!(
        p.affiliations_of(svc, "p@example.net").await.expect("of"),
        affs(&[("a", "publisher"), ("b", "member")])
    );
    assert_eq!(
        p.affiliations_of(svc, "owner@example.org")
            .await
            .expect("of"),
        affs(&[("a", "owner"), ("b", "owner")])
    );
    assert_eq!(
        p.affiliations_of(svc, "m@example.net").await.expect("of"),
        affs(&[("a", "publish-only")])
    );
    assert!(p
        .affiliations_of(svc, "nobody@example.net")
        .await
        .expect("of")
        .is_empty());
    // Another service doesn't see them.
    let other = match svc {
        PubSubService::Domain(_) => pep("alice"),
        PubSubService::Account { .. } => PS,
    };
    assert!(p
        .affiliations_of(other, "p@example.net")
        .await
        .expect("of")
        .is_empty());
    assert!(is_not_found(
        p.set_affiliation(svc, "absent", "p@example.net", Some("member"))
            .await
    ));
    delete_nodes(s, svc).await;
}

/// Subscriptions: set, replace, `max_per_jid`, remove, list, a JID's with and without its
/// full JIDs.
async fn pubsub_subscriptions(s: &Storage, svc: PubSubService<'static>) {
    let p = &s.pubsub;
    for node in ["a", "b", "c"] {
        create_node(s, svc, node).await;
    }
    let set = |node: &'static str, sub: SubscriptionRecord, max: usize| {
        let s = s.clone();
        async move { s.pubsub.set_subscription(svc, node, &sub, max).await }
    };
    set("a", ps_sub("bob@x", "s1", "pending"), 10)
        .await
        .expect("set");
    // Replacing (same JID and subid) changes state and options.
    let replaced = SubscriptionRecord {
        options: String::new(),
        ..ps_sub("bob@x", "s1", "subscribed")
    };
    set("a", replaced.clone(), 10).await.expect("replace");
    assert_eq!(
        p.subscriptions(svc, "a").await.expect("subs"),
        vec![replaced.clone()]
    );
    set("a", ps_sub("bob@x", "s2", "unconfigured"), 10)
        .await
        .expect("set");
    set("a", ps_sub("bob@x/phone", "s1", "subscribed"), 10)
        .await
        .expect("set");
    set("a", ps_sub("alice@x", "s9", "subscribed"), 10)
        .await
        .expect("set");
    // JIDs that share a prefix with bob@x but are not his.
    set("a", ps_sub("bob@x.org", "s0", "subscribed"), 10)
        .await
        .expect("set");
    set("b", ps_sub("bobby@x", "s0", "subscribed"), 10)
        .await
        .expect("set");
    set("b", ps_sub("bob@x0", "s0", "subscribed"), 10)
        .await
        .expect("set");
    assert_eq!(
        p.subscriptions(svc, "a").await.expect("subs"),
        vec![
            ps_sub("alice@x", "s9", "subscribed"),
            replaced.clone(),
            ps_sub("bob@x", "s2", "unconfigured"),
            ps_sub("bob@x.org", "s0", "subscribed"),
            ps_sub("bob@x/phone", "s1", "subscribed"),
        ]
    );
    // bob@x holds 2 on the service: a third is refused at 2, and nothing is written...
    assert!(is_limit(
        set("b", ps_sub("bob@x", "s3", "subscribed"), 2).await
    ));
    assert!(is_limit(
        set("a", ps_sub("bob@x", "s3", "subscribed"), 2).await
    ));
    assert_eq!(
        p.subscriptions(svc, "b").await.expect("subs"),
        vec![
            ps_sub("bob@x0", "s0", "subscribed"),
            ps_sub("bobby@x", "s0", "subscribed"),
        ]
    );
    // ... but replacing one of his is allowed at the limit.
    set("a", ps_sub("bob@x", "s2", "subscribed"), 2)
        .await
        .expect("replace at the limit");
    // Full JIDs count apart: bob@x/phone holds 1.
    set("b", ps_sub("bob@x/phone", "s1", "subscribed"), 2)
        .await
        .expect("full JID");
    assert!(is_limit(
        set("c", ps_sub("bob@x/phone", "s1", "subscribed"), 2).await
    ));
    assert!(is_limit(
        set("c", ps_sub("carol@x", "s1", "subscribed"), 0).await
    ));
    set("c", ps_sub("bob@x", "s3", "subscribed"), 3)
        .await
        .expect("under a larger limit");
    assert!(is_not_found(
        set("absent", ps_sub("bob@x", "s1", "subscribed"), 10).await
    ));
    // One JID's subscriptions, sorted by (node, subid); with its full JIDs on request.
    let of = |jid: &'static str, full: bool| {
        let s = s.clone();
        async move {
            s.pubsub
                .subscriptions_of(svc, jid, full)
                .await
                .expect("subscriptions_of")
                .into_iter()
                .map(|(n, sub)| (n, sub.jid, sub.subid))
                .collect::<Vec<_>>()
        }
    };
    let t = |n: &str, j: &str, sid: &str| (n.to_owned(), j.to_owned(), sid.to_owned());
    assert_eq!(
        of("bob@x", false).await,
        vec![
            t("a", "bob@x", "s1"),
            t("a", "bob@x", "s2"),
            t("c", "bob@x", "s3")
        ]
    );
    assert_eq!(
        of("bob@x", true).await,
        vec![
            t("a", "bob@x", "s1"),
            t("a", "bob@x/phone", "s1"),
            t("a", "bob@x", "s2"),
            t("b", "bob@x/phone", "s1"),
            t("c", "bob@x", "s3"),
        ]
    );
    assert_eq!(
        of("bob@x/phone", false).await,
        vec![t("a", "bob@x/phone", "s1"), t("b", "bob@x/phone", "s1")]
    );
    assert!(of("bob", true).await.is_empty());
    assert!(of("nobody@x", true).await.is_empty());
    // Records come back whole.
    assert_eq!(
        p.subscriptions_of(svc, "bob@x", false).await.expect("of")[0],
        ("a".to_owned(), replaced.clone())
    );
    // Removing by subid, then all of a JID's on a node (its full JIDs' stay).
    assert_eq!(
        p.remove_subscription(svc, "a", "bob@x", Some("s2"))
            .await
            .expect("remove"),
        1
    );
    assert_eq!(
        p.remove_subscription(svc, "a", "bob@x", Some("s2"))
            .await
            .expect("again"),
        0
    );
    set("a", ps_sub("bob@x", "s4", "subscribed"), 10)
        .await
        .expect("set");
    assert_eq!(
        p.remove_subscription(svc, "a", "bob@x", None)
            .await
            .expect("remove all"),
        2
    );
    assert_eq!(
        p.remove_subscription(svc, "a", "bob@x", None)
            .await
            .expect("none left"),
        0
    );
    assert_eq!(
        p.remove_subscription(svc, "absent", "bob@x", None)
            .await
            .expect("no node"),
        0
    );
    assert_eq!(
        of("bob@x", true).await,
        vec![
            t("a", "bob@x/phone", "s1"),
            t("b", "bob@x/phone", "s1"),
            t("c", "bob@x", "s3"),
        ]
    );
    // Freed places count: bob@x now holds 1.
    set("b", ps_sub("bob@x", "s5", "subscribed"), 2)
        .await
        .expect("set");
    // Another service doesn't see them.
    let other = match svc {
        PubSubService::Domain(_) => pep("alice"),
        PubSubService::Account { .. } => PS,
    };
    assert!(p
        .subscriptions_of(other, "bob@x", true)
        .await
        .expect("of")
        .is_empty());
    delete_nodes(s, svc).await;
}

/// Quotas hold exactly under concurrent writers: `max_nodes`, `max_service_items`,
/// `max_items` (every eviction reported once) and `max_per_jid`.
async fn pubsub_concurrent(s: &Storage, svc: PubSubService<'static>) {
    let p = &s.pubsub;
    // 20 creations, 10 allowed.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let s = s.clone();
        set.spawn(async move {
            s.pubsub
                .create_node(svc, &format!("n{i:02}"), "{}", "owner@example.org", 10)
                .await
        });
    }
    let (mut ok, mut limited) = (0, 0);
    while let Some(r) = set.join_next().await {
        match r.expect("join") {
            Ok(()) => ok += 1,
            Err(StorageError::LimitReached(_)) => limited += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!((ok, limited), (10, 10));
    let nodes = p.list_nodes(svc).await.expect("list");
    assert_eq!(nodes.len(), 10);
    let (a, b) = (nodes[0].node.clone(), nodes[1].node.clone());
    // 30 publications over two nodes, 15 allowed in the service.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..30 {
        let s = s.clone();
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        set.spawn(async move {
            s.pubsub
                .publish_item(svc, &node, &ps_item(&format!("i{i:02}"), i), 100, 15)
                .await
        });
    }
    let (mut ok, mut limited) = (0, 0);
    while let Some(r) = set.join_next().await {
        match r.expect("join") {
            Ok(p) => {
                assert_eq!(p, Published::default());
                ok += 1
            }
            Err(StorageError::LimitReached(_)) => limited += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!((ok, limited), (15, 15));
    let held = all_item_ids(s, svc, &a).await.len() + all_item_ids(s, svc, &b).await.len();
    assert_eq!(held, 15);
    // 20 publications into one node of at most 5: every item is evicted at most once,
    // and what is left plus what was evicted is everything published.
    for node in [&a, &b] {
        let n = all_item_ids(s, svc, node).await.len();
        assert_eq!(p.purge_node(svc, node).await.expect("purge"), n);
    }
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let s = s.clone();
        let node = a.clone();
        set.spawn(async move {
            s.pubsub
                .publish_item(svc, &node, &ps_item(&format!("e{i:02}"), i), 5, 1000)
                .await
        });
    }
    let mut evicted = Vec::new();
    while let Some(r) = set.join_next().await {
        evicted.extend(r.expect("join").expect("publish").evicted);
    }
    let left = all_item_ids(s, svc, &a).await;
    assert_eq!((left.len(), evicted.len()), (5, 15));
    let mut every: Vec<String> = evicted.into_iter().chain(left).collect();
    every.sort();
    assert_eq!(
        every,
        (0..20).map(|i| format!("e{i:02}")).collect::<Vec<_>>()
    );
    // 20 subscriptions of one JID over the nodes, 7 allowed.
    let names: Vec<String> = nodes.iter().map(|n| n.node.clone()).collect();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let s = s.clone();
        let node = names[i % names.len()].clone();
        set.spawn(async move {
            s.pubsub
                .set_subscription(
                    svc,
                    &node,
                    &ps_sub("bob@example.net", &format!("s{i}"), "subscribed"),
                    7,
                )
                .await
        });
    }
    let (mut ok, mut limited) = (0, 0);
    while let Some(r) = set.join_next().await {
        match r.expect("join") {
            Ok(()) => ok += 1,
            Err(StorageError::LimitReached(_)) => limited += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!((ok, limited), (7, 13));
    assert_eq!(
        p.subscriptions_of(svc, "bob@example.net", false)
            .await
            .expect("of")
            .len(),
        7
    );
    delete_nodes(s, svc).await;
}

/// The two kinds of service never share nodes, items, quotas, affiliations or
/// subscriptions, even when their strings coincide.
async fn pubsub_services_apart(s: &Storage) {
    let p = &s.pubsub;
    create(s, "pubsub.example.org", "a").await;
    create(s, D, "alice").await;
    let services = [
        PubSubService::Account {
            domain: "pubsub.example.org",
            user: "a",
        },
        PubSubService::Domain("a@pubsub.example.org"),
        PubSubService::Domain("pubsub.example.org"),
        PubSubService::Account {
            domain: D,
            user: "alice",
        },
        PubSubService::Domain(D),
        PubSubService::Domain("alice@example.org"),
    ];
    for (i, svc) in services.iter().enumerate() {
        // Each is the first and only node of its service (max_nodes 1).
        p.create_node(
            *svc,
            "n",
            &format!("{{\"svc\":{i}}}"),
            "owner@example.org",
            1,
        )
        .await
        .expect("create");
        // Each is the only item of its service (max_service_items 1).
        p.publish_item(*svc, "n", &ps_item(&format!("item{i}"), i as i64), 10, 1)
            .await
            .expect("publish");
        p.set_affiliation(*svc, "n", "bob@example.net", Some(&format!("aff{i}")))
            .await
            .expect("aff");
        // Each is the only subscription of bob on its service (max_per_jid 1).
        p.set_subscription(
            *svc,
            "n",
            &ps_sub("bob@example.net", &format!("s{i}"), "subscribed"),
            1,
        )
        .await
        .expect("sub");
    }
    for (i, svc) in services.iter().enumerate() {
        assert_eq!(
            p.list_nodes(*svc).await.expect("list"),
            vec![NodeRecord {
                node: "n".into(),
                config: format!("{{\"svc\":{i}}}")
            }],
            "{svc:?}"
        );
        assert_eq!(all_item_ids(s, *svc, "n").await, vec![format!("item{i}")]);
        assert_eq!(
            p.affiliations_of(*svc, "bob@example.net")
                .await
                .expect("of"),
            vec![("n".to_owned(), format!("aff{i}"))]
        );
        let subs = p.subscriptions(*svc, "n").await.expect("subs");
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0].subid, format!("s{i}"));
    }
    // Deleting one service's node leaves the others'.
    assert!(p.delete_node(services[2], "n").await.expect("delete"));
    for (i, svc) in services.iter().enumerate() {
        assert_eq!(p.get_node(*svc, "n").await.expect("get").is_some(), i != 2);
    }
    // Deleting the account a@pubsub.example.org removes its PEP service only (the service
    // domain of the same string stays).
    drop_account(s, "pubsub.example.org", "a").await;
    assert!(p.list_nodes(services[0]).await.expect("list").is_empty());
    assert_eq!(all_item_ids(s, services[1], "n").await, strings(&["item1"]));
    drop_account(s, D, "alice").await;
    for svc in [services[1], services[4], services[5]] {
        assert_eq!(p.list_nodes(svc).await.expect("list").len(), 1, "{svc:?}");
        delete_nodes(s, svc).await;
    }
}

/// Deleting an account deletes its PEP service, and the affiliations and subscriptions its
/// bare and full JIDs hold on other services, not those of other JIDs (bobby@, bob@ of
/// another domain, a domain that merely starts like its own).
async fn pubsub_account_deletion(s: &Storage) {
    let p = &s.pubsub;
    for u in ["alice", "bob", "bobby"] {
        create(s, D, u).await;
    }
    create(s, "example.net", "bob").await;
    // bob's PEP service, with alice subscribed and affiliated.
    create_node(s, pep("bob"), "urn:xmpp:avatar:data").await;
    publish(s, pep("bob"), "urn:xmpp:avatar:data", "hash", 1).await;
    p.set_affiliation(
        pep("bob"),
        "urn:xmpp:avatar:data",
        "alice@example.org",
        Some("member"),
    )
    .await
    .expect("aff");
    p.set_subscription(
        pep("bob"),
        "urn:xmpp:avatar:data",
        &ps_sub("alice@example.org", "1", "subscribed"),
        10,
    )
    .await
    .expect("sub");
    // On a service domain and on alice's PEP service: bob's JIDs and look-alikes.
    let holders = [
        "bob@example.org",
        "bob@example.org/phone",
        "bob@example.org/",
        "bobby@example.org",
        "bob@example.org.evil",
        "bob@example.org0",
        "bob@example.net",
        "bob@example.net/phone",
        "example.org",
    ];
    let gone = [
        "bob@example.org",
        "bob@example.org/phone",
        "bob@example.org/",
    ];
    for svc in [PS, pep("alice")] {
        for node in ["n1", "n2"] {
            create_node(s, svc, node).await;
            for (i, jid) in holders.iter().enumerate() {
                p.set_affiliation(svc, node, jid, Some("member"))
                    .await
                    .expect("aff");
                p.set_subscription(svc, node, &ps_sub(jid, &format!("s{i}"), "subscribed"), 10)
                    .await
                    .expect("sub");
            }
        }
    }
    // bob also owns a node of the service domain: the node stays, his affiliation goes.
    p.create_node(PS, "bobs", "{}", "bob@example.org", 100)
        .await
        .expect("create");
    publish(s, PS, "bobs", "kept", 1).await;
    drop_account(s, D, "bob").await;
    // His PEP service is gone, and writes to it are refused.
    let bob = pep("bob");
    assert!(p.list_nodes(bob).await.expect("list").is_empty());
    assert_eq!(
        p.get_node(bob, "urn:xmpp:avatar:data").await.expect("get"),
        None
    );
    assert_eq!(
        p.get_items(bob, "urn:xmpp:avatar:data", page_sel(None, None, 10))
            .await
            .expect("items"),
        ItemPage::default()
    );
    assert!(p
        .subscriptions(bob, "urn:xmpp:avatar:data")
        .await
        .expect("subs")
        .is_empty());
    assert!(is_not_found(
        p.create_node(bob, "urn:xmpp:avatar:data", "{}", "bob@example.org", 10)
            .await
    ));
    // Elsewhere, his JIDs hold nothing; everyone else keeps everything.
    let others: Vec<&str> = holders
        .iter()
        .copied()
        .filter(|j| !gone.contains(j))
        .collect();
    for svc in [PS, pep("alice")] {
        for node in ["n1", "n2"] {
            let mut want: Vec<(String, String)> = others
                .iter()
                .map(|j| ((*j).to_owned(), "member".to_owned()))
                .chain([("owner@example.org".to_owned(), "owner".to_owned())])
                .collect();
            want.sort();
            assert_eq!(p.affiliations(svc, node).await.expect("affs"), want);
            let mut jids: Vec<String> = p
                .subscriptions(svc, node)
                .await
                .expect("subs")
                .into_iter()
                .map(|s| s.jid)
                .collect();
            jids.sort();
            let mut want: Vec<String> = others.iter().map(|j| (*j).to_owned()).collect();
            want.sort();
            assert_eq!(jids, want, "{svc:?} {node}");
        }
        assert!(p
            .subscriptions_of(svc, "bob@example.org", true)
            .await
            .expect("of")
            .is_empty());
        assert!(p
            .affiliations_of(svc, "bob@example.org")
            .await
            .expect("of")
            .is_empty());
    }
    assert!(p.affiliations(PS, "bobs").await.expect("affs").is_empty());
    assert_eq!(all_item_ids(s, PS, "bobs").await, strings(&["kept"]));
    // Created again, bob starts without a PEP node, and can create one.
    create(s, D, "bob").await;
    assert!(p.list_nodes(bob).await.expect("list").is_empty());
    create_node(s, bob, "urn:xmpp:avatar:data").await;
    assert!(all_item_ids(s, bob, "urn:xmpp:avatar:data")
        .await
        .is_empty());
    // Deleting an account that doesn't exist touches nothing.
    assert!(!s
        .accounts
        .delete_account(D, "carol")
        .await
        .expect("delete absent"));
    for u in ["alice", "bob", "bobby"] {
        drop_account(s, D, u).await;
    }
    drop_account(s, "example.net", "bob").await;
    assert!(p.list_nodes(pep("alice")).await.expect("list").is_empty());
    delete_nodes(s, PS).await;
}

fn upload(id: &str, user: &str, size: u64, created: i64) -> crate::UploadRecord {
    crate::UploadRecord {
        id: id.to_owned(),
        domain: "example.org".to_owned(),
        user: user.to_owned(),
        file_name: format!("{id}.png"),
        size,
        content_type: "image/png".to_owned(),
        created,
    }
}

/// The whole [`crate::UploadStore`] contract: records need their owner, ids are unique,
/// the quota over a window is exact (also under concurrency), expiry goes oldest first in
/// bounded batches, and deleting the account deletes its records. Leaves nothing.
pub async fn upload_store(s: &Storage) {
    assert_no_accounts(s).await;
    let u = s.upload.as_ref();
    assert!(matches!(
        u.add_upload(&upload("u0", "alice", 1, 100), 0, 1000).await,
        Err(StorageError::NotFound)
    ));
    assert_eq!(u.get_upload("u0").await.expect("get"), None);
    assert!(u
        .recent_uploads("example.org", "alice", 0)
        .await
        .expect("recent")
        .is_empty());
    for user in ["alice", "bob"] {
        s.accounts
            .create_account("example.org", user, &sample_all(7))
            .await
            .expect("create");
    }
    // The quota counts the sizes created at or after `since`; older ones are free.
    u.add_upload(&upload("a1", "alice", 400, 100), 0, 1000)
        .await
        .expect("a1");
    u.add_upload(&upload("a2", "alice", 500, 200), 0, 1000)
        .await
        .expect("a2");
    assert!(matches!(
        u.add_upload(&upload("a3", "alice", 101, 300), 0, 1000)
            .await,
        Err(StorageError::LimitReached(_))
    ));
    assert_eq!(u.get_upload("a3").await.expect("get"), None);
    // Exactly at the quota is allowed; bob's quota is his own.
    u.add_upload(&upload("a3", "alice", 100, 300), 0, 1000)
        .await
        .expect("a3 at the quota");
    u.add_upload(&upload("b1", "bob", 1000, 300), 0, 1000)
        .await
        .expect("b1");
    // With the window starting after a1, its 400 bytes no longer count.
    u.add_upload(&upload("a4", "alice", 400, 400), 101, 1000)
        .await
        .expect("a4");
    assert!(matches!(
        u.add_upload(&upload("a4", "alice", 1, 400), 0, u64::MAX)
            .await,
        Err(StorageError::AlreadyExists)
    ));
    assert_eq!(
        u.get_upload("a2").await.expect("get"),
        Some(upload("a2", "alice", 500, 200))
    );
    assert_eq!(
        u.recent_uploads("example.org", "alice", 150)
            .await
            .expect("recent"),
        vec![(200, 500), (300, 100), (400, 400)]
    );
    // Concurrent slots: exactly as many as fit.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.upload
                .add_upload(&upload(&format!("c{i}"), "bob", 10, 1000), 1000, 35)
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(()) => ok += 1,
            Err(StorageError::LimitReached(_)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok, 3, "10-byte slots within a 35-byte quota");
    // Expiry: oldest first, at most `limit`.
    let first = u.expire_uploads(300, 1).await.expect("expire");
    assert_eq!(first, vec!["a1".to_owned()]);
    let mut rest = u.expire_uploads(300, 10).await.expect("expire");
    rest.sort();
    assert_eq!(rest, vec!["a2".to_owned()]);
    assert!(u.expire_uploads(300, 10).await.expect("expire").is_empty());
    assert!(u.delete_upload("a3").await.expect("delete"));
    assert!(!u.delete_upload("a3").await.expect("delete again"));
    // Deleting an account deletes its records, and only its.
    assert!(s
        .accounts
        .delete_account("example.org", "alice")
        .await
        .expect("delete alice"));
    assert_eq!(u.get_upload("a4").await.expect("get"), None);
    assert!(u.get_upload("b1").await.expect("get").is_some());
    assert!(s
        .accounts
        .delete_account("example.org", "bob")
        .await
        .expect("delete bob"));
    assert_eq!(u.get_upload("b1").await.expect("get"), None);
    assert!(u
        .expire_uploads(i64::MAX, 100)
        .await
        .expect("expire")
        .is_empty());
    assert_no_accounts(s).await;
}
