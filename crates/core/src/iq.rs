//! IQ handlers (RFC 6120 §8.2.3): every request gets exactly one result or error.

use crate::server::Server;
use crate::sessions::SessionHandle;
use async_trait::async_trait;
use rookery_stanza::{IqType, Jid, StanzaError, StanzaErrorCondition};
use rookery_xml::Element;
use std::future::Future;
use std::sync::Arc;

/// Whom an IQ is addressed to, which decides which handlers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IqScope {
    /// The server itself: `to` is the domain (or absent on a stream that isn't bound to an account).
    Host,
    /// A local account, answered by the server on its behalf: `to` is the account's bare JID,
    /// or absent (the sender's own account, RFC 6120 §10.3.3).
    Account,
}

/// An IQ request as a handler sees it.
pub struct IqRequest {
    pub server: Arc<Server>,
    /// The requester: a local client's full JID, or an entity of a service domain (and
    /// later of a remote domain), which may be a bare or domain JID.
    pub from: Jid,
    /// The addressee: the domain, or an account's bare JID.
    pub to: Jid,
    pub iq_type: IqType,
    /// The one child element of the IQ.
    pub payload: Element,
}

impl IqRequest {
    /// The requester's session, when the request comes from a local client that is still
    /// connected.
    pub fn session(&self) -> Option<Arc<SessionHandle>> {
        let full = self.from.try_as_full().ok()?;
        self.server.sessions().get(full)
    }
    /// Answers `bad-request` to anything that isn't a `get`.
    pub fn require_get(&self) -> Result<(), StanzaError> {
        if self.iq_type == IqType::Get {
            Ok(())
        } else {
            Err(StanzaError::new(StanzaErrorCondition::BadRequest)
                .with_text("this request is only defined for type 'get'"))
        }
    }
    /// Answers `bad-request` to anything that isn't a `set`.
    pub fn require_set(&self) -> Result<(), StanzaError> {
        if self.iq_type == IqType::Set {
            Ok(())
        } else {
            Err(StanzaError::new(StanzaErrorCondition::BadRequest)
                .with_text("this request is only defined for type 'set'"))
        }
    }
}

/// `Ok(Some(payload))` or `Ok(None)` for an empty result; `Err` becomes an error reply.
pub type IqResult = Result<Option<Element>, StanzaError>;

#[async_trait]
pub trait IqHandler: Send + Sync + 'static {
    async fn handle(&self, request: IqRequest) -> IqResult;
}

/// Wraps an async closure as an [`IqHandler`].
pub fn iq_fn<F, Fut>(f: F) -> impl IqHandler
where
    F: Fn(IqRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = IqResult> + Send + 'static,
{
    struct FnHandler<F>(F);
    #[async_trait]
    impl<F, Fut> IqHandler for FnHandler<F>
    where
        F: Fn(IqRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = IqResult> + Send + 'static,
    {
        async fn handle(&self, request: IqRequest) -> IqResult {
            (self.0)(request).await
        }
    }
    FnHandler(f)
}
