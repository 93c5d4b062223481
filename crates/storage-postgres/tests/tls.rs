//! TLS to a real PostgreSQL server (see `pg/mod.rs`: a TLS-only server whose certificate,
//! for `localhost` and 127.0.0.1, is signed by a CA made by the test), each `sslmode`.

#[allow(dead_code)] // these tests use part of the harness
mod pg;

use rookery_storage::StorageError;
use rookery_storage_postgres::{probe, PgBackend, PgOptions};

fn url(host: &str, db: &str, params: &str) -> String {
    let s = pg::start_tls();
    format!("postgresql://postgres@{host}:{}/{db}?{params}", s.port)
}

fn ca() -> String {
    pg::start_tls().ca_file.display().to_string()
}

async fn open(url: &str) -> Result<PgBackend, StorageError> {
    PgBackend::open(&PgOptions {
        pool_size: 2,
        ..PgOptions::new(url)
    })
    .await
}

/// A store operation through the backend, read back.
async fn store_and_read(b: &PgBackend) {
    let s = b.storage();
    s.accounts
        .create_account(
            "example.org",
            "alice",
            &rookery_storage::conformance::sample_all(1),
        )
        .await
        .expect("create");
    assert!(s
        .accounts
        .account_exists("example.org", "alice")
        .await
        .expect("read"));
}

#[tokio::test]
async fn verify_full_with_the_right_ca_connects_over_tls() {
    let db = pg::fresh_tls_database().await;
    for host in ["127.0.0.1", "localhost"] {
        let u = url(
            host,
            &db,
            &format!("sslmode=verify-full&sslrootcert={}", ca()),
        );
        let p = probe(&u).await.expect("probe over TLS");
        assert!(
            p.tls.as_deref().is_some_and(|v| v.starts_with("TLSv1.")),
            "{p:?}"
        );
        if host == "127.0.0.1" {
            store_and_read(&open(&u).await.expect("open")).await;
        }
    }
    // The key-value form reads the same settings.
    let s = pg::start_tls();
    let kv = format!(
        "host=127.0.0.1 port={} user=postgres dbname={db} sslmode=verify-full sslrootcert='{}'",
        s.port,
        ca()
    );
    assert!(probe(&kv).await.expect("probe").tls.is_some());
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let db = pg::fresh_tls_database().await;
    let wrong = pg::start_tls().wrong_ca_file.display().to_string();
    for mode in ["verify-full", "verify-ca", "require"] {
        let u = url(
            "127.0.0.1",
            &db,
            &format!("sslmode={mode}&sslrootcert={wrong}"),
        );
        let err = open(&u).await.expect_err(mode);
        assert!(matches!(err, StorageError::Backend(_)), "{mode}: {err}");
        assert!(err.to_string().contains("certificate"), "{mode}: {err}");
        assert!(probe(&u).await.is_err(), "{mode}");
    }
}

#[tokio::test]
async fn verify_ca_ignores_the_name_verify_full_does_not() {
    // The TLS name is "db.example" (not in the certificate); the address is the server's.
    let db = pg::fresh_tls_database().await;
    let s = pg::start_tls();
    let kv = |mode: &str| {
        format!(
            "host=db.example hostaddr=127.0.0.1 port={} user=postgres dbname={db} \
             sslmode={mode} sslrootcert={}",
            s.port,
            ca()
        )
    };
    let p = probe(&kv("verify-ca")).await.expect("verify-ca");
    assert!(p.tls.is_some());
    let err = probe(&kv("verify-full")).await.expect_err("verify-full");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert!(err.to_string().to_lowercase().contains("name"), "{err}");
}

#[tokio::test]
async fn require_connects_without_a_ca() {
    let db = pg::fresh_tls_database().await;
    let u = url("127.0.0.1", &db, "sslmode=require");
    let p = probe(&u).await.expect("require");
    assert!(p.tls.is_some(), "{p:?}");
    assert_eq!(p.tls_mode, rookery_storage_postgres::TlsMode::Require);
    store_and_read(&open(&u).await.expect("open")).await;
}

#[tokio::test]
async fn prefer_uses_tls_when_offered_and_plain_otherwise() {
    let db = pg::fresh_tls_database().await;
    for u in [
        url("127.0.0.1", &db, "sslmode=prefer"),
        // prefer is the default.
        format!(
            "postgresql://postgres@127.0.0.1:{}/{db}",
            pg::start_tls().port
        ),
    ] {
        let p = probe(&u).await.expect("prefer");
        assert!(p.tls.is_some(), "{u}: {p:?}");
    }
    // The plain server offers no TLS: prefer connects without.
    let plain = pg::fresh_database().await;
    let p = probe(&plain).await.expect("plain");
    assert_eq!(p.tls, None);
    // And require refuses it.
    let err = open(&format!("{plain}?sslmode=require"))
        .await
        .expect_err("require on a server without TLS");
    assert!(err.to_string().contains("TLS"), "{err}");
}

#[tokio::test]
async fn disable_is_refused_by_a_tls_only_server() {
    let db = pg::fresh_tls_database().await;
    let err = open(&url("127.0.0.1", &db, "sslmode=disable"))
        .await
        .expect_err("plain connection to a hostssl-only server");
    // pg_hba.conf has no line for a connection without TLS.
    assert!(err.to_string().contains("no encryption"), "{err}");
}

#[tokio::test]
async fn an_unreadable_ca_file_is_an_error_naming_the_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.pem");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").expect("write");
    // Past the size limit: refused without being read.
    let huge = dir.path().join("huge.pem");
    std::fs::File::create(&huge)
        .and_then(|f| f.set_len(rookery_storage_postgres::MAX_ROOT_CERT_FILE + 1))
        .expect("sparse file");
    for path in [&missing, &not_pem, &huge] {
        let u = format!(
            "postgresql://postgres@127.0.0.1:1/x?sslmode=verify-full&sslrootcert={}",
            path.display()
        );
        let err = open(&u).await.expect_err("bad CA file");
        assert!(err.to_string().contains("sslrootcert"), "{err}");
        let err = probe(&u).await.expect_err("bad CA file");
        assert!(err.to_string().contains("sslrootcert"), "{err}");
    }
}
