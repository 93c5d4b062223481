//! A real second process (this test binary re-executed) writes to the database while
//! this one has it open, then is SIGKILLed: committed data must be there.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rookery_sasl::HashAlg;
use rookery_storage::conformance::{sample_all, sample_credentials};
use rookery_storage_sqlite::SqliteBackend;

const ENV: &str = "ROOKERY_SQLITE_CHILD_DB";
const COMMITTED: &str = "ROOKERY-CHILD-COMMITTED";

/// The child: only does something when re-executed by `killed_writer_process_loses_nothing`.
#[test]
#[ignore = "helper run as a child process"]
fn child_writer() {
    let Ok(path) = std::env::var(ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let b = SqliteBackend::open(path.as_ref()).expect("child open");
        let s = b.storage();
        for i in 0..20 {
            s.accounts
                .create_account("example.org", &format!("child{i:02}"), &sample_all(i))
                .await
                .expect("child create");
        }
        s.accounts
            .set_credentials("example.org", "parent", &sample_all(99))
            .await
            .expect("child set");
    });
    println!("{COMMITTED}");
    // Wait to be killed (bounded, in case the parent died).
    std::thread::sleep(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_writer_process_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rookery.db");
    let server = SqliteBackend::open(&path).expect("open");
    let s = server.storage();
    s.accounts
        .create_account("example.org", "parent", &sample_all(1))
        .await
        .expect("create");

    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "child_writer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let saw_commit = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains(COMMITTED))
    });
    let saw_commit = tokio::time::timeout(Duration::from_secs(60), saw_commit)
        .await
        .expect("child finished in time")
        .expect("join");
    child.kill().expect("SIGKILL child");
    let _ = child.wait();
    assert!(saw_commit, "child reported its commits");

    // The running server sees the other process's writes...
    assert_eq!(
        s.accounts
            .list_accounts(Some("example.org"))
            .await
            .expect("list")
            .len(),
        21
    );
    assert_eq!(
        s.accounts
            .get_credentials("example.org", "parent", HashAlg::Sha256)
            .await
            .expect("get"),
        Some(sample_credentials(HashAlg::Sha256, 99))
    );
    drop(s);
    drop(server);
    // ...and so does a fresh open after everything is closed.
    let again = SqliteBackend::open(&path).expect("reopen");
    assert!(again.integrity_check().expect("check"));
    assert_eq!(
        again
            .storage()
            .accounts
            .get_credentials("example.org", "child19", HashAlg::Sha1)
            .await
            .expect("get"),
        Some(sample_credentials(HashAlg::Sha1, 19))
    );
}
