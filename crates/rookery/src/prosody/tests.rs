use super::*;
use rookery_core::Config;
use rookery_modules::pubsub::config::{AccessModel, MaxItems, NodeConfig};
use rookery_sasl::{HashAlg, ScramCredentials};
use rookery_storage::{ItemSelection, PubSubService, Storage, Subscription};

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// A string as Prosody's serializer writes it: every byte outside printable ASCII as `\ddd`.
fn lua_str(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\'' => out.push_str("\\'"),
            b'\n' => out.push_str("\\n"),
            32..=126 => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
    out
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha1_record(password: &str) -> ScramCredentials {
    rookery_sasl::generate_all(password, ScramCredentials::MIN_ITERATIONS)
        .unwrap()
        .into_iter()
        .find(|c| c.hash == HashAlg::Sha1)
        .unwrap()
}

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A data directory as Prosody 0.12 leaves it: `alice` (internal_hashed) with a roster, a
/// pending request, a vCard, private XML and two offline messages; `bob-2` (internal_plain);
/// a MUC component without accounts and a PEP store, both skipped.
fn prosody_dir() -> (tempfile::TempDir, ScramCredentials) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = sha1_record("alice's secret");
    write(
        d,
        "localhost/accounts/alice.dat",
        &format!(
            "return {{\n\t[\"iteration_count\"] = {};\n\t[\"salt\"] = {};\n\t[\"server_key\"] = \"{}\";\n\t[\"stored_key\"] = \"{}\";\n}};\n",
            c.iterations,
            lua_str(&c.salt),
            hex_of(&c.server_key),
            hex_of(&c.stored_key)
        ),
    );
    write(
        d,
        "localhost/accounts/bob%2d2.dat",
        "return {\n\t[\"password\"] = \"b\\195\\182b's pw\";\n};\n",
    );
    write(
        d,
        "localhost/roster/alice.dat",
        r#"return {
	[false] = {
		["version"] = 4;
		["pending"] = {
			["carol@remote.example"] = {
				["name"] = "presence";
				["attr"] = {
					["type"] = "subscribe";
					["from"] = "carol@remote.example";
					["xml:lang"] = "en";
					["to"] = "alice@localhost";
				};
			};
			["eve@remote.example"] = true;
		};
	};
	["bob-2@localhost"] = {
		["groups"] = {
			["Work"] = true;
			["Friends"] = true;
		};
		["subscription"] = "both";
		["name"] = "Bob \"B\" \195\169";
	};
	["dave@remote.example"] = {
		["groups"] = {};
		["subscription"] = "none";
		["ask"] = "subscribe";
	};
};
"#,
    );
    write(
        d,
        "localhost/vcard/alice.dat",
        r#"return {
	["name"] = "vCard";
	["attr"] = {
		["xmlns"] = "vcard-temp";
	};
	[1] = {
		["name"] = "FN";
		["attr"] = {};
		[1] = "Alice <L>";
	};
};
"#,
    );
    write(
        d,
        "localhost/private/alice.dat",
        r#"return {
	["storage:storage:rosternotes"] = {
		["name"] = "storage";
		["attr"] = {
			["xmlns"] = "storage:rosternotes";
		};
		[1] = {
			["name"] = "note";
			["attr"] = {
				["jid"] = "bob-2@localhost";
			};
			[1] = "hi";
		};
	};
};
"#,
    );
    let message = |body: &str, stamp: &str| {
        format!(
            "item({{\n\t[\"key\"] = \"k-{body}\";\n\t[\"attr\"] = {{\n\t\t[\"type\"] = \"chat\";\n\t\t[\"to\"] = \"alice@localhost\";\n\t\t[\"from\"] = \"bob-2@localhost/phone\";\n\t\t[\"stamp\"] = \"{stamp}\";\n\t\t[\"http://www.w3.org/XML/1998/namespace\\001lang\"] = \"en\";\n\t}};\n\t[\"when\"] = 1765036800.5;\n\t[\"with\"] = \"message<chat\";\n\t[\"name\"] = \"message\";\n\t[1] = {{\n\t\t[\"name\"] = \"body\";\n\t\t[\"attr\"] = {{}};\n\t\t[1] = \"{body}\";\n\t}};\n}});\n"
        )
    };
    write(
        d,
        "localhost/offline/alice.list",
        &(message("first", "2026-12-06T12:00:00Z") + &message("second", "2026-12-06T12:01:00Z")),
    );
    write(
        d,
        "localhost/pep/alice.dat",
        r#"return {
	["urn:xmpp:mood"] = {
		["name"] = "urn:xmpp:mood";
		["config"] = {
			["access_model"] = "open";
			["max_items"] = 10;
			["persist_items"] = true;
			["title"] = "Moods";
			["itemreply"] = "owner";
		};
		["affiliations"] = {
			["bob-2@localhost"] = "publisher";
		};
		["subscribers"] = {
			["bob-2@localhost"] = true;
		};
	};
};
"#,
    );
    write(
        d,
        "localhost/pep_urn%3axmpp%3amood/alice.list",
        "item({\n\t[\"key\"] = \"m1\";\n\t[\"with\"] = \"alice@localhost\";\n\t[\"attr\"] = {\n\t\t[\"xmlns\"] = \"http://jabber.org/protocol/mood\";\n\t\t[\"stamp\"] = \"2026-12-06T12:00:00Z\";\n\t};\n\t[\"name\"] = \"mood\";\n\t[1] = { [\"name\"] = \"happy\"; [\"attr\"] = {}; };\n\t[\"when\"] = 1796573995;\n});\nitem({ key = \"m2\"; with = \"bob-2@localhost\"; name = \"mood\"; attr = { xmlns = \"http://jabber.org/protocol/mood\" }; { name = \"sad\"; attr = {} } });\n",
    );
    // mod_mam: one message Alice sent, one she received (a fractional time).
    write(
        d,
        "localhost/archive/alice.list",
        "item({\n\t[\"key\"] = \"0190a1b2-aaaa\";\n\t[\"with\"] = \"bob-2@localhost\";\n\t[\"when\"] = 1796573995;\n\t[\"name\"] = \"message\";\n\t[\"attr\"] = {\n\t\t[\"xmlns\"] = \"jabber:client\";\n\t\t[\"from\"] = \"alice@localhost/desk\";\n\t\t[\"to\"] = \"bob-2@localhost\";\n\t\t[\"type\"] = \"chat\";\n\t\t[\"stamp\"] = \"2026-12-06T11:39:55Z\";\n\t};\n\t[1] = { [\"name\"] = \"body\"; [\"attr\"] = {}; [1] = \"hello\"; };\n});\n\
         item({ key = \"0190a1b2-bbbb\"; with = \"bob-2@localhost\"; when = 1796573996.25; name = \"message\"; attr = { xmlns = \"jabber:client\"; from = \"bob-2@localhost/phone\"; to = \"alice@localhost/desk\"; type = \"chat\" }; { name = \"body\"; attr = {}; \"hi back\" } });\n",
    );
    write(
        d,
        "localhost/blocklist/alice.dat",
        "return {\n\t[false] = {\n\t\t[\"created\"] = 1796573990;\n\t};\n\t[\"spam@spam.example\"] = 1796573991;\n\t[\"spam.example\"] = true;\n\t[\"forgiven@example.net\"] = false;\n};\n",
    );
    write(d, "localhost/muc_log/alice.list", "");
    write(d, "conference%2elocalhost/persistent.dat", "return {};\n");
    std::fs::create_dir_all(d.join("example%2enet/accounts")).unwrap();
    (dir, c)
}

fn config() -> Config {
    let dir = std::env::temp_dir().join(format!("rookery-prosody-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rookery.toml");
    std::fs::write(
        &path,
        "data_dir = \"/nonexistent\"\n[[host]]\ndomain = \"localhost\"\n",
    )
    .unwrap();
    Config::load(Some(&path), &crate::registry()).unwrap()
}

async fn import(storage: &Storage, doc: &pie::Document) -> Result<usize> {
    let skip = pie::check(&config(), storage, doc, pie::Existing::Refuse).await?;
    pie::write(storage, doc, &skip).await
}

#[test]
fn imports_accounts_and_their_data() {
    block(async {
        let (dir, record) = prosody_dir();
        let doc = read(dir.path()).unwrap();
        assert_eq!(
            doc.skipped,
            vec![
                "the Prosody data of conference.localhost (it has no accounts)".to_owned(),
                "the Prosody store 'muc_log' of localhost".to_owned(),
                "the Prosody data of example.net (it has no accounts)".to_owned(),
                "the setting 'itemreply' of PEP node 'urn:xmpp:mood'".to_owned(),
            ]
        );
        let s = Storage::memory();
        assert_eq!(import(&s, &doc).await.unwrap(), 2);

        // The SCRAM-SHA-1 record as Prosody had it; the plaintext password gives every hash.
        let c = s
            .accounts
            .get_credentials("localhost", "alice", HashAlg::Sha1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c, record);
        assert!(c.verify_password("alice's secret"));
        for h in HashAlg::ALL {
            let c = s
                .accounts
                .get_credentials("localhost", "bob-2", h)
                .await
                .unwrap()
                .unwrap();
            assert!(c.verify_password("böb's pw"), "{h:?}");
        }

        let roster = s.roster.roster("localhost", "alice").await.unwrap().items;
        assert_eq!(roster.len(), 2);
        assert_eq!(roster[0].jid, "bob-2@localhost");
        assert_eq!(roster[0].subscription, Subscription::Both);
        assert_eq!(roster[0].name.as_deref(), Some("Bob \"B\" é"));
        assert_eq!(roster[0].groups, vec!["Friends", "Work"]);
        assert_eq!(roster[1].jid, "dave@remote.example");
        assert_eq!(roster[1].subscription, Subscription::None);
        assert!(roster[1].ask);
        let pending = s.roster.pending_in("localhost", "alice").await.unwrap();
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].0, "carol@remote.example");
        assert_eq!(
            pending[0].1,
            "<presence xmlns=\"jabber:client\" type=\"subscribe\" from=\"carol@remote.example\" xml:lang=\"en\" to=\"alice@localhost\"/>"
        );
        assert_eq!(pending[1].0, "eve@remote.example");
        assert_eq!(
            pending[1].1,
            "<presence xmlns=\"jabber:client\" from=\"eve@remote.example\" to=\"alice@localhost\" type=\"subscribe\"/>"
        );

        let vcard = s
            .user_data
            .get_data("localhost", "alice", rookery_modules::vcard::STORE, "")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            vcard,
            "<vCard xmlns=\"vcard-temp\"><FN>Alice &lt;L&gt;</FN></vCard>"
        );
        let keys = s
            .user_data
            .data_keys("localhost", "alice", rookery_modules::private::STORE)
            .await
            .unwrap();
        assert_eq!(keys.len(), 1);
        let notes = s
            .user_data
            .get_data(
                "localhost",
                "alice",
                rookery_modules::private::STORE,
                &keys[0],
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            notes,
            "<storage xmlns=\"storage:rosternotes\"><note jid=\"bob-2@localhost\">hi</note></storage>"
        );

        let offline = s
            .offline
            .peek_offline("localhost", "alice", 10)
            .await
            .unwrap();
        assert_eq!(offline.len(), 2);
        assert_eq!(
            offline[0].1,
            "<message xmlns=\"jabber:client\" type=\"chat\" to=\"alice@localhost\" from=\"bob-2@localhost/phone\" xml:lang=\"en\"><body>first</body><delay xmlns=\"urn:xmpp:delay\" from=\"localhost\" stamp=\"2026-12-06T12:00:00Z\">Offline Storage</delay></message>"
        );
        assert!(offline[1].1.contains("<body>second</body>"));

        // The message archive: ids, times, the other party, the storage stamp left out.
        let page = s
            .archive
            .query_archive(
                "localhost",
                "alice",
                &rookery_storage::ArchiveQuery {
                    filter: Default::default(),
                    page: rookery_storage::PageRequest::First,
                    max: 10,
                },
            )
            .await
            .unwrap();
        let got: Vec<(&str, i64, &str, &str)> = page
            .entries
            .iter()
            .map(|e| {
                (
                    e.id.as_str(),
                    e.timestamp_us,
                    e.with_bare.as_str(),
                    e.with_resource.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "0190a1b2-aaaa",
                    1_796_573_995_000_000,
                    "bob-2@localhost",
                    ""
                ),
                (
                    "0190a1b2-bbbb",
                    1_796_573_996_250_000,
                    "bob-2@localhost",
                    "phone"
                ),
            ]
        );
        assert_eq!(
            page.entries[0].stanza,
            "<message xmlns=\"jabber:client\" from=\"alice@localhost/desk\" to=\"bob-2@localhost\" type=\"chat\"><body>hello</body></message>"
        );
        let blocked = s
            .user_data
            .get_data("localhost", "alice", rookery_modules::blocking::STORE, "")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            blocked,
            "<blocklist xmlns=\"urn:xmpp:blocking\"><item jid=\"spam.example\"/><item jid=\"spam@spam.example\"/></blocklist>"
        );

        // The PEP node with its settings, the affiliations (the owner's made by the store),
        // the subscriber and the items in their order, the archive's stamp left out.
        let pep = PubSubService::Account {
            domain: "localhost",
            user: "alice",
        };
        let nodes = s.pubsub.list_nodes(pep).await.unwrap();
        assert_eq!(nodes.len(), 1);
        let config = NodeConfig::from_doc(&nodes[0].config).unwrap();
        assert_eq!(config.title, "Moods");
        assert_eq!(config.access_model, AccessModel::Open);
        assert_eq!(config.max_items, MaxItems::Count(10));
        assert_eq!(
            s.pubsub.affiliations(pep, "urn:xmpp:mood").await.unwrap(),
            vec![
                ("alice@localhost".to_owned(), "owner".to_owned()),
                ("bob-2@localhost".to_owned(), "publisher".to_owned())
            ]
        );
        let subs = s.pubsub.subscriptions(pep, "urn:xmpp:mood").await.unwrap();
        assert_eq!(subs.len(), 1);
        assert_eq!(
            (subs[0].jid.as_str(), subs[0].state.as_str()),
            ("bob-2@localhost", "subscribed")
        );
        let page = s
            .pubsub
            .get_items(
                pep,
                "urn:xmpp:mood",
                ItemSelection::Page {
                    after: None,
                    before: None,
                    max: 10,
                },
            )
            .await
            .unwrap();
        let items: Vec<(&str, &str, &str)> = page
            .items
            .iter()
            .map(|i| (i.id.as_str(), i.publisher.as_str(), i.payload.as_str()))
            .collect();
        assert_eq!(
            items,
            vec![
                (
                    "m2",
                    "bob-2@localhost",
                    "<mood xmlns=\"http://jabber.org/protocol/mood\"><sad/></mood>"
                ),
                (
                    "m1",
                    "alice@localhost",
                    "<mood xmlns=\"http://jabber.org/protocol/mood\"><happy/></mood>"
                ),
            ]
        );
    });
}

/// Each malformed or hostile file refuses the whole directory, naming what is wrong.
#[test]
fn refuses_malformed_and_hostile_directories() {
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "localhost/roster/alice.dat",
            "return {\n\t[\"bob-2@localhost\"] = {\n\t\t[\"subscr".into(),
            "roster/alice.dat: line 3",
        ),
        (
            "localhost/vcard/alice.dat",
            format!("return {}{};", "{".repeat(10_000), "}".repeat(10_000)),
            "nested deeper",
        ),
        (
            "localhost/vcard/alice.dat",
            format!("return \"{}\";", "a".repeat(MAX_FILE_BYTES)),
            "larger than 16 MiB",
        ),
        (
            "localhost/accounts/alice.dat",
            "return os.execute(\"touch /tmp/x\");".into(),
            "only data is read",
        ),
        (
            "localhost/accounts/alice.dat",
            "return { stored_key = \"zz\"; server_key = \"00\"; salt = \"s\"; iteration_count = 4096 };".into(),
            "not hexadecimal",
        ),
        (
            "localhost/accounts/alice.dat",
            "return { stored_key = \"00\"; server_key = \"00\"; salt = \"s\"; iteration_count = 1 };".into(),
            "iter-count",
        ),
        ("localhost/accounts/alice.dat", "return {};".into(), "no credentials"),
        (
            "localhost/roster/alice.dat",
            "return { [\"@bad\"] = { subscription = \"both\" } };".into(),
            "not a valid JID",
        ),
        (
            "localhost/roster/alice.dat",
            "return { [\"x@y\"] = { subscription = \"sometimes\" } };".into(),
            "unknown subscription",
        ),
        (
            "localhost/offline/alice.list",
            "item({ name = \"message\"; attr = { [\"on click\"] = \"x\" } });".into(),
            "not an XML name",
        ),
        (
            "localhost/offline/alice.list",
            "item({ name = \"iq\"; attr = { from = \"a@b\" } });".into(),
            "not a message",
        ),
        (
            "localhost/offline/alice.list",
            "item({ name = \"message\"; attr = { from = \"a@b\" }; [1] = \"\\255\" });".into(),
            "not UTF-8",
        ),
        ("localhost/accounts/%zz.dat", "return {};".into(), "not a name Prosody writes"),
        (
            "localhost/pep/alice.dat",
            "return { [\"n\"] = { config = { access_model = \"everyone\" } } };".into(),
            "unknown access model",
        ),
        (
            "localhost/pep_urn%3axmpp%3amood/alice.list",
            "item({ name = \"mood\"; attr = {} });".into(),
            "has no id",
        ),
    ];
    for (rel, text, expected) in cases {
        let (dir, _) = prosody_dir();
        write(dir.path(), rel, &text);
        let err = format!("{:#}", read(dir.path()).unwrap_err());
        assert!(
            err.contains(expected),
            "{rel}: expected '{expected}' in: {err}"
        );
    }
    let err = format!("{:#}", read(Path::new("/nonexistent/prosody")).unwrap_err());
    assert!(err.contains("cannot read /nonexistent/prosody"), "{err}");
}

#[test]
fn an_unserved_host_refuses_the_import() {
    block(async {
        let (dir, _) = prosody_dir();
        std::fs::rename(
            dir.path().join("localhost"),
            dir.path().join("example%2eorg"),
        )
        .unwrap();
        let doc = read(dir.path()).unwrap();
        assert_eq!(doc.hosts[0].domain, "example.org");
        let s = Storage::memory();
        let err = import(&s, &doc).await.unwrap_err().to_string();
        assert!(err.contains("example.org"), "{err}");
        assert!(s.accounts.list_accounts(None).await.unwrap().is_empty());
    });
}
