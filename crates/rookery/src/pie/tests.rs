use super::*;

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn creds(password: &str) -> Vec<ScramCredentials> {
    rookery_sasl::generate_all(password, ScramCredentials::MIN_ITERATIONS).unwrap()
}

/// Two accounts of localhost with every kind of data, one of another domain without any.
async fn populated() -> Storage {
    let s = Storage::memory();
    let (d, u) = ("localhost", "alice");
    s.accounts
        .create_account(d, u, &creds("secret-a"))
        .await
        .unwrap();
    s.accounts
        .create_account(d, "bob", &creds("secret-b"))
        .await
        .unwrap();
    s.accounts
        .create_account("example.org", "carol", &creds("secret-c")[1..2])
        .await
        .unwrap();
    let mut item = RosterItem::new("bob@localhost");
    item.subscription = Subscription::Both;
    item.name = Some("Bob & co".into());
    item.groups = vec!["Friends".into(), "<Work>".into()];
    s.roster.set_roster_item(d, u, &item, 100).await.unwrap();
    let mut item = RosterItem::new("dave@remote.example");
    item.ask = true;
    item.approved = true;
    s.roster.set_roster_item(d, u, &item, 100).await.unwrap();
    s.roster
        .add_pending_in(
            d,
            u,
            "eve@remote.example",
            "<presence xmlns=\"jabber:client\" from=\"eve@remote.example/x\" to=\"alice@localhost\" type=\"subscribe\"/>",
        )
        .await
        .unwrap();
    s.user_data
        .set_data(
            d,
            u,
            BLOCKLIST_STORE,
            "",
            Some("<blocklist xmlns=\"urn:xmpp:blocking\"><item jid=\"spam.example\"/><item jid=\"troll@remote.example/x\"/></blocklist>"),
            1 << 20,
        )
        .await
        .unwrap();
    for (i, (id, from, to)) in [
        ("a1", "alice@localhost/desk", "bob@localhost"),
        ("a2", "bob@localhost/phone", "alice@localhost/desk"),
        ("a3", "dave@remote.example/x", "alice@localhost"),
    ]
    .into_iter()
    .enumerate()
    {
        let (with_bare, with_resource) = match i {
            0 => ("bob@localhost", ""),
            1 => ("bob@localhost", "phone"),
            _ => ("dave@remote.example", "x"),
        };
        s.archive
            .append_archive(
                d,
                u,
                &ArchiveEntry {
                    id: id.into(),
                    timestamp_us: 1_700_000_000_000_000 + i as i64 * 1_500_000,
                    with_bare: with_bare.into(),
                    with_resource: with_resource.into(),
                    stanza: format!(
                        "<message xmlns=\"jabber:client\" from=\"{from}\" to=\"{to}\" type=\"chat\"><body>{id} &amp; more</body></message>"
                    ),
                },
            )
            .await
            .unwrap();
    }
    s.user_data
        .set_data(
            d,
            u,
            VCARD_STORE,
            "",
            Some("<vCard xmlns=\"vcard-temp\"><FN>Alice</FN></vCard>"),
            1 << 20,
        )
        .await
        .unwrap();
    s.user_data
        .set_data(
            d,
            u,
            PRIVATE_STORE,
            "storage storage:rosternotes",
            Some("<storage xmlns=\"storage:rosternotes\"><note jid=\"bob@localhost\">hi</note></storage>"),
            1 << 20,
        )
        .await
        .unwrap();
    for i in 0..3 {
        s.offline
            .push_offline(
                d,
                u,
                &format!("<message xmlns=\"jabber:client\" from=\"bob@localhost/r\" to=\"alice@localhost\" type=\"chat\"><body>m{i}</body></message>"),
                100,
            )
            .await
            .unwrap();
    }
    // PEP: a node with its own configuration, a second affiliation, two subscriptions (one
    // without notifications) and two items, and a node with the defaults and no item.
    let pep = PubSubService::Account { domain: d, user: u };
    let mut config = NodeConfig::pep();
    config.title = "Alice's <mood>".into();
    config.access_model = rookery_modules::pubsub::config::AccessModel::Open;
    config.max_items = rookery_modules::pubsub::config::MaxItems::Count(10);
    s.pubsub
        .create_node(
            pep,
            "urn:xmpp:mood",
            &config.to_doc(),
            "alice@localhost",
            10,
        )
        .await
        .unwrap();
    s.pubsub
        .create_node(
            pep,
            "urn:xmpp:avatar:metadata",
            &NodeConfig::pep().to_doc(),
            "alice@localhost",
            10,
        )
        .await
        .unwrap();
    s.pubsub
        .set_affiliation(pep, "urn:xmpp:mood", "bob@localhost", Some("publisher"))
        .await
        .unwrap();
    for (jid, options) in [
        ("bob@localhost", ""),
        ("dave@remote.example/x", "nodeliver"),
    ] {
        s.pubsub
            .set_subscription(
                pep,
                "urn:xmpp:mood",
                &SubscriptionRecord {
                    jid: jid.into(),
                    subid: format!("sub-{jid}"),
                    state: "subscribed".into(),
                    options: options.into(),
                },
                10,
            )
            .await
            .unwrap();
    }
    for (id, mood) in [("first", "happy"), ("second", "sleepy")] {
        s.pubsub
            .publish_item(
                pep,
                "urn:xmpp:mood",
                &ItemRecord {
                    id: id.into(),
                    publisher: "alice@localhost".into(),
                    payload: format!(
                        "<mood xmlns=\"http://jabber.org/protocol/mood\"><{mood}/></mood>"
                    ),
                    published_us: 1,
                },
                10,
                100,
            )
            .await
            .unwrap();
    }
    s
}

fn config() -> Config {
    let dir = std::env::temp_dir().join(format!("rookery-pie-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rookery.toml");
    std::fs::write(
        &path,
        "data_dir = \"/nonexistent\"\n[[host]]\ndomain = \"localhost\"\n[[host]]\ndomain = \"example.org\"\n",
    )
    .unwrap();
    Config::load(Some(&path), &crate::registry()).unwrap()
}

async fn import_all(storage: &Storage, doc: &Document) -> Result<usize> {
    let skip = check(&config(), storage, doc, Existing::Refuse).await?;
    write(storage, doc, &skip).await
}

#[test]
fn round_trip_is_lossless() {
    block(async {
        let first = to_xml(&export(&populated().await, None).await.unwrap());
        let doc = parse(&first).unwrap();
        assert!(doc.skipped.is_empty(), "{:?}", doc.skipped);
        let fresh = Storage::memory();
        assert_eq!(import_all(&fresh, &doc).await.unwrap(), 3);
        let second = to_xml(&export(&fresh, None).await.unwrap());
        assert_eq!(first, second);
        // The offline messages keep their order and the data is where the modules read it.
        let offline = fresh
            .offline
            .peek_offline("localhost", "alice", 10)
            .await
            .unwrap();
        assert_eq!(offline.len(), 3);
        // PEP: the configuration, subscriptions and items where the module reads them.
        let pep = PubSubService::Account {
            domain: "localhost",
            user: "alice",
        };
        let nodes = fresh.pubsub.list_nodes(pep).await.unwrap();
        assert_eq!(nodes.len(), 2);
        let mood = NodeConfig::from_doc(&nodes[1].config).unwrap();
        assert_eq!(mood.title, "Alice's <mood>");
        let subs = fresh
            .pubsub
            .subscriptions(pep, "urn:xmpp:mood")
            .await
            .unwrap();
        assert_eq!(subs[1].options, "nodeliver");
        let items = fresh
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
        assert_eq!(items.items[0].id, "second", "the newest stays the newest");
        assert!(offline[0].1.contains("m0") && offline[2].1.contains("m2"));
        let creds = fresh
            .accounts
            .get_credentials("localhost", "alice", HashAlg::Sha256)
            .await
            .unwrap()
            .unwrap();
        assert!(creds.verify_password("secret-a"));
        assert_eq!(
            fresh.roster.pending_in("localhost", "alice").await.unwrap()[0].0,
            "eve@remote.example"
        );
        // The archive: order, ids, times and the other party (from the message) as stored.
        let page = fresh
            .archive
            .query_archive(
                "localhost",
                "alice",
                &ArchiveQuery {
                    filter: ArchiveFilter::default(),
                    page: PageRequest::First,
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
            [
                ("a1", 1_700_000_000_000_000, "bob@localhost", ""),
                ("a2", 1_700_000_001_500_000, "bob@localhost", "phone"),
                ("a3", 1_700_000_003_000_000, "dave@remote.example", "x"),
            ]
        );
        let blocked = fresh
            .user_data
            .get_data("localhost", "alice", BLOCKLIST_STORE, "")
            .await
            .unwrap()
            .unwrap();
        assert!(blocked.contains("spam.example") && blocked.contains("troll@remote.example/x"));
        // One domain only.
        let one = export(&fresh, Some("example.org")).await.unwrap();
        assert_eq!(one.hosts.len(), 1);
        assert_eq!(one.hosts[0].accounts[0].node, "carol");
        assert_eq!(one.hosts[0].accounts[0].credentials.len(), 1);
    });
}

#[test]
fn writes_every_part() {
    block(async {
        let xml = to_xml(&export(&populated().await, Some("localhost")).await.unwrap());
        assert!(xml.starts_with("<?xml version='1.0' encoding='UTF-8'?>\n<server-data xmlns=\"urn:xmpp:pie:0\"><host jid=\"localhost\"><user name=\"alice\">"));
        for part in [
            "<scram-credentials xmlns=\"urn:xmpp:pie:0#scram\" mechanism=\"SCRAM-SHA-1\"><iter-count>4096</iter-count><salt>",
            "mechanism=\"SCRAM-SHA-256\"",
            "mechanism=\"SCRAM-SHA-512\"",
            "<query xmlns=\"jabber:iq:roster\"><item jid=\"bob@localhost\" subscription=\"both\" name=\"Bob &amp; co\"><group>Friends</group><group>&lt;Work&gt;</group></item><item jid=\"dave@remote.example\" subscription=\"none\" ask=\"subscribe\" approved=\"true\"/></query>",
            "<presence xmlns=\"jabber:client\" from=\"eve@remote.example/x\" to=\"alice@localhost\" type=\"subscribe\"/>",
            "<vCard xmlns=\"vcard-temp\"><FN>Alice</FN></vCard>",
            "<query xmlns=\"jabber:iq:private\"><storage xmlns=\"storage:rosternotes\"><note jid=\"bob@localhost\">hi</note></storage></query>",
            "<offline-messages><message xmlns=\"jabber:client\" from=\"bob@localhost/r\" to=\"alice@localhost\" type=\"chat\"><body>m0</body></message>",
            "<pubsub xmlns=\"http://jabber.org/protocol/pubsub#owner\"><configure node=\"urn:xmpp:avatar:metadata\"><x xmlns=\"jabber:x:data\" type=\"submit\"><field var=\"FORM_TYPE\" type=\"hidden\"><value>http://jabber.org/protocol/pubsub#node_config</value></field><field var=\"pubsub#title\"><value/></field>",
            "<configure node=\"urn:xmpp:mood\"><x xmlns=\"jabber:x:data\" type=\"submit\"><field var=\"FORM_TYPE\" type=\"hidden\"><value>http://jabber.org/protocol/pubsub#node_config</value></field><field var=\"pubsub#title\"><value>Alice's &lt;mood&gt;</value></field>",
            "<field var=\"pubsub#access_model\"><value>open</value></field>",
            "<field var=\"pubsub#max_items\"><value>10</value></field>",
            "<affiliations node=\"urn:xmpp:mood\"><affiliation jid=\"alice@localhost\" affiliation=\"owner\"/><affiliation jid=\"bob@localhost\" affiliation=\"publisher\"/></affiliations>",
            "<subscriptions node=\"urn:xmpp:mood\"><subscription jid=\"bob@localhost\" subscription=\"subscribed\" subid=\"sub-bob@localhost\"/><subscription jid=\"dave@remote.example/x\" subscription=\"subscribed\" subid=\"sub-dave@remote.example/x\"><options><x xmlns=\"jabber:x:data\" type=\"submit\"><field var=\"FORM_TYPE\" type=\"hidden\"><value>http://jabber.org/protocol/pubsub#subscribe_options</value></field><field var=\"pubsub#deliver\"><value>0</value></field></x></options></subscription></subscriptions></pubsub>",
            "<blocklist xmlns=\"urn:xmpp:blocking\"><item jid=\"spam.example\"/><item jid=\"troll@remote.example/x\"/></blocklist>",
            "<archive xmlns=\"urn:xmpp:pie:0#mam\"><result xmlns=\"urn:xmpp:mam:2\" id=\"a1\"><forwarded xmlns=\"urn:xmpp:forward:0\"><delay xmlns=\"urn:xmpp:delay\" stamp=\"2023-11-14T22:13:20Z\"/><message xmlns=\"jabber:client\" from=\"alice@localhost/desk\" to=\"bob@localhost\" type=\"chat\"><body>a1 &amp; more</body></message></forwarded></result>",
            "<result xmlns=\"urn:xmpp:mam:2\" id=\"a2\"><forwarded xmlns=\"urn:xmpp:forward:0\"><delay xmlns=\"urn:xmpp:delay\" stamp=\"2023-11-14T22:13:21.5Z\"/>",
            "<pubsub xmlns=\"http://jabber.org/protocol/pubsub\"><items node=\"urn:xmpp:mood\"><item id=\"first\" publisher=\"alice@localhost\"><mood xmlns=\"http://jabber.org/protocol/mood\"><happy/></mood></item><item id=\"second\" publisher=\"alice@localhost\"><mood xmlns=\"http://jabber.org/protocol/mood\"><sleepy/></mood></item></items></pubsub>",
        ] {
            assert!(xml.contains(part), "{part} missing from {xml}");
        }
        assert!(!xml.contains("secret"));
        assert!(!xml.contains("example.org"));
    });
}

const OLD_FORM: &str = "<?xml version='1.0' encoding='UTF-8'?>
<server-data xmlns='urn:xmpp:pie:0'>
  <host jid='LocalHost'>
    <user name='Admin' password='old pass'>
      <query xmlns='jabber:iq:roster'>
        <item jid='Friend@Example.org' name='F' subscription='to'><group>G</group><group>G</group></item>
      </query>
      <vCard xmlns='vcard-temp'><NICKNAME>adm</NICKNAME></vCard>
      <query xmlns='jabber:iq:private'><empty xmlns='urn:example:empty'/></query>
      <query xmlns='jabber:iq:privacy'><list name='x'/></query>
      <offline-messages>
        <message xmlns='jabber:client' from='friend@example.org/r' to='admin@localhost'><body>1</body></message>
      </offline-messages>
      <presence xmlns='jabber:client' from='z@example.org' type='subscribe'/>
      <presence xmlns='jabber:client' from='a@example.org' type='subscribe'/>
    </user>
  </host>
</server-data>
";

#[test]
fn reads_the_older_form_with_a_password() {
    let doc = parse(OLD_FORM).unwrap();
    assert_eq!(doc.hosts[0].domain, "localhost");
    let a = &doc.hosts[0].accounts[0];
    assert_eq!(a.node, "admin");
    assert_eq!(a.credentials.len(), 3);
    assert!(a.credentials.iter().all(|c| c.verify_password("old pass")));
    assert_eq!(a.roster[0].jid, "friend@example.org");
    assert_eq!(a.roster[0].subscription, Subscription::To);
    assert_eq!(a.roster[0].groups, ["G"]);
    assert_eq!(a.pending_in[0].0, "a@example.org");
    assert_eq!(a.pending_in[1].0, "z@example.org");
    assert_eq!(a.offline.len(), 1);
    assert!(a.vcard.as_ref().unwrap().is("vCard", "vcard-temp"));
    assert!(a.private.is_empty());
    assert_eq!(
        doc.skipped,
        ["<query xmlns='jabber:iq:privacy'> of admin@localhost"]
    );
    // The password itself is stored nowhere.
    block(async {
        let s = Storage::memory();
        import_all(&s, &doc).await.unwrap();
        let xml = to_xml(&export(&s, None).await.unwrap());
        assert!(!xml.contains("old pass"));
    });
}

fn refused(xml: &str) -> String {
    format!("{:#}", parse(xml).unwrap_err())
}

fn with_user(inner: &str) -> String {
    format!(
        "<server-data xmlns='urn:xmpp:pie:0'><host jid='localhost'><user name='u' password='p'>{inner}</user></host></server-data>"
    )
}

fn scram(iter: &str, salt: &str, key: &str) -> String {
    format!(
        "<user name='u'><scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'>\
         <iter-count>{iter}</iter-count><salt>{salt}</salt><server-key>{key}</server-key>\
         <stored-key>{key}</stored-key></scram-credentials></user>"
    )
}

fn with_host(user: &str) -> String {
    format!("<server-data xmlns='urn:xmpp:pie:0'><host jid='localhost'>{user}</host></server-data>")
}

#[test]
fn scram_records_are_validated() {
    let key = BASE64.encode([7u8; 20]);
    let ok = parse(&with_host(&scram("4096", "c2FsdA==", &key))).unwrap();
    assert_eq!(ok.hosts[0].accounts[0].credentials[0].salt, b"salt");
    for (xml, expected) in [
        (scram("4095", "c2FsdA==", &key), "outside 4096..=1000000"),
        (scram("99999999", "c2FsdA==", &key), "outside"),
        (scram("-1", "c2FsdA==", &key), "not a number"),
        (scram("4096", "not base64!", &key), "<salt> is not base64"),
        (scram("4096", "c2FsdA==", "AAAA"), "key length"),
        (scram("4096", "", &key), "empty salt"),
    ] {
        let e = refused(&with_host(&xml));
        assert!(e.contains(expected), "{e}");
    }
    let e = refused(&with_host("<user name='u'/>"));
    assert!(e.contains("u@localhost has no credentials"), "{e}");
}

#[test]
fn malformed_documents_are_refused() {
    let deep = format!(
        "{}{}",
        "<vCard xmlns='vcard-temp'>".to_owned() + &"<a>".repeat(40),
        "</a>".repeat(40) + "</vCard>"
    );
    for (xml, expected) in [
        ("<server-data xmlns='urn:xmpp:pie:0'><host jid='localhost'>".to_owned(), "bad XML"),
        ("<!DOCTYPE x [<!ENTITY a 'b'>]><server-data/>".to_owned(), "bad XML"),
        ("<server-data/>".to_owned(), "not <server-data"),
        (with_user(&deep), "bad XML"),
        (
            "<server-data xmlns='urn:xmpp:pie:0'><host jid='a@b'/></server-data>".to_owned(),
            "host 'a@b' is not a valid domain",
        ),
        (
            "<server-data xmlns='urn:xmpp:pie:0'><host jid='localhost'><user name='a b' password='p'/></host></server-data>".to_owned(),
            "user 'a b' of host localhost is not a valid JID",
        ),
        (
            "<server-data xmlns='urn:xmpp:pie:0'><host jid='localhost'><user name='a' password='p'/><user name='A' password='p'/></host></server-data>".to_owned(),
            "user a@localhost appears twice",
        ),
        (
            with_user("<query xmlns='jabber:iq:roster'><item jid='@@'/></query>"),
            "is not a valid JID",
        ),
        (
            with_user("<query xmlns='jabber:iq:roster'><item jid='x@y' subscription='all'/></query>"),
            "unknown subscription 'all'",
        ),
        (
            with_user("<offline-messages><iq xmlns='jabber:client'/></offline-messages>"),
            "among the offline messages",
        ),
        (
            with_user("<query xmlns='jabber:iq:private'><x xmlns='jabber:client'/></query>"),
            "cannot be stored",
        ),
        (
            with_user("<presence xmlns='jabber:client' type='subscribe'/>"),
            "has no from",
        ),
        (
            with_user("<offline-messages><message xmlns='jabber:client'/></offline-messages>"),
            "an offline message has no from",
        ),
        (
            with_user("<pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><configure node='n'><x xmlns='jabber:x:data' type='submit'><field var='pubsub#access_model'><value>everyone</value></field></x></configure></pubsub>"),
            "unknown access model",
        ),
        (
            with_user("<pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><configure node='n'/></pubsub>"),
            "without a form",
        ),
        (
            with_user("<pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><affiliations node='n'><affiliation jid='x@y' affiliation='king'/></affiliations></pubsub>"),
            "unknown affiliation 'king'",
        ),
        (
            with_user("<pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><subscriptions node='n'><subscription jid='x@y' subscription='subscribed' subid=''/></subscriptions></pubsub>"),
            "a subid of 1 to 1024 bytes",
        ),
        (
            with_user("<pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><subscriptions node='n'><subscription jid='x@y' subscription='maybe'/></subscriptions></pubsub>"),
            "unknown subscription state 'maybe'",
        ),
        (
            with_user("<pubsub xmlns='http://jabber.org/protocol/pubsub'><items node=''/></pubsub>"),
            "node name of 0 bytes",
        ),
        (
            with_user("<pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='n'><item id='1'/><item id='1'/></items></pubsub>"),
            "item '1' appears twice",
        ),
        (
            with_user("<pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='n'><item id='1'><a xmlns='x'/><b xmlns='x'/></item></items></pubsub>"),
            "more than one payload",
        ),
    ] {
        let e = refused(&xml);
        assert!(e.contains(expected), "{expected:?} not in {e}");
    }
    let huge = " ".repeat(MAX_DOCUMENT_BYTES + 1);
    assert!(refused(&huge).contains("larger than"));
}

/// PEP data as Prosody's XEP-0227 storage writes it: configuration fields Rookery has no
/// setting for (named and skipped), an affiliation `none`, subscriptions without subid.
#[test]
fn reads_pep_nodes_other_servers_write() {
    let doc = parse(&with_user(
        "<pubsub xmlns='http://jabber.org/protocol/pubsub#owner'>\
           <configure node='urn:xmpp:microblog:0'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field>\
             <field var='pubsub#access_model'><value>open</value></field>\
             <field var='pubsub#itemreply'><value>owner</value></field>\
           </x></configure>\
           <affiliations node='urn:xmpp:microblog:0'><affiliation jid='x@y' affiliation='none'/></affiliations>\
           <subscriptions node='urn:xmpp:microblog:0'><subscription jid='b@y' subscribed='subscribed'/><subscription jid='a@y' subscribed='subscribed'/></subscriptions>\
         </pubsub>\
         <pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:microblog:0'>\
           <item id='1'><entry xmlns='http://www.w3.org/2005/Atom'><title>hi</title></entry></item>\
         </items></pubsub>",
    ))
    .unwrap();
    let n = &doc.hosts[0].accounts[0].pep[0];
    assert_eq!(n.node, "urn:xmpp:microblog:0");
    assert_eq!(
        n.config.access_model,
        rookery_modules::pubsub::config::AccessModel::Open
    );
    assert!(n.affiliations.is_empty());
    let subs: Vec<(&str, &str, &str)> = n
        .subscriptions
        .iter()
        .map(|s| (s.jid.as_str(), s.subid.as_str(), s.state.as_str()))
        .collect();
    assert_eq!(
        subs,
        [
            ("a@y", "imported-2", "subscribed"),
            ("b@y", "imported-1", "subscribed")
        ]
    );
    assert_eq!(n.items.len(), 1);
    assert_eq!(
        doc.skipped,
        ["the setting 'pubsub#itemreply' of PEP node 'urn:xmpp:microblog:0' of u@localhost"]
    );
}

#[test]
fn check_refuses_before_anything_is_written() {
    block(async {
        let s = Storage::memory();
        s.accounts
            .create_account("localhost", "admin", &creds("x"))
            .await
            .unwrap();
        let doc = parse(OLD_FORM).unwrap();
        // An existing account refuses the whole document, naming it.
        let e = check(&config(), &s, &doc, Existing::Refuse)
            .await
            .unwrap_err();
        assert!(format!("{e}").contains("admin@localhost"), "{e}");
        // A PEP node with more items than its max_items (1 for a PEP node by default).
        let two = parse(&with_user(
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='n'><item id='1'/><item id='2'/></items></pubsub>",
        ))
        .unwrap();
        let e = check(&config(), &s, &two, Existing::Refuse)
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("holds 2 items"), "{e:#}");
        let skip = check(&config(), &s, &doc, Existing::Skip).await.unwrap();
        assert_eq!(write(&s, &doc, &skip).await.unwrap(), 0);
        assert!(s
            .roster
            .roster("localhost", "admin")
            .await
            .unwrap()
            .items
            .is_empty());
        // A host the configuration does not serve.
        let other = parse(&OLD_FORM.replace("LocalHost", "elsewhere.example")).unwrap();
        let e = check(&config(), &s, &other, Existing::Refuse)
            .await
            .unwrap_err();
        assert!(format!("{e}").contains("elsewhere.example"), "{e}");
        // More offline messages than the configuration allows.
        let many = with_user(&format!(
            "<offline-messages>{}</offline-messages>",
            "<message xmlns='jabber:client' from='a@b'/>".repeat(1001)
        ));
        let e = check(&config(), &s, &parse(&many).unwrap(), Existing::Refuse)
            .await
            .unwrap_err();
        assert!(format!("{e}").contains("max_offline_messages"), "{e}");
        assert_eq!(s.accounts.list_accounts(None).await.unwrap().len(), 1);
    });
}

/// A record in ejabberd's `password='scram:…'` form.
fn ejabberd_scram(c: &ScramCredentials) -> String {
    format!(
        "scram:{},{},{},{}",
        BASE64.encode(&c.stored_key),
        BASE64.encode(&c.server_key),
        BASE64.encode(&c.salt),
        c.iterations
    )
}

#[test]
fn reads_what_ejabberd_writes() {
    let c = ScramCredentials::derive(HashAlg::Sha1, "pencil", b"saltsalt", 4096).unwrap();
    let dir = std::env::temp_dir().join(format!("rookery-pie-ejabberd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let main = dir.join("20261206-120000.xml");
    std::fs::write(
        &main,
        "<?xml version='1.0' encoding='UTF-8'?><server-data xmlns='urn:xmpp:pie:0' \
         xmlns:xi='http://www.w3.org/2001/XInclude'><xi:include href='20261206-120000_localhost.xml'/></server-data>",
    )
    .unwrap();
    std::fs::write(
        dir.join("20261206-120000_localhost.xml"),
        format!(
            "<?xml version='1.0' encoding='UTF-8'?><host xmlns='urn:xmpp:pie:0' \
             xmlns:xi='http://www.w3.org/2001/XInclude' jid='localhost'>\
             <user name='juliet' password='{}'><offline-messages><message xmlns='jabber:client' \
             from='romeo@example.net/r' to='juliet@localhost' type='chat'><body>hi</body></message>\
             </offline-messages><query xmlns='jabber:iq:roster'><item jid='romeo@example.net' \
             subscription='both'/></query><presence xmlns='jabber:client' from='nurse@example.net' \
             to='juliet@localhost' type='subscribe'><status/></presence></user>\
             <user name='romeo' password='plain one'/></host>",
            ejabberd_scram(&c)
        ),
    )
    .unwrap();
    let doc = read(&main).unwrap();
    let accounts = &doc.hosts[0].accounts;
    assert_eq!(accounts[0].credentials, std::slice::from_ref(&c));
    assert!(accounts[0].credentials[0].verify_password("pencil"));
    assert_eq!(accounts[0].offline.len(), 1);
    assert_eq!(accounts[0].roster[0].subscription, Subscription::Both);
    assert_eq!(accounts[0].pending_in[0].0, "nurse@example.net");
    assert_eq!(accounts[1].credentials.len(), 3);
    // The older namespace, and the record with its hash named.
    let c256 = ScramCredentials::derive(HashAlg::Sha256, "pencil", b"saltsalt", 4096).unwrap();
    let old = format!(
        "<server-data xmlns='http://www.xmpp.org/extensions/xep-0227.html#ns'><host jid='localhost'>\
         <user name='a' password='{}'/></host></server-data>",
        ejabberd_scram(&c256).replacen("scram:", "scram:sha256,", 1)
    );
    assert_eq!(
        parse(&old).unwrap().hosts[0].accounts[0].credentials,
        [c256]
    );
    // Bad records and includes out of the directory.
    for (password, expected) in [
        ("scram:AAAA,BBBB", "expected StoredKey"),
        ("scram:md5:a,b,c,4096", "unknown hash"),
        (&ejabberd_scram(&c).replace(",4096", ",10"), "outside"),
        (
            &ejabberd_scram(&c).replacen("scram:", "scram:!", 1),
            "not base64",
        ),
        ("", "empty password"),
    ] {
        let xml = with_host(&format!("<user name='u' password='{password}'/>"));
        let e = refused(&xml);
        assert!(e.contains(expected), "{expected:?} not in {e}");
    }
    for href in ["../etc/passwd", "/etc/passwd", "sub/file.xml", ""] {
        std::fs::write(
            &main,
            format!("<server-data xmlns='urn:xmpp:pie:0'><include xmlns='http://www.w3.org/2001/XInclude' href='{href}'/></server-data>"),
        )
        .unwrap();
        let e = format!("{:#}", read(&main).unwrap_err());
        assert!(e.contains("same directory"), "{e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reads_the_scram_records_ejabberd_encodes_twice() {
    // ejabberd 23.01's export_piefxis writes base64 of the base64 it keeps.
    let c = ScramCredentials::derive(HashAlg::Sha1, "pencil", b"saltsalt", 4096).unwrap();
    let twice = |v: &[u8]| BASE64.encode(BASE64.encode(v));
    let xml = with_host(&format!(
        "<user name='u'><scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'>\
         <iter-count>4096</iter-count><salt>{}</salt><server-key>{}</server-key>\
         <stored-key>{}</stored-key></scram-credentials></user>",
        twice(&c.salt),
        twice(&c.server_key),
        twice(&c.stored_key)
    ));
    let read = parse(&xml).unwrap();
    assert_eq!(
        read.hosts[0].accounts[0].credentials,
        std::slice::from_ref(&c)
    );
    assert!(read.hosts[0].accounts[0].credentials[0].verify_password("pencil"));
    // Keys of the wrong length that are not such a double encoding stay refused.
    let bad = with_host(&format!(
        "<user name='u'><scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'>\
         <iter-count>4096</iter-count><salt>{}</salt><server-key>{}</server-key>\
         <stored-key>{}</stored-key></scram-credentials></user>",
        BASE64.encode(&c.salt),
        BASE64.encode(&c.server_key[..10]),
        BASE64.encode(&c.stored_key[..10])
    ));
    assert!(refused(&bad).contains("scram-credentials"));
}

#[test]
fn malformed_archives_and_blocklists_are_refused() {
    let result = |id: &str, stamp: &str, message: &str| {
        format!(
            "<result xmlns='urn:xmpp:mam:2'{id}><forwarded xmlns='urn:xmpp:forward:0'>{stamp}{message}</forwarded></result>"
        )
    };
    let stamp = "<delay xmlns='urn:xmpp:delay' stamp='2024-01-02T03:04:05Z'/>";
    let message = "<message xmlns='jabber:client' from='bob@localhost/r' to='u@localhost'><body>x</body></message>";
    let archive = |results: &str| {
        with_user(&format!(
            "<archive xmlns='urn:xmpp:pie:0#mam'>{results}</archive>"
        ))
    };
    // The good form is read, the other party taken from the message.
    let doc = parse(&archive(&result(" id='1'", stamp, message))).unwrap();
    let m = &doc.hosts[0].accounts[0].archive[0];
    assert_eq!(
        (m.with_bare.as_str(), m.with_resource.as_str()),
        ("bob@localhost", "r")
    );
    assert_eq!(m.timestamp_us, 1_704_164_645_000_000);
    for (xml, why) in [
        (archive(&result("", stamp, message)), "has no id"),
        (
            archive(&(result(" id='1'", stamp, message) + &result(" id='1'", stamp, message))),
            "appears twice",
        ),
        (archive(&result(" id='1'", "", message)), "no delay stamp"),
        (
            archive(&result(
                " id='1'",
                "<delay xmlns='urn:xmpp:delay' stamp='yesterday'/>",
                message,
            )),
            "not an XEP-0082 DateTime",
        ),
        (
            archive(&result(" id='1'", stamp, "")),
            "forwards no <message",
        ),
        (
            archive(&result(
                " id='1'",
                stamp,
                "<message xmlns='jabber:client' from='u@localhost'/>",
            )),
            "names no other party",
        ),
        (
            archive("<message xmlns='jabber:client'/>"),
            "expected <result",
        ),
        (
            with_user("<blocklist xmlns='urn:xmpp:blocking'><item jid='a@@b'/></blocklist>"),
            "not a valid JID",
        ),
        (
            with_user("<blocklist xmlns='urn:xmpp:blocking'><item/></blocklist>"),
            "not an <item jid",
        ),
    ] {
        let e = refused(&xml);
        assert!(e.contains(why), "{why}: {e}");
    }
}
