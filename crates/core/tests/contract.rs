//! Parts of the module contract the core checks on its own: keys a module owns in a table it
//! shares with the core (`[limits]`), and the namespaces a module answers before
//! authentication.

use rookery_core::config::ConfigError;
use rookery_core::{
    pre_auth_fn, Config, HostBuilder, Module, ModuleError, ModuleRegistry, Place, Section,
    SectionDecl, Server,
};
use rookery_stanza::StanzaError;
use rookery_storage::Storage;
use serde::{Deserialize, Serialize};
use std::path::Path;

const NS_EARLY: &str = "urn:test:early";

/// Two keys in `[limits]`, one of them checked.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
struct WidgetLimits {
    max_widgets: u32,
    widget_label: String,
}

impl Default for WidgetLimits {
    fn default() -> Self {
        Self {
            max_widgets: 3,
            widget_label: "w".into(),
        }
    }
}

impl Section for WidgetLimits {
    const KEY: &'static str = "limits";
    const PLACE: Place = Place::SharedTable;
    const EXAMPLE: &'static str = "max_widgets = 3\nwidget_label = \"w\"\n";
    // Read at each use: a reload applies it (GadgetLimits, below, is not live).
    const LIVE: bool = true;
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.max_widgets == 0 {
            return Err(ConfigError::invalid(
                format!("{key}.max_widgets"),
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}

/// Another module's key in the same table.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
struct GadgetLimits {
    max_gadgets: u32,
}

impl Section for GadgetLimits {
    const KEY: &'static str = "limits";
    const PLACE: Place = Place::SharedTable;
    const EXAMPLE: &'static str = "max_gadgets = 0\n";
}

/// Owns the widget limits and answers `urn:test:early` before authentication.
struct Widgets;

impl Module for Widgets {
    const NAME: &'static str = "widgets";
    const CONFIG: &'static [SectionDecl] = &[SectionDecl::of::<WidgetLimits>()];
    const PRE_AUTH: &'static [&'static str] = &[NS_EARLY];
    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        host.pre_auth_handler(
            NS_EARLY,
            pre_auth_fn(|_| async { Err(StanzaError::service_unavailable()) }),
        )
    }
}

struct Gadgets;

impl Module for Gadgets {
    const NAME: &'static str = "gadgets";
    const CONFIG: &'static [SectionDecl] = &[SectionDecl::of::<GadgetLimits>()];
    fn init(_: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        Ok(())
    }
}

/// Answers a namespace before authentication without declaring it.
struct Undeclared;

impl Module for Undeclared {
    const NAME: &'static str = "undeclared";
    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        host.pre_auth_handler(
            "urn:test:sneaky",
            pre_auth_fn(|_| async { Err(StanzaError::service_unavailable()) }),
        )
    }
}

fn registry() -> ModuleRegistry {
    let mut r = ModuleRegistry::new();
    r.register::<Widgets>().register::<Gadgets>();
    r
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("t.toml"), Path::new("."), &registry())
}

fn error(text: &str) -> String {
    parse(text).expect_err("refused").to_string()
}

#[test]
fn modules_keys_in_a_shared_table_are_read_beside_the_cores() {
    let c = parse("[limits]\nmax_depth = 10\nmax_widgets = 7\nmax_gadgets = 2\n").expect("valid");
    assert_eq!(c.limits.max_depth, 10);
    assert_eq!(
        *c.section::<WidgetLimits>(),
        WidgetLimits {
            max_widgets: 7,
            ..WidgetLimits::default()
        }
    );
    assert_eq!(c.section::<GadgetLimits>().max_gadgets, 2);
    // Absent: the defaults.
    let c = parse("[limits]\nmax_depth = 10\n").expect("valid");
    assert_eq!(*c.section::<WidgetLimits>(), WidgetLimits::default());
    let c = Config::load(None, &registry()).expect("default");
    assert_eq!(*c.section::<WidgetLimits>(), WidgetLimits::default());
}

#[test]
fn a_reload_applies_live_sections_to_every_clone_of_the_running_configuration() {
    let running = parse("[limits]\nmax_widgets = 3\nmax_gadgets = 1\n").expect("valid");
    // The server and the reloader each hold a clone of the running configuration.
    let server_copy = running.clone();
    let new = parse("[limits]\nmax_widgets = 5\nmax_gadgets = 2\n").expect("valid");
    assert_eq!(running.sections.apply_live(&new.sections), ["limits"]);
    assert_eq!(server_copy.section::<WidgetLimits>().max_widgets, 5);
    // A section that is not live keeps its value, and still differs from the new file.
    assert_eq!(server_copy.section::<GadgetLimits>().max_gadgets, 1);
    assert_eq!(running.sections.changed(&new.sections), ["limits"]);
    // Nothing left to apply; with the gadgets equal too, nothing differs.
    assert!(running.sections.apply_live(&new.sections).is_empty());
    let same = parse("[limits]\nmax_widgets = 5\nmax_gadgets = 1\n").expect("valid");
    assert!(running.sections.changed(&same.sections).is_empty());
}

#[test]
fn a_key_of_a_shared_table_that_nobody_reads_is_refused_by_name() {
    assert_eq!(
        error("[limits]\nmax_widgetz = 7\n"),
        "limits.max_widgetz: unknown key (line 2)"
    );
    assert_eq!(
        error("[limits]\nmax_widgets = 7\nmax_depht = 10\n"),
        "limits.max_depht: unknown key (line 3)"
    );
    // A module's key is unknown in a build without the module.
    let e = Config::from_toml(
        "[limits]\nmax_widgets = 7\n",
        Path::new("t.toml"),
        Path::new("."),
        &ModuleRegistry::new(),
    )
    .expect_err("refused")
    .to_string();
    assert_eq!(e, "limits.max_widgets: unknown key (line 2)");
}

#[test]
fn a_modules_keys_in_a_shared_table_are_validated_under_their_names() {
    assert_eq!(
        error("[limits]\nmax_widgets = 0\n"),
        "limits.max_widgets: must be greater than 0"
    );
    let e = error("[limits]\nmax_depth = 10\nmax_widgets = 'lots'\n");
    assert!(e.contains("max_widgets") && e.contains("line 3"), "{e}");
}

#[tokio::test]
async fn pre_auth_namespaces_are_answered_on_hosts_without_the_module() {
    let cfg = Config::from_toml(
        "[[host]]\ndomain = 'a.org'\n[[host]]\ndomain = 'b.org'\nmodules = ['gadgets']\n",
        Path::new("t.toml"),
        Path::new("."),
        &registry(),
    )
    .expect("config");
    let server = Server::new(cfg, Storage::memory(), &registry()).expect("server");
    let (a, b) = (
        server.host("a.org").expect("a"),
        server.host("b.org").expect("b"),
    );
    assert!(a.pre_auth_handler(NS_EARLY).is_some());
    assert!(a.answers_before_auth(NS_EARLY));
    // b.org does not run the module: no handler, but the namespace is still answered
    // (`service-unavailable`) rather than ending the stream.
    assert!(b.pre_auth_handler(NS_EARLY).is_none());
    assert!(b.answers_before_auth(NS_EARLY));
    assert!(!a.answers_before_auth("jabber:iq:roster"));
}

#[test]
fn a_pre_auth_handler_must_be_declared() {
    let mut r = ModuleRegistry::new();
    r.register::<Undeclared>();
    let cfg = Config::load(None, &r).expect("default");
    let e = r
        .build_host("localhost", None, &cfg, &Storage::memory())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("undeclared") && e.contains("urn:test:sneaky"),
        "{e}"
    );
}
