//! Feature modules. Each file is one feature with one entry point, a type implementing
//! [`rookery_core::Module`]; [`registry`] lists every module this build has.

pub mod disco;
pub mod offline;
pub mod ping;
pub mod presence;
pub mod roster;
pub mod time;
pub mod version;

use rookery_core::ModuleRegistry;

/// Every module compiled into this build, in initialisation order.
pub fn registry() -> ModuleRegistry {
    let mut r = ModuleRegistry::new();
    r.register::<disco::Disco>()
        .register::<ping::Ping>()
        .register::<version::Version>()
        .register::<time::Time>()
        .register::<roster::Roster>()
        .register::<presence::Presence>()
        .register::<offline::Offline>();
    r
}

#[cfg(test)]
mod tests;
