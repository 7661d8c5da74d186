//! An ACME account with what instant-acme does not hand back: the `Retry-After` of the CA's
//! last error response (read by wrapping its HTTP client), the directory's profiles and its
//! renewal information (RFC 9773) for a certificate.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{Account, BodyWrapper, BytesResponse, CertificateIdentifier, HttpClient};

use crate::issue::{err, other, AcmeError};

type Inner = HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>;

/// The CA's `Retry-After` on its last error response, if it sent one.
type RetrySlot = Arc<Mutex<Option<SystemTime>>>;

struct Watched {
    inner: Inner,
    retry_after: RetrySlot,
}

impl HttpClient for Watched {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = HttpClient::request(&self.inner, req);
        let slot = self.retry_after.clone();
        Box::pin(async move {
            let rsp = fut.await?;
            let status = rsp.parts.status;
            if status.is_client_error() || status.is_server_error() {
                let at = rsp
                    .parts
                    .headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                if at.is_some() {
                    *slot.lock().expect("retry slot") = at;
                }
            }
            Ok(rsp)
        })
    }
}

/// RFC 9110 `Retry-After`: delay-seconds or an HTTP-date.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<SystemTime> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(now + Duration::from_secs(secs));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(value, format).ok()?;
    Some(SystemTime::from(at.assume_utc()))
}

/// The HTTPS client: the platform's roots, or only `root_pem` (test CAs such as pebble).
fn http_client(root_pem: Option<&Path>, retry_after: RetrySlot) -> Result<Watched, AcmeError> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match root_pem {
        None => builder
            .try_with_platform_verifier()
            .map_err(|e| other("HTTP client", e))?,
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| other("HTTP client", format!("{}: {e}", path.display())))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert =
                    cert.map_err(|e| other("HTTP client", format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| other("HTTP client", format!("{}: {e}", path.display())))?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| other("HTTP client", e))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(tls)
        }
    };
    let connector = builder.https_only().enable_http1().enable_http2().build();
    Ok(Watched {
        inner: HyperClient::builder(TokioExecutor::new()).build(connector),
        retry_after,
    })
}

/// An open ACME account.
pub struct Acme {
    pub(crate) account: Account,
    retry_after: RetrySlot,
}

/// A CA-suggested renewal window (RFC 9773), Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalWindow {
    pub start: i64,
    pub end: i64,
    /// When the CA asks to be asked again.
    pub check_after: Duration,
}

impl Acme {
    pub(crate) fn builder(
        root_pem: Option<&Path>,
    ) -> Result<(instant_acme::AccountBuilder, RetrySlot), AcmeError> {
        let slot = RetrySlot::default();
        let http = http_client(root_pem, slot.clone())?;
        Ok((Account::builder_with_http(Box::new(http)), slot))
    }

    pub(crate) fn new(account: Account, retry_after: RetrySlot) -> Acme {
        Acme {
            account,
            retry_after,
        }
    }

    pub fn id(&self) -> &str {
        self.account.id()
    }

    /// The profiles the CA's directory offers (Let's Encrypt: `classic`, `tlsserver`,
    /// `shortlived`); empty when it offers none.
    pub fn profiles(&self) -> Vec<String> {
        self.account
            .profiles()
            .map(|p| p.name.to_string())
            .collect()
    }

    /// Takes the `Retry-After` of the CA's last error response, as a wait from now.
    pub(crate) fn take_retry_after(&self) -> Option<Duration> {
        let at = self.retry_after.lock().expect("retry slot").take()?;
        Some(
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    }

    /// The CA's suggested renewal window for the certificate (first of `chain_pem`); `None`
    /// when the CA offers no renewal information (pebble 2.4, many private CAs).
    pub async fn renewal_window(
        &self,
        chain_pem: &str,
    ) -> Result<Option<RenewalWindow>, AcmeError> {
        let Some(id) = cert_id(chain_pem) else {
            return Ok(None);
        };
        let id = identifier(&id).expect("cert_id joins two parts");
        match self.account.renewal_info(&id).await {
            Ok((info, check_after)) => Ok(Some(RenewalWindow {
                start: info.suggested_window.start.unix_timestamp(),
                end: info.suggested_window.end.unix_timestamp(),
                check_after,
            })),
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(e) => Err(err("renewal information")(e)),
        }
    }
}

/// The ACME certificate identifier (RFC 9773 §4.1: base64url of the authority key
/// identifier, a dot, base64url of the DER serial) of the first certificate in `chain_pem`;
/// `None` when it does not parse or has no authority key identifier.
pub fn cert_id(chain_pem: &str) -> Option<String> {
    use base64::Engine;
    use x509_parser::extensions::ParsedExtension;
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let aki = cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0),
            _ => None,
        })?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    Some(format!(
        "{}.{}",
        b64.encode(aki),
        b64.encode(cert.tbs_certificate.raw_serial())
    ))
}

/// A [`cert_id`] as instant-acme takes it; `None` when it has no dot.
pub(crate) fn identifier(id: &str) -> Option<CertificateIdentifier<'_>> {
    let (aki, serial) = id.split_once('.')?;
    Some(CertificateIdentifier {
        authority_key_identifier: aki.into(),
        serial: serial.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(now + Duration::from_secs(120))
        );
        // 2023-11-14T22:13:20Z + 1 h.
        assert_eq!(
            parse_retry_after("Tue, 14 Nov 2023 23:13:20 GMT", now),
            Some(now + Duration::from_secs(3600))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }
}
