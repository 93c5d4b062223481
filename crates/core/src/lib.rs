//! The Rookery core: what every feature plugs into, and nothing feature-specific.
//!
//! * [`config`]: the TOML configuration and its validation.
//! * [`counters`]: process-wide counters of limits hit and session events.
//! * [`module`]: the [`Module`](module::Module) contract and the registry of compiled-in modules.
//! * [`hooks`] and [`events`]: typed events and filters modules subscribe to.
//! * [`host`]: a virtual host with the handlers its modules registered.
//! * [`http`]: HTTP handlers modules register, over the `http` crate's types with bodies as
//!   chunks (the HTTP library is the transport's).
//! * [`settings`]: configuration sections modules declare, read and validated at start.
//! * [`sessions`]: the registry of bound client sessions and their bounded send queues.
//! * [`requests`]: IQ requests the server sends itself and the answers they wait for.
//! * [`route`]: where a stanza goes: hosts, service domains of modules, external routes.
//! * [`server`]: the whole: hosts, sessions, storage, shutdown, and the routing rules.
//!
//! The core knows no transport (the `net` crate feeds it stanzas and HTTP requests) and no
//! feature module.

pub mod config;
pub mod counters;
pub mod events;
pub mod hooks;
pub mod host;
pub mod http;
pub mod iq;
pub mod module;
pub mod preauth;
pub mod requests;
pub mod route;
pub mod server;
pub mod session_queue;
pub mod sessions;
pub mod settings;

pub use config::Config;
pub use hooks::{Flow, Order, Phase};
pub use host::Host;
pub use iq::{iq_fn, IqHandler, IqRequest, IqResult, IqScope};
pub use module::{spawn_background, HostBuilder, Module, ModuleError, ModuleRegistry, Spec};
pub use preauth::{pre_auth_fn, PreAuthHandler, PreAuthRequest};
pub use requests::IqRequestError;
pub use route::{
    AttachError, Destination, ExternalRoute, RemoteRoutes, RouteError, Service, ServiceHandle,
    ServiceSendError,
};
pub use server::{AddHostError, Server};
pub use sessions::{
    ClientTransport, Outgoing, Resources, SessionHandle, SessionInbox, SessionRegistry,
};
pub use settings::{Place, Section, SectionDecl};
