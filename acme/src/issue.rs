//! An ACME account and one order: HTTP-01 challenges published through a [`ChallengeStore`]
//! before the CA is told to validate, an ECDSA P-256 key generated here, the chain fetched.
//! Challenge tokens are removed after the order, whether it succeeded or not.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use tracing::info;

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
}

fn err(step: &'static str) -> impl Fn(instant_acme::Error) -> AcmeError {
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
        }
    }
}

fn other(step: &'static str, message: impl std::fmt::Display) -> AcmeError {
    AcmeError {
        step,
        message: message.to_string(),
        rate_limited: false,
        transient: false,
    }
}

/// Opens the account from `stored` credentials (JSON), or creates one. Returns the account
/// and the credentials to persist (the same JSON when it was stored).
pub async fn open_account(
    cfg: &DirectoryConfig,
    stored: Option<&str>,
) -> Result<(Account, String), AcmeError> {
    let builder = match &cfg.root_pem {
        Some(root) => Account::builder_with_root(root),
        None => Account::builder(),
    }
    .map_err(err("HTTP client"))?;
    if let Some(json) = stored {
        let creds: AccountCredentials =
            serde_json::from_str(json).map_err(|e| other("stored account", e))?;
        let account = builder
            .from_credentials(creds)
            .await
            .map_err(err("account"))?;
        return Ok((account, json.to_string()));
    }
    let contact: Vec<&str> = cfg.contact.iter().map(String::as_str).collect();
    let (account, creds) = builder
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.url.clone(),
            None,
        )
        .await
        .map_err(err("new account"))?;
    info!(id = account.id(), "ACME account created");
    let json = serde_json::to_string(&creds).map_err(|e| other("account credentials", e))?;
    Ok((account, json))
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

/// Orders a certificate for `names` (the first is the subject) with HTTP-01 challenges.
/// Transient failures start a new order, up to [`ATTEMPTS`] in all.
pub async fn issue<S: ChallengeStore>(
    account: &Account,
    names: &[String],
    store: &S,
    patience: Duration,
) -> Result<Issued, AcmeError> {
    let mut attempt = 1;
    loop {
        match issue_once(account, names, store, patience).await {
            Err(e) if e.transient && attempt < ATTEMPTS => {
                tracing::warn!(attempt, error = %e, "ACME order failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn issue_once<S: ChallengeStore>(
    account: &Account,
    names: &[String],
    store: &S,
    patience: Duration,
) -> Result<Issued, AcmeError> {
    let ids: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(err("new order"))?;
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
            let mut ch = authz
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| other("authorization", "the CA offers no http-01 challenge"))?;
            let token = ch.token.clone();
            store
                .put(&token, ch.key_authorization().as_str())
                .await
                .map_err(|e| other("publishing the challenge", e))?;
            published.push(token);
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
        order.finalize_csr(&csr).await.map_err(err("finalize"))?;
        let chain_pem = order
            .poll_certificate(&retry)
            .await
            .map_err(err("certificate"))?;
        let validity = Validity::of_pem(&chain_pem)
            .ok_or_else(|| other("certificate", "the CA's chain does not parse"))?;
        Ok(Issued {
            chain_pem,
            key_pem: key.serialize_pem(),
            validity,
        })
    }
    .await;
    for token in &published {
        store.remove(token).await;
    }
    result
}

/// Picks up an order another node finalized (or was about to): the certificate when the CA
/// issued it, `None` when the order never got that far (a new order is then needed).
pub async fn resume(
    account: &Account,
    order_url: &str,
    key_pem: &str,
    names: &[String],
    patience: Duration,
) -> Result<Option<Issued>, AcmeError> {
    let mut order = account
        .order(order_url.to_string())
        .await
        .map_err(err("resume order"))?;
    let retry = polling(patience);
    let status = order.state().status;
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| other("stored key", e))?;
    match status {
        OrderStatus::Valid | OrderStatus::Processing => {}
        OrderStatus::Ready => {
            // Validated but never finalized: finish it with the recorded key.
            order
                .finalize_csr(&csr(names, &key)?)
                .await
                .map_err(err("finalize"))?;
        }
        _ => return Ok(None),
    }
    let chain_pem = order
        .poll_certificate(&retry)
        .await
        .map_err(err("certificate"))?;
    let validity = Validity::of_pem(&chain_pem)
        .ok_or_else(|| other("certificate", "the CA's chain does not parse"))?;
    Ok(Some(Issued {
        chain_pem,
        key_pem: key_pem.to_string(),
        validity,
    }))
}
