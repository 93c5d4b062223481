//! The configuration sections modules declare: read with their defaults, validated at start,
//! unknown keys refused by name, and documented in `rookery.example.toml` from the modules'
//! own declarations.

use rookery_core::config::{Config, ConfigError};
use rookery_core::Place;
use rookery_modules::caps::CapsConfig;
use rookery_modules::contact_info::ContactAddresses;
use rookery_modules::mam::config::{ArchiveConfig, ArchivePreference};
use rookery_modules::offline::OfflineLimits;
use rookery_modules::private::PrivateLimits;
use rookery_modules::push::PushConfig;
use rookery_modules::register::in_band::{Registration, RegistrationLimits};
use rookery_modules::roster::RosterLimits;
use rookery_modules::vcard::VcardLimits;
use rookery_net::fast::FastConfig;
use rookery_net::sm::StreamManagementConfig;
use std::path::Path;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(
        text,
        Path::new("test.toml"),
        Path::new("/etc/rookery"),
        &rookery_net::with_stream_sections(rookery_modules::registry()),
    )
}

fn error(text: &str) -> String {
    parse(text).expect_err("refused").to_string()
}

fn example_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rookery.example.toml")
}

#[test]
fn sections_are_read_where_operators_write_them() {
    let c = parse(
        "[archive]\nretention_days = 30\ndefault_preference = 'roster'\n\
         [push]\ninclude_body = true\n\
         [[host]]\ndomain = 'a.org'\nregistration = true\n\
         [host.contact]\nabuse = ['mailto:abuse@a.org']\n\
         [[host]]\ndomain = 'b.org'\n",
    )
    .expect("valid");
    let archive = c.section::<ArchiveConfig>();
    assert_eq!(archive.retention_days, 30);
    assert_eq!(archive.default_preference, ArchivePreference::Roster);
    assert_eq!(
        archive.max_page_size,
        ArchiveConfig::default().max_page_size
    );
    assert!(c.section::<PushConfig>().include_body);
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    assert_eq!(*a.section::<Registration>(), Registration(true));
    assert_eq!(
        a.section::<ContactAddresses>().abuse,
        ["mailto:abuse@a.org"]
    );
    assert_eq!(*b.section::<Registration>(), Registration(false));
    assert_eq!(
        *b.section::<ContactAddresses>(),
        ContactAddresses::default()
    );
}

/// The limits modules own sit in `[limits]` beside the core's, under the keys operators
/// have always written there.
#[test]
fn module_limits_are_read_from_the_limits_table() {
    let c = parse(
        "[limits]\nmax_stanza_bytes = 65536\nmax_roster_items = 7\nmax_offline_messages = 3\n\
         max_vcard_bytes = 300\nmax_private_bytes = 200\nregistrations_per_ip_per_hour = 1\n\
         min_password_length = 10\n",
    )
    .expect("valid");
    assert_eq!(c.limits.max_stanza_bytes, 65536);
    assert_eq!(c.limits.min_password_length, 10);
    assert_eq!(c.section::<RosterLimits>().max_roster_items, 7);
    assert_eq!(c.section::<OfflineLimits>().max_offline_messages, 3);
    assert_eq!(c.section::<VcardLimits>().max_vcard_bytes, 300);
    assert_eq!(c.section::<PrivateLimits>().max_private_bytes, 200);
    assert_eq!(
        c.section::<RegistrationLimits>()
            .registrations_per_ip_per_hour,
        1
    );
}

/// Without the keys, the defaults they had in the core.
#[test]
fn module_limits_keep_their_defaults() {
    for c in [
        Config::load(None, &rookery_modules::registry()).expect("default config"),
        parse("[limits]\nmax_depth = 32\n").expect("valid"),
    ] {
        assert_eq!(c.section::<RosterLimits>().max_roster_items, 5000);
        assert_eq!(c.section::<OfflineLimits>().max_offline_messages, 1000);
        assert_eq!(c.section::<VcardLimits>().max_vcard_bytes, 204_800);
        assert_eq!(c.section::<PrivateLimits>().max_private_bytes, 65_536);
        assert_eq!(
            c.section::<RegistrationLimits>()
                .registrations_per_ip_per_hour,
            5
        );
        assert_eq!(c.limits.min_password_length, 8);
    }
}

#[test]
fn module_limits_are_validated_under_their_keys() {
    for key in [
        "max_roster_items",
        "max_offline_messages",
        "max_vcard_bytes",
        "max_private_bytes",
        "registrations_per_ip_per_hour",
    ] {
        assert_eq!(
            error(&format!("[limits]\n{key} = 0\n")),
            format!("limits.{key}: must be greater than 0")
        );
        let e = error(&format!("[limits]\n{key} = 'many'\n"));
        assert!(e.contains(key) && e.contains("line 2"), "{e}");
    }
}

#[test]
fn an_unknown_key_in_the_limits_table_is_refused_by_name() {
    // Next to a module's key, next to the core's, and declared by nobody.
    assert_eq!(
        error("[limits]\nmax_roster_itemz = 1\n"),
        "limits.max_roster_itemz: unknown key (line 2)"
    );
    assert_eq!(
        error("[limits]\nmax_stanza_byte = 4096\nmax_roster_items = 1\n"),
        "limits.max_stanza_byte: unknown key (line 2)"
    );
    assert_eq!(
        error("[limits]\nmax_rooms = 10\n"),
        "limits.max_rooms: unknown key (line 2)"
    );
}

#[test]
fn a_modules_unknown_key_is_refused_by_name() {
    let e = error("[archive]\nretention_dayz = 30\n");
    assert!(e.contains("retention_dayz") && e.contains("line 2"), "{e}");
    let e = error("[[host]]\ndomain = 'a.org'\n[host.contact]\nabuze = ['mailto:x@a.org']\n");
    assert!(e.contains("abuze"), "{e}");
    // What neither the core nor a module declares.
    assert_eq!(error("archives = 1\n"), "archives: unknown key (line 1)");
    assert_eq!(
        error("[[host]]\ndomain = 'a.org'\nregistraton = true\n"),
        "host[0].registraton: unknown key (line 3)"
    );
}

/// `[stream_management]` and `[fast]` belong to the client stream (`net`), not the core: the
/// same keys as before, read and checked by the stream layer's own sections.
#[test]
fn the_stream_layers_sections_keep_their_keys() {
    let c = parse(
        "[stream_management]\nresume_timeout_secs = 60\nmax_unacked_stanzas = 5\n\
         [fast]\nenabled = false\ntoken_lifetime_secs = 4\n",
    )
    .expect("valid");
    let sm = c.section::<StreamManagementConfig>();
    assert_eq!(sm.resume_timeout_secs, 60);
    assert_eq!(sm.max_unacked_stanzas, 5);
    assert!(sm.enabled);
    let fast = c.section::<FastConfig>();
    assert!(!fast.enabled);
    assert_eq!(fast.token_lifetime_secs, 4);
    // Refused with its place in the file, as before the sections moved.
    let e = error("[fast]\nenabld = true\n");
    assert!(e.contains("line 2") && e.contains("enabld"), "{e}");
    for (text, key) in [
        (
            "[stream_management]\nresume_timeout_secs = 0\n",
            "stream_management.resume_timeout_secs",
        ),
        (
            "[stream_management]\nmax_unacked_stanzas = 0\n",
            "stream_management.max_unacked_stanzas",
        ),
        (
            "[fast]\ntoken_lifetime_secs = 0\n",
            "fast.token_lifetime_secs",
        ),
    ] {
        let e = error(text);
        assert!(e.contains(key), "{key} not named in: {e}");
    }
}

#[test]
fn a_modules_bad_values_are_named() {
    for (text, key) in [
        ("[archive]\nmax_page_size = 0\n", "archive.max_page_size"),
        ("[archive]\ndefault_page_size = 300\n", "archive.default_page_size"),
        ("[archive]\ndefault_preference = 'sometimes'\n", "sometimes"),
        ("[archive]\nretention_days = 'long'\n", "retention_days"),
        ("[push]\nmax_registrations = 0\n", "push.max_registrations"),
        ("[push]\nrequest_timeout_secs = 0\n", "push.request_timeout_secs"),
        ("[caps]\nmax_cache_entries = 0\n", "caps.max_cache_entries"),
        ("[caps]\nquery_timeout_secs = 0\n", "caps.query_timeout_secs"),
        ("[caps]\nmax_contacts_per_account = 0\n", "caps.max_contacts_per_account"),
        (
            "[[host]]\ndomain = 'a.org'\n[[host]]\ndomain = 'b.org'\n[host.contact]\nadmin = ['admin@b.org']\n",
            "host[1].contact",
        ),
        ("[[host]]\ndomain = 'a.org'\nregistration = 'yes'\n", "registration"),
    ] {
        let e = error(text);
        assert!(e.contains(key), "{key} not named in: {e}");
    }
}

/// The example file documents every key with its default: the core's here, each module's
/// section as the module declares it.
#[test]
fn example_config_parses_and_matches_defaults() {
    let registry = rookery_net::with_stream_sections(rookery_modules::registry());
    let c = Config::load(Some(&example_path()), &registry).expect("the example config is valid");
    let d = Config::default();
    assert_eq!(
        c.limits, d.limits,
        "the example documents the default limits"
    );
    assert_eq!(
        *c.section::<StreamManagementConfig>(),
        StreamManagementConfig::default()
    );
    assert_eq!(*c.section::<FastConfig>(), FastConfig::default());
    assert_eq!(c.log_level, d.log_level);
    assert_eq!(c.tls.require_starttls, d.tls.require_starttls);
    assert_eq!(c.listeners.len(), d.listeners.len());
    assert_eq!(c.hosts[0].domain, "localhost");
    assert_eq!(*c.section::<PushConfig>(), PushConfig::default());
    assert_eq!(*c.section::<ArchiveConfig>(), ArchiveConfig::default());
    assert_eq!(*c.section::<CapsConfig>(), CapsConfig::default());
}

#[test]
fn example_file_lists_each_modules_section_as_declared() {
    let example = std::fs::read_to_string(example_path()).expect("example file");
    let registry = rookery_net::with_stream_sections(rookery_modules::registry());
    let mut seen = 0;
    for decl in registry.sections() {
        seen += 1;
        assert!(
            example.contains(decl.example),
            "rookery.example.toml lacks the '{}' section as its module declares it:\n{}",
            decl.key,
            decl.example
        );
        let defaults = decl.defaults().expect("defaults serialise");
        let keys: Vec<&str> = match &defaults {
            toml::Value::Table(t) => t.keys().map(String::as_str).collect(),
            _ => vec![decl.key],
        };
        for key in keys {
            assert!(
                decl.example.contains(key),
                "the example of '{}' does not mention its key '{key}'",
                decl.key
            );
        }
        // A top-level section's example shows its defaults as they are.
        if decl.place == Place::Server {
            let shown: toml::Table = toml::from_str(decl.example).expect("example is TOML");
            assert_eq!(
                shown.get(decl.key),
                Some(&defaults),
                "the example of '{}' differs from its defaults",
                decl.key
            );
        }
        // Keys in a shared table: their lines show the defaults, and they are in that table.
        if decl.place == Place::SharedTable {
            let shown: toml::Table = toml::from_str(decl.example).expect("example is TOML");
            assert_eq!(
                toml::Value::Table(shown),
                defaults,
                "the example of keys in '{}' differs from their defaults",
                decl.key
            );
            let at = example.find(decl.example).expect("checked above");
            let table = example[..at]
                .lines()
                .rev()
                .find(|l| l.starts_with('['))
                .unwrap_or_default();
            assert_eq!(
                table,
                format!("[{}]", decl.key),
                "{:?} is not in the [{}] table of the example",
                decl.example,
                decl.key
            );
        }
    }
    assert!(
        seen >= 11,
        "push, archive, contact, registration, the five module limits, stream management and FAST are declared"
    );
}
