//! Backend conformance suite (ejabberd-style): every [`AccountStore`] implementation
//! runs these checks in its tests, so all backends behave identically.
//!
//! Each function expects an **empty** store and panics (via `assert!`) on the first
//! deviation from the contract documented on the trait.

use crate::{AccountStore, HashAlg, ScramCredentials, StorageError};

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
