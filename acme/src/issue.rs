//! An ACME account and one order: HTTP-01 answers published through a [`ChallengeStore`], or
//! DNS-01 TXT records through a [`DnsSolver`], before the CA is told to validate; an ECDSA
//! P-256 key generated here; the chain fetched. Challenge answers are removed after the
//! order, whether it succeeded or not.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use instant_acme::{
    AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey, Identifier,
    NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use tracing::info;

use crate::client::Acme;
use crate::renewal::Validity;

/// Where and as whom to order.
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    /// The CA's directory (Let's Encrypt production or staging, any RFC 8555 CA).
    pub url: String,
    /// `mailto:` contacts.
    pub contact: Vec<String>,
    /// A PEM root to trust for the CA's own HTTPS (test CAs such as pebble).
    pub root_pem: Option<PathBuf>,
    /// External Account Binding, for CAs that require one (ZeroSSL, Google, many private
    /// CAs): the key id and the raw HMAC key, used when the account is created.
    pub eab: Option<(String, Vec<u8>)>,
}

/// What to order.
#[derive(Debug, Clone, Default)]
pub struct OrderSpec {
    /// The names; the first is the subject.
    pub names: Vec<String>,
    /// Validate every name with DNS-01 (wildcard names always are).
    pub dns01: bool,
    /// The CA's certificate profile (Let's Encrypt: `classic`, `tlsserver`, `shortlived`).
    pub profile: Option<String>,
    /// The RFC 9773 identifier ([`crate::cert_id`]) of the certificate this one renews; sent
    /// only when the CA offers renewal information.
    pub replaces: Option<String>,
}

/// Publishes DNS-01 answers: TXT records at `_acme-challenge.<domain>`.
pub trait DnsSolver: Send + Sync {
    /// Adds `value` to the TXT record set `name` (fully qualified, no trailing dot), keeping
    /// the values already there (a wildcard and its base domain share one name), and returns
    /// once the authoritative servers answer with it.
    fn present(&self, name: &str, value: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// Removes `value` from `name` (the record set goes with its last value).
    fn cleanup(&self, name: &str, value: &str) -> impl Future<Output = ()> + Send;
}

/// The solver of a node with no DNS-01 configured: every DNS-01 order fails, naming why.
pub struct NoDns;

impl DnsSolver for NoDns {
    async fn present(&self, name: &str, _: &str) -> Result<(), String> {
        Err(format!(
            "{name}: DNS-01 is needed and no DNS solver is configured"
        ))
    }
    async fn cleanup(&self, _: &str, _: &str) {}
}

/// Publishes HTTP-01 answers where every node serves `/.well-known/acme-challenge/<token>`.
pub trait ChallengeStore: Send + Sync {
    /// Must be visible to the validator when it returns (the CA is told right after).
    fn put(
        &self,
        token: &str,
        key_authorization: &str,
    ) -> impl Future<Output = Result<(), String>> + Send;
    fn remove(&self, token: &str) -> impl Future<Output = ()> + Send;
    /// Called with the order's URL and the new key right before the CA is asked to issue: a
    /// store that records them lets another node [`resume`] the order if this one dies, so
    /// the certificate is issued once.
    fn before_finalize(
        &self,
        _order_url: &str,
        _key_pem: &str,
    ) -> impl Future<Output = Result<(), String>> + Send {
        async { Ok(()) }
    }
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
    pub validity: Validity,
}

/// Why an ACME step failed. `rate_limited` is the CA saying "not now" (Let's Encrypt: 5
/// duplicate certificates a week), which callers report as such and retry much later.
#[derive(Debug, thiserror::Error)]
#[error("ACME {step}: {message}")]
pub struct AcmeError {
    pub step: &'static str,
    pub message: String,
    pub rate_limited: bool,
    /// Worth retrying at once with a new order (a rejected nonce, a connection error).
    pub transient: bool,
    /// The CA's `Retry-After` on the failed request, as a wait from when it failed.
    pub retry_after: Option<Duration>,
}

pub(crate) fn err(step: &'static str) -> impl Fn(instant_acme::Error) -> AcmeError {
    move |e| {
        let problem = match &e {
            instant_acme::Error::Api(p) => p.r#type.as_deref(),
            _ => None,
        };
        let rate_limited = problem == Some("urn:ietf:params:acme:error:rateLimited");
        let transient = problem == Some("urn:ietf:params:acme:error:badNonce")
            || matches!(
                &e,
                instant_acme::Error::Hyper(_) | instant_acme::Error::Http(_)
            );
        AcmeError {
            step,
            message: e.to_string(),
            rate_limited,
            transient,
            retry_after: None,
        }
    }
}

pub(crate) fn other(step: &'static str, message: impl std::fmt::Display) -> AcmeError {
    AcmeError {
        step,
        message: message.to_string(),
        rate_limited: false,
        transient: false,
        retry_after: None,
    }
}

/// Opens the account from `stored` credentials (JSON), or creates one. Returns the account
/// and the credentials to persist (the same JSON when it was stored). Transient failures (a
/// rejected nonce, a connection error) are tried again, up to [`ATTEMPTS`] in all: a
/// rejected nonce means the CA did not act on the request (RFC 8555, section 6.5).
pub async fn open_account(
    cfg: &DirectoryConfig,
    stored: Option<&str>,
) -> Result<(Acme, String), AcmeError> {
    let mut attempt = 1;
    loop {
        match open_account_once(cfg, stored).await {
            Err(e) if again(&e, &mut attempt).await => {
                tracing::warn!(attempt, error = %e, "opening the ACME account failed; trying again");
            }
            done => return done,
        }
    }
}

async fn open_account_once(
    cfg: &DirectoryConfig,
    stored: Option<&str>,
) -> Result<(Acme, String), AcmeError> {
    let (builder, slot) = Acme::builder(cfg.root_pem.as_deref())?;
    if let Some(json) = stored {
        let creds: AccountCredentials =
            serde_json::from_str(json).map_err(|e| other("stored account", e))?;
        let account = builder
            .from_credentials(creds)
            .await
            .map_err(err("account"))?;
        return Ok((Acme::new(account, slot), json.to_string()));
    }
    let eab = cfg
        .eab
        .as_ref()
        .map(|(kid, key)| ExternalAccountKey::new(kid.clone(), key));
    let contact: Vec<&str> = cfg.contact.iter().map(String::as_str).collect();
    let (account, creds) = builder
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.url.clone(),
            eab.as_ref(),
        )
        .await
        .map_err(err("new account"))?;
    info!(id = account.id(), "ACME account created");
    let json = serde_json::to_string(&creds).map_err(|e| other("account credentials", e))?;
    Ok((Acme::new(account, slot), json))
}

/// How the order is polled while the CA validates and issues.
fn polling(patience: Duration) -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(patience)
}

/// A CSR for `names` signed with `key` (DER).
fn csr(names: &[String], key: &rcgen::KeyPair) -> Result<Vec<u8>, AcmeError> {
    rcgen::CertificateParams::new(names.to_vec())
        .and_then(|p| p.serialize_request(key))
        .map(|c| c.der().to_vec())
        .map_err(|e| other("CSR", e))
}

/// Attempts of one issuance when the CA answers with transient errors (instant-acme already
/// retries a rejected nonce a few times per request).
const ATTEMPTS: u32 = 5;

/// Orders a certificate for `spec`, publishing HTTP-01 answers in `store` and DNS-01 ones
/// through `dns`. Transient failures start a new order, up to [`ATTEMPTS`] in all.
pub async fn issue<S: ChallengeStore, D: DnsSolver>(
    acme: &Acme,
    spec: &OrderSpec,
    store: &S,
    dns: &D,
    patience: Duration,
) -> Result<Issued, AcmeError> {
    if let Some(p) = &spec.profile {
        let offered = acme.profiles();
        if !offered.contains(p) {
            return Err(other(
                "profile",
                format!(
                    "the CA offers no profile {p:?} (it offers: {})",
                    if offered.is_empty() {
                        "none".to_string()
                    } else {
                        offered.join(", ")
                    }
                ),
            ));
        }
    }
    let mut attempt = 1;
    loop {
        let result = issue_once(acme, spec, store, dns, patience).await;
        match result {
            Err(e) if e.transient && attempt < ATTEMPTS => {
                let wait = acme
                    .take_retry_after()
                    .unwrap_or(Duration::from_millis(200 * u64::from(attempt)));
                tracing::warn!(attempt, error = %e, wait_ms = wait.as_millis() as u64, "ACME order failed; retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(mut e) => {
                e.retry_after = acme.take_retry_after();
                return Err(e);
            }
            ok => return ok,
        }
    }
}

/// After a transient failure of attempt `attempt`, waits and says whether to try again
/// (up to [`ATTEMPTS`] in all).
async fn again(e: &AcmeError, attempt: &mut u32) -> bool {
    if !e.transient || *attempt >= ATTEMPTS {
        return false;
    }
    tokio::time::sleep(Duration::from_millis(200 * u64::from(*attempt))).await;
    *attempt += 1;
    true
}

/// A failed finalize request. Only a rejected nonce proves the CA did not act on it; after
/// any other failure it may have issued, so the caller must not place a new order (that
/// would issue twice) but resume the recorded one.
fn finalize_err(e: instant_acme::Error) -> AcmeError {
    let refused = matches!(&e, instant_acme::Error::Api(p)
        if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:badNonce"));
    let mut e = err("finalize")(e);
    e.transient = refused;
    e
}

/// The chain of a finalized order. Transient failures are retried on the same order, never
/// with a new one: the CA has been asked to issue, and a second order would issue again.
/// The error returned is never `transient` for that reason.
async fn certificate(
    order: &mut instant_acme::Order,
    retry: &RetryPolicy,
) -> Result<String, AcmeError> {
    let mut attempt = 1;
    loop {
        match order.poll_certificate(retry).await {
            Ok(chain) => return Ok(chain),
            Err(e) => {
                let mut e = err("certificate")(e);
                if again(&e, &mut attempt).await {
                    tracing::warn!(attempt, error = %e, "fetching the certificate failed; asking again");
                    continue;
                }
                e.transient = false;
                return Err(e);
            }
        }
    }
}

/// Places the order, naming the certificate it replaces when the CA takes that.
async fn new_order(acme: &Acme, spec: &OrderSpec) -> Result<instant_acme::Order, AcmeError> {
    let ids: Vec<Identifier> = spec.names.iter().cloned().map(Identifier::Dns).collect();
    let order = || {
        let o = NewOrder::new(&ids);
        match &spec.profile {
            Some(p) => o.profile(p),
            None => o,
        }
    };
    if let Some(r) = spec.replaces.as_deref().and_then(crate::client::identifier) {
        match acme.account.new_order(&order().replaces(r)).await {
            // The CA offers no renewal information, so it takes no `replaces` either.
            Err(instant_acme::Error::Unsupported(_)) => {}
            other => return other.map_err(err("new order")),
        }
    }
    acme.account
        .new_order(&order())
        .await
        .map_err(err("new order"))
}

/// A published challenge answer, removed after the order.
enum Published {
    Http(String),
    Dns(String, String),
}

async fn issue_once<S: ChallengeStore, D: DnsSolver>(
    acme: &Acme,
    spec: &OrderSpec,
    store: &S,
    dns: &D,
    patience: Duration,
) -> Result<Issued, AcmeError> {
    let names = &spec.names;
    let mut order = new_order(acme, spec).await?;
    let mut published = Vec::new();
    let result = async {
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz.map_err(err("authorization"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                s => return Err(other("authorization", format!("status {s:?}"))),
            }
            let domain = match authz.identifier().identifier {
                Identifier::Dns(d) => d.clone(),
                other_id => {
                    return Err(other(
                        "authorization",
                        format!("unexpected identifier {other_id:?}"),
                    ))
                }
            };
            let use_dns = spec.dns01 || authz.wildcard;
            let kind = if use_dns {
                ChallengeType::Dns01
            } else {
                ChallengeType::Http01
            };
            let mut ch = authz.challenge(kind.clone()).ok_or_else(|| {
                other(
                    "authorization",
                    format!("the CA offers no {kind:?} challenge for {domain}"),
                )
            })?;
            if use_dns {
                let name = format!("_acme-challenge.{domain}");
                let value = ch.key_authorization().dns_value();
                dns.present(&name, &value)
                    .await
                    .map_err(|e| other("publishing the DNS-01 record", e))?;
                published.push(Published::Dns(name, value));
            } else {
                let token = ch.token.clone();
                store
                    .put(&token, ch.key_authorization().as_str())
                    .await
                    .map_err(|e| other("publishing the challenge", e))?;
                published.push(Published::Http(token));
            }
            ch.set_ready().await.map_err(err("challenge ready"))?;
        }
        let retry = polling(patience);
        let status = order.poll_ready(&retry).await.map_err(err("validation"))?;
        if status != OrderStatus::Ready {
            let detail = order
                .state()
                .error
                .as_ref()
                .map_or(String::new(), |p| format!(": {p}"));
            return Err(other("validation", format!("order is {status:?}{detail}")));
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| other("key", e))?;
        let csr = csr(names, &key)?;
        store
            .before_finalize(order.url(), &key.serialize_pem())
            .await
            .map_err(|e| other("recording the order", e))?;
        order.finalize_csr(&csr).await.map_err(finalize_err)?;
        let chain_pem = certificate(&mut order, &retry).await?;
        let validity = Validity::of_pem(&chain_pem)
            .ok_or_else(|| other("certificate", "the CA's chain does not parse"))?;
        Ok(Issued {
            chain_pem,
            key_pem: key.serialize_pem(),
            validity,
        })
    }
    .await;
    for p in &published {
        match p {
            Published::Http(token) => store.remove(token).await,
            Published::Dns(name, value) => dns.cleanup(name, value).await,
        }
    }
    result
}

/// Picks up an order another node finalized (or was about to): the certificate when the CA
/// issued it, `None` when the order never got that far (a new order is then needed).
pub async fn resume(
    acme: &Acme,
    order_url: &str,
    key_pem: &str,
    names: &[String],
    patience: Duration,
) -> Result<Option<Issued>, AcmeError> {
    let mut attempt = 1;
    let mut order = loop {
        match acme.account.order(order_url.to_string()).await {
            Ok(o) => break o,
            Err(e) => {
                let e = err("resume order")(e);
                if !again(&e, &mut attempt).await {
                    return Err(e);
                }
            }
        }
    };
    let retry = polling(patience);
    let status = order.state().status;
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| other("stored key", e))?;
    match status {
        OrderStatus::Valid | OrderStatus::Processing => {}
        OrderStatus::Ready => {
            // Validated but never finalized: finish it with the recorded key. Only a rejected
            // nonce is transient here, and it proves the CA did not act: ask again.
            let csr = csr(names, &key)?;
            let mut attempt = 1;
            loop {
                match order.finalize_csr(&csr).await.map_err(finalize_err) {
                    Ok(()) => break,
                    Err(e) if again(&e, &mut attempt).await => {
                        tracing::warn!(attempt, error = %e, "finalizing the recorded order failed; asking again");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        _ => return Ok(None),
    }
    let chain_pem = certificate(&mut order, &retry).await?;
    let validity = Validity::of_pem(&chain_pem)
        .ok_or_else(|| other("certificate", "the CA's chain does not parse"))?;
    Ok(Some(Issued {
        chain_pem,
        key_pem: key_pem.to_string(),
        validity,
    }))
}
