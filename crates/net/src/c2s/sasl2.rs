//! SASL2 (XEP-0388) with Bind 2 (XEP-0386), inline stream-management resumption and FAST
//! tokens (XEP-0484): a client logs in, binds, enables SM, carbons and CSI, or resumes, in
//! one round trip. Legacy SASL and RFC 6120 binding keep working beside it; the SASL
//! exchange itself is the same `rookery_sasl::ServerSession` driven by `sasl_step`.

use super::*;
use crate::fast::{self, FastTokens, Verified};
use rookery_core::events::{Bind2Bound, BindInline};
use rookery_sasl::ht::{self, HtMechanism};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

pub(super) const NS_SASL2: &str = "urn:xmpp:sasl:2";
pub(super) const NS_BIND2: &str = "urn:xmpp:bind:0";
/// Longest Bind 2 `<tag/>` kept in a resource.
const MAX_TAG: usize = 32;

impl ClientStream {
    /// The `<authentication/>` stream feature with what can be negotiated inline.
    pub(super) fn sasl2_feature(&self) -> Element {
        let sm_enabled = self.sm_config().enabled;
        let fast_enabled = self.fast_config().enabled;
        let mut auth = Element::new("authentication", NS_SASL2);
        for m in self.offered_mechanisms() {
            auth.push_child(Element::new("mechanism", NS_SASL2).with_text(m.name()));
        }
        let mut bind_inline = Element::new("inline", NS_BIND2);
        let mut vars: Vec<&str> = Vec::new();
        if sm_enabled {
            vars.push(sm::NS);
        }
        vars.push(crate::csi::NS);
        if let Some(host) = &self.host {
            vars.extend(host.bind_inline_features().iter().map(String::as_str));
        }
        for var in vars {
            bind_inline.push_child(Element::new("feature", NS_BIND2).with_attr("var", var));
        }
        let mut inline = Element::new("inline", NS_SASL2)
            .with_child(Element::new("bind", NS_BIND2).with_child(bind_inline));
        if sm_enabled {
            inline.push_child(Element::new("sm", sm::NS));
        }
        if fast_enabled && self.confidential {
            let mut f = Element::new("fast", fast::NS);
            for m in HtMechanism::available(&self.channel_bindings) {
                f.push_child(Element::new("mechanism", fast::NS).with_text(m.name()));
            }
            inline.push_child(f);
        }
        auth.push_child(inline);
        auth
    }

    /// `<authenticate/>` (XEP-0388 §2.3): a password mechanism through the SASL session,
    /// or a FAST token mechanism checked here.
    pub(super) async fn sasl2_authenticate(&mut self, el: Element) -> Result<Next, Close> {
        let initial = match el.get_child("initial-response", NS_SASL2) {
            Some(r) => decode_sasl(r),
            None => Ok(Vec::new()),
        };
        let mechanism = el.attr("mechanism").unwrap_or_default().to_owned();
        if let Some(auth) = self.auth_mut() {
            auth.sasl2 = Some(el.clone());
        }
        if let Some(ht) = HtMechanism::from_name(&mechanism) {
            return self.fast_authenticate(ht, initial).await;
        }
        self.sasl_auth(&el, initial).await
    }

    /// FAST: one message, checked against the client's stored tokens (XEP-0484 §3.4).
    async fn fast_authenticate(
        &mut self,
        mechanism: HtMechanism,
        initial: Result<Vec<u8>, SaslError>,
    ) -> Result<Next, Close> {
        let config = self.fast_config();
        let usable = config.enabled
            && self.confidential
            && HtMechanism::available(&self.channel_bindings).contains(&mechanism);
        if !usable {
            let fail = self.sasl_failure_element("invalid-mechanism");
            if let Some(auth) = self.auth_mut() {
                auth.sasl2 = None;
            }
            self.write(&fail);
            return Ok(Next::Continue);
        }
        if let Some(auth) = self.auth_mut() {
            auth.attempt = Some(AuthAttempt {
                mechanism: mechanism.name(),
                user: None,
                account: None,
            });
        }
        let parsed = match initial.and_then(|d| ht::parse_initial(&d)) {
            Ok(p) => p,
            Err(e) => return self.sasl_failure(e),
        };
        let domain = self
            .host
            .as_ref()
            .map(|h| h.domain().to_owned())
            .unwrap_or_default();
        let jid = BareJid::new(&format!("{}@{domain}", parsed.username))
            .ok()
            .filter(|j| j.node().is_some());
        self.note_auth_user(&parsed.username, jid.clone());
        let Some(jid) = jid else {
            return self.sasl_failure(SaslError::NotAuthorized);
        };
        let Some(client) = self.sasl2_client_id() else {
            // Tokens are per client installation: without its id there is nothing to check.
            return self.sasl_failure(SaslError::NotAuthorized);
        };
        let node = jid.node().map(|n| n.to_string()).unwrap_or_default();
        let tokens = FastTokens {
            storage: self.server().storage(),
            domain: &domain,
            lifetime: Duration::from_secs(config.token_lifetime_secs),
        };
        let verified = tokens
            .verify(
                &node,
                &client,
                mechanism,
                &self.channel_bindings,
                &parsed.proof,
            )
            .await;
        match verified {
            Ok(Verified::Valid { token, expiry }) => {
                if let Err(e) = self.refuse_disabled(&jid).await {
                    return self.sasl_failure(e);
                }
                if let Some(auth) = self.auth_mut() {
                    auth.attempt = None;
                }
                let additional = mechanism
                    .responder_proof(token.as_bytes(), &self.channel_bindings)
                    .ok();
                if let Some(auth) = self.auth_mut() {
                    auth.fast_used = Some((mechanism, token, expiry));
                }
                tracing::info!(peer = %self.peer, jid = %jid, mechanism = mechanism.name(), "authenticated (SASL2, FAST token)");
                crate::metrics::login(mechanism.name(), true);
                self.sasl2_success(jid, additional).await
            }
            Ok(Verified::Expired) => self.sasl_failure(SaslError::CredentialsExpired),
            Ok(Verified::Invalid) => self.sasl_failure(SaslError::NotAuthorized),
            Err(e) => {
                tracing::error!(error = %e, "FAST token look-up failed");
                self.sasl_failure(SaslError::Internal("storage".into()))
            }
        }
    }

    /// The SASL2 `<user-agent id/>`, if it is usable as a client id.
    fn sasl2_client_id(&self) -> Option<String> {
        let Stage::Unauthenticated(auth) = &self.stage else {
            return None;
        };
        auth.sasl2
            .as_ref()?
            .get_child("user-agent", NS_SASL2)?
            .attr("id")
            .filter(|id| fast::valid_client_id(id))
            .map(str::to_owned)
    }

    /// XEP-0388 §2.6.1: authenticated. Processes the inline requests (FAST tokens,
    /// resumption, Bind 2) and answers `<success/>` followed by the new stream features,
    /// without a stream restart; after a resumption the stream goes on as the resumed
    /// session, with no features (XEP-0198 §9.2).
    pub(super) async fn sasl2_success(
        &mut self,
        jid: BareJid,
        additional_data: Option<Vec<u8>>,
    ) -> Result<Next, Close> {
        let client = self.sasl2_client_id();
        let (request, used) = match self.auth_mut() {
            Some(auth) => (auth.sasl2.take(), auth.fast_used.take()),
            None => (None, None),
        };
        let request = request.unwrap_or_else(|| Element::new("authenticate", NS_SASL2));
        self.ctx.throttle.success(self.peer.ip());
        self.stage = Stage::Authenticated { user: jid.clone() };
        let mut success = Element::new("success", NS_SASL2);
        if let Some(d) = additional_data {
            success.push_child(Element::new("additional-data", NS_SASL2).with_text(B64.encode(d)));
        }
        let mut extras = Vec::new();
        if let Some(token) = self
            .fast_tokens(&request, &jid, client.as_deref(), used)
            .await
        {
            extras.push(token);
        }
        let mut resumed = None;
        if let Some(resume) = request.get_child("resume", sm::NS) {
            match self.take_for_resume(resume).await? {
                Ok(d) => {
                    extras.push(resumed_element(&d, resume));
                    resumed = Some(d);
                }
                // XEP-0386 §2.2: a failed resumption is reported, then binding proceeds.
                Err(failed) => extras.push(failed),
            }
        }
        // §2.6.1: the bare JID, or the full JID once a resource is bound, by Bind 2 or by
        // the resumption (whose example shows a bare JID, but the session it resumed has its
        // resource: clients learn the bound JID from this element).
        let mut identity = jid.to_string();
        match &resumed {
            Some(d) => identity = d.handle.jid().to_string(),
            None => {
                if let Some(bind) = request.get_child("bind", NS_BIND2) {
                    let (full, bound) = self.bind2(bind, client.as_deref()).await?;
                    identity = full.to_string();
                    extras.push(bound);
                }
            }
        }
        success.push_child(Element::new("authorization-identifier", NS_SASL2).with_text(identity));
        for e in extras {
            success.push_child(e);
        }
        self.write(&success);
        match resumed {
            // XEP-0198 §9.2 (Inline Stream Resumption): the resumed stream is re-established
            // right after `<success/>` and stream features MUST NOT be sent; what the client
            // never confirmed and what arrived meanwhile come next.
            Some(d) => self.install_resumed(d),
            None => {
                let features = self.features();
                self.write_features(&features);
            }
        }
        Ok(Next::Continue)
    }

    /// FAST token requests, rotation and invalidation after a successful authentication;
    /// the `<token/>` to include in `<success/>`, if one was issued.
    async fn fast_tokens(
        &mut self,
        request: &Element,
        jid: &BareJid,
        client: Option<&str>,
        used: Option<(HtMechanism, String, u64)>,
    ) -> Option<Element> {
        let config = self.fast_config();
        let (Some(client), true) = (client, config.enabled) else {
            return None;
        };
        let domain = jid.domain().to_string();
        let node = jid.node().map(|n| n.to_string()).unwrap_or_default();
        let tokens = FastTokens {
            storage: self.server().storage(),
            domain: &domain,
            lifetime: Duration::from_secs(config.token_lifetime_secs),
        };
        let requested = request
            .get_child("request-token", fast::NS)
            .and_then(|r| r.attr("mechanism"))
            .and_then(HtMechanism::from_name)
            .filter(|m| HtMechanism::available(&self.channel_bindings).contains(m));
        let fast_el = request.get_child("fast", fast::NS);
        let invalidate =
            fast_el.is_some_and(|f| matches!(f.attr("invalidate"), Some("true" | "1")));
        let mut issue = requested;
        if let Some((mechanism, token, expiry)) = used {
            if invalidate {
                if let Err(e) = tokens.invalidate(&node, client, &token).await {
                    tracing::error!(error = %e, "FAST token invalidation failed");
                }
            } else if issue.is_none() && tokens.due_for_rotation(expiry) {
                // §3.4: rotated before it expires, without being asked.
                issue = Some(mechanism);
            }
        }
        let mechanism = issue?;
        match tokens.issue(&node, client, mechanism).await {
            Ok(t) => Some(
                Element::new("token", fast::NS)
                    .with_attr("expiry", t.expiry_string())
                    .with_attr("token", t.token),
            ),
            Err(e) => {
                tracing::error!(error = %e, "FAST token could not be stored");
                None
            }
        }
    }

    /// Bind 2 (XEP-0386 §2.2): binds a resource derived from the client's tag and id, then
    /// enables the inline features it asked for. Returns the full JID and `<bound/>`.
    async fn bind2(
        &mut self,
        request: &Element,
        client: Option<&str>,
    ) -> Result<(FullJid, Element), Close> {
        let Some(user) = self.user().cloned() else {
            return Err(Close::err(StreamErrorCondition::NotAuthorized));
        };
        let tag: Option<String> = request
            .get_child("tag", NS_BIND2)
            .map(|t| t.text().trim().chars().take(MAX_TAG).collect::<String>())
            .filter(|t| !t.is_empty());
        // §2.2.1: the same client installation gets the same resource, so its new session
        // replaces the old one; the id itself is not revealed.
        let generated = match client {
            Some(id) => stable_resource_id(&user, id),
            None => random_id(12),
        };
        let resource = match &tag {
            Some(t) => format!("{t}/{generated}"),
            None => generated.clone(),
        };
        let full = match user.with_resource_str(&resource) {
            Ok(j) => j,
            Err(_) => user
                .with_resource_str(&generated)
                .map_err(|_| Close::err(StreamErrorCondition::InternalServerError))?,
        };
        let session = self.bind(full.clone()).await?;
        let mut bound = Element::new("bound", NS_BIND2);
        let host = self.host.clone();
        for child in request.children().filter(|c| c.ns() != NS_BIND2) {
            match (child.ns(), child.name()) {
                (sm::NS, "enable") => {
                    let reply = self.sm_enable(child);
                    bound.push_child(reply);
                }
                (crate::csi::NS, "inactive") => {
                    if let Some(b) = self.bound_mut() {
                        b.csi.set_inactive();
                    }
                }
                (crate::csi::NS, "active") => {}
                (ns, _) => {
                    let Some(host) = &host else { continue };
                    if host.bind_inline_features().iter().any(|f| f == ns) {
                        let event = BindInline {
                            session: session.clone(),
                            request: child.clone(),
                        };
                        host.hooks().run(self.server(), event).await;
                    }
                }
            }
        }
        if let Some(host) = &host {
            let answer = Bind2Bound {
                session: session.clone(),
                bound,
            };
            bound = match host.hooks().fold(self.server(), answer).await {
                Some(a) => a.bound,
                None => Element::new("bound", NS_BIND2),
            };
        }
        Ok((full, bound))
    }
}

/// A resource part derived from the account and the client id, stable for this server
/// process: `base64url(SHA-256(secret | account | id))`, truncated.
fn stable_resource_id(user: &BareJid, client: &str) -> String {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    let secret = SECRET.get_or_init(|| {
        use rand::RngCore;
        let mut s = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut s);
        s
    });
    let mut h = Sha256::new();
    h.update(secret);
    h.update(user.as_str().as_bytes());
    h.update([0]);
    h.update(client.as_bytes());
    let digest = h.finalize();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..9])
}
