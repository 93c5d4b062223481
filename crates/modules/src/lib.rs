//! Feature modules. Each file is one feature with one entry point, a type implementing
//! [`rookery_core::Module`]; [`registry`] lists every module this build has.

pub mod admin;
pub mod avatar;
pub mod blocking;
pub mod bookmarks;
pub mod budget;
pub mod caps;
pub mod carbons;
pub mod contact_info;
pub mod disco;
pub mod extdisco;
pub mod form;
pub mod last;
pub mod mam;
pub mod muc;
pub mod offline;
pub mod ping;
pub mod presence;
pub mod private;
pub mod proxy65;
pub mod pubsub;
pub mod push;
pub mod register;
pub mod roster;
pub mod time;
pub mod turn;
pub mod upload;
pub mod vcard;
pub mod version;

use rookery_core::config::ConfigError;
use rookery_core::ModuleRegistry;

/// Refuses 0 for a size or count limit `table.name`: it would refuse everything rather than
/// nothing, which no operator means.
pub(crate) fn require_positive(table: &str, name: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(
            format!("{table}.{name}"),
            "must be greater than 0",
        ));
    }
    Ok(())
}

/// Refuses a service's `domain` setting (`table.domain`) that is set but is not a bare
/// domain: an empty one means the module's default (`conference.<host>`, `upload.<host>`...).
pub(crate) fn require_domain(table: &str, domain: &str) -> Result<(), ConfigError> {
    if !domain.is_empty()
        && rookery_stanza::parse_jid(domain)
            .map(|j| j.node().is_some() || j.resource().is_some())
            .unwrap_or(true)
    {
        return Err(ConfigError::invalid(
            format!("{table}.domain"),
            format!("'{domain}' is not a domain"),
        ));
    }
    Ok(())
}

/// Every module compiled into this build, in initialisation order.
pub fn registry() -> ModuleRegistry {
    let mut r = ModuleRegistry::new();
    r.register::<disco::Disco>()
        .register::<ping::Ping>()
        .register::<version::Version>()
        .register::<time::Time>()
        .register::<roster::Roster>()
        .register::<presence::Presence>()
        .register::<caps::Caps>()
        .register::<offline::Offline>()
        .register::<vcard::VCard>()
        .register::<private::Private>()
        .register::<last::Last>()
        .register::<blocking::Blocking>()
        .register::<register::Register>()
        .register::<contact_info::ContactInfo>()
        .register::<carbons::Carbons>()
        .register::<push::Push>()
        .register::<mam::Mam>()
        .register::<muc::Muc>()
        .register::<pubsub::pep::Pep>()
        .register::<pubsub::service::PubSub>()
        .register::<bookmarks::Bookmarks>()
        .register::<avatar::Avatar>()
        .register::<upload::Upload>()
        .register::<admin::Admin>()
        .register::<turn::Turn>()
        .register::<extdisco::ExtDisco>()
        .register::<proxy65::Proxy65>();
    r
}

#[cfg(test)]
mod tests;
