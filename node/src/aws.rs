//! The AWS SDK set-up every client of the node shares (ECS, EC2, Route53): credentials from
//! the standard chain (`AWS_ENDPOINT_URL` honoured), TLS by rustls with ring, timeouts per
//! attempt and per operation, and one way to describe an SDK error.

use std::time::Duration;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_smithy_http_client::tls;

pub type SdkError<E> = aws_smithy_runtime_api::client::result::SdkError<
    E,
    aws_smithy_runtime_api::client::orchestrator::HttpResponse,
>;

/// The shared SDK configuration; `call_timeout` bounds one attempt.
pub async fn sdk_config(region: Option<&str>, call_timeout: Duration) -> aws_config::SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(call_timeout)
        // Room for three attempts and the SDK's back-off between them.
        .operation_timeout(call_timeout * 3 + Duration::from_secs(5))
        .build();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(timeouts);
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    loader.load().await
}

/// An SDK error's code, HTTP status and a one-line message naming both.
pub fn describe<E>(e: &SdkError<E>) -> (String, Option<u16>, String)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let code = e.code().unwrap_or_default().to_string();
    let status = e.raw_response().map(|r| r.status().as_u16());
    let message = match (code.as_str(), e.message()) {
        // An answer whose error body does not parse (a proxy's, a load balancer's).
        ("", _) if status.is_some() => format!(
            "HTTP {} with an error body that does not parse",
            status.unwrap_or_default()
        ),
        ("", _) => format!(
            "{}",
            aws_smithy_types::error::display::DisplayErrorContext(e)
        ),
        (c, Some(m)) => format!("{c}: {m}"),
        (c, None) => match status {
            Some(s) => format!("{c} (HTTP {s})"),
            None => c.to_string(),
        },
    };
    (code, status, message)
}
