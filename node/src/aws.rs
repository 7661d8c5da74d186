//! The AWS SDK set-up every client of the node shares (ECS, EC2, Route53, S3): credentials from
//! the standard chain (`AWS_ENDPOINT_URL` honoured), TLS by rustls with ring, timeouts per
//! attempt and per operation, and one way to describe an SDK error.

use std::time::Duration;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_smithy_http_client::tls;

/// Every AWS API call the node makes, as IAM actions: the ECS poller and seed finder (ECS,
/// EC2), the Route53 DNS-01 solver and entrypoint records, and the cluster configuration
/// object (S3). The deployment's task role
/// grants exactly these: a test compares this list with `deploy/edgemesh.yaml` and with the
/// SDK operations the source calls, so none of the three can drift.
pub const CALLS: &[&str] = &[
    "ecs:ListTasks",
    "ecs:DescribeTasks",
    "ecs:DescribeTaskDefinition",
    "ecs:DescribeContainerInstances",
    "ec2:DescribeInstances",
    "route53:ChangeResourceRecordSets",
    "route53:GetChange",
    "route53:ListResourceRecordSets",
    "s3:GetObject",
];

pub type SdkError<E> = aws_smithy_runtime_api::client::result::SdkError<
    E,
    aws_smithy_runtime_api::client::orchestrator::HttpResponse,
>;

fn http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// The shared SDK configuration; `call_timeout` bounds one attempt.
pub async fn sdk_config(region: Option<&str>, call_timeout: Duration) -> aws_config::SdkConfig {
    let http = http_client();
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

/// This instance's public IPv4 address from the EC2 instance metadata service (IMDSv2,
/// aws-config's client: `AWS_EC2_METADATA_SERVICE_ENDPOINT` honoured), else its private one
/// (an instance without a public address is reached at its private one, as behind a VPN).
pub async fn imds_public_ip() -> Result<std::net::IpAddr, String> {
    imds_ip(&[
        "/latest/meta-data/public-ipv4",
        "/latest/meta-data/local-ipv4",
    ])
    .await
}

/// This instance's private IPv4 address, from the instance metadata service (IMDSv2).
pub async fn imds_private_ip() -> Result<std::net::IpAddr, String> {
    imds_ip(&["/latest/meta-data/local-ipv4"]).await
}

/// The first of `paths` the metadata service answers, as an address.
async fn imds_ip(paths: &[&str]) -> Result<std::net::IpAddr, String> {
    let client = aws_config::imds::Client::builder()
        .configure(
            &aws_config::provider_config::ProviderConfig::default().with_http_client(http_client()),
        )
        .connect_timeout(Duration::from_secs(2))
        .read_timeout(Duration::from_secs(2))
        .build();
    let mut errors = Vec::new();
    for &path in paths {
        match client.get(path).await {
            Ok(v) => {
                let v = v.as_ref().trim().to_string();
                return v
                    .parse()
                    .map_err(|_| format!("the metadata service answered {path} with {v:?}"));
            }
            Err(e) => errors.push(format!(
                "{path}: {}",
                aws_smithy_types::error::display::DisplayErrorContext(&e)
            )),
        }
    }
    Err(format!(
        "no address from the instance metadata service: {}",
        errors.join("; ")
    ))
}
