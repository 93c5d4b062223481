//! Requests a module answers on a stream that is not authenticated yet: IQs to the host
//! before anyone logged in, such as creating an account (XEP-0077 §3.1).
//!
//! A module registers a handler per payload namespace with
//! [`HostBuilder::pre_auth_handler`](crate::HostBuilder::pre_auth_handler) and the stream
//! features that announce it with
//! [`HostBuilder::add_pre_auth_feature`](crate::HostBuilder::add_pre_auth_feature). The
//! transport calls the handler and writes the answer; it offers both only on streams
//! protected by TLS, since these requests carry credentials before any authentication.

use crate::iq::IqResult;
use crate::server::Server;
use async_trait::async_trait;
use rookery_stanza::IqType;
use rookery_xml::Element;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// An IQ get or set received before authentication, as a handler sees it.
pub struct PreAuthRequest {
    pub server: Arc<Server>,
    /// The host the stream was opened to.
    pub domain: String,
    /// Where the connection comes from, for limits per address.
    pub peer: SocketAddr,
    pub iq_type: IqType,
    /// The one child element of the IQ.
    pub payload: Element,
}

#[async_trait]
pub trait PreAuthHandler: Send + Sync + 'static {
    async fn handle(&self, request: PreAuthRequest) -> IqResult;
}

/// Wraps an async closure as a [`PreAuthHandler`].
pub fn pre_auth_fn<F, Fut>(f: F) -> impl PreAuthHandler
where
    F: Fn(PreAuthRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = IqResult> + Send + 'static,
{
    struct FnHandler<F>(F);
    #[async_trait]
    impl<F, Fut> PreAuthHandler for FnHandler<F>
    where
        F: Fn(PreAuthRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = IqResult> + Send + 'static,
    {
        async fn handle(&self, request: PreAuthRequest) -> IqResult {
            (self.0)(request).await
        }
    }
    FnHandler(f)
}
