//! The AWS side of the tests, shared by the node's end-to-end suite and the chaos lab:
//! the environment that points an SDK at the emulator, an ECS/EC2/Route53 fixture over the
//! real SDK, and a fault-injecting proxy in front of the emulator.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ecs::types::{
    AwsVpcConfiguration, ContainerDefinition, NetworkConfiguration, NetworkMode, PortMapping,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Tasks on their own ENIs in `subnet`, guarded by security group `sg`.
pub fn awsvpc(subnet: &str, sg: &str) -> NetworkConfiguration {
    NetworkConfiguration::builder()
        .awsvpc_configuration(
            AwsVpcConfiguration::builder()
                .subnets(subnet)
                .security_groups(sg)
                .build()
                .expect("subnets are set"),
        )
        .build()
}

/// Makes each hosted zone's caller reference unique within a run.
static CALLER: AtomicU64 = AtomicU64::new(0);

/// Environment for an edgemesh process (or the fixture's SDK) talking to `endpoint`.
pub fn aws_env(endpoint: SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", format!("http://{endpoint}")),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

/// A fault-injecting HTTP proxy in front of the emulator: passes requests through, or answers
/// ECS throttling errors or 500s.
pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    pub faults: Arc<AtomicUsize>,
}

pub const PASS: u8 = 0;
pub const THROTTLE: u8 = 1;
pub const FAIL_500: u8 = 2;
/// Holds every request for 3 s before passing it on.
pub const HANG: u8 = 3;

impl FaultProxy {
    /// On a free loopback port.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        FaultProxy::start_on("127.0.0.1:0".parse().unwrap(), upstream).await
    }

    pub async fn start_on(bind: SocketAddr, upstream: SocketAddr) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(PASS));
        let faults = Arc::new(AtomicUsize::new(0));
        let (m, f) = (mode.clone(), faults.clone());
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Full<Bytes>>();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (m, f, client) = (m.clone(), f.clone(), client.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (m, f, client) = (m.clone(), f.clone(), client.clone());
                        async move {
                            let reply = |status: u16, kind: &str| {
                                f.fetch_add(1, Ordering::Relaxed);
                                let body = format!(
                                    r#"{{"__type":"{kind}","message":"injected by the test"}}"#
                                );
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/x-amz-json-1.1")
                                    .header("x-amzn-errortype", kind)
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap()
                            };
                            match m.load(Ordering::Relaxed) {
                                THROTTLE => {
                                    return Ok::<_, hyper::Error>(reply(400, "ThrottlingException"))
                                }
                                FAIL_500 => return Ok(reply(500, "ServerException")),
                                HANG => {
                                    f.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_secs(3)).await;
                                }
                                _ => {}
                            }
                            let (mut parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let path = parts
                                .uri
                                .path_and_query()
                                .map_or("/", |p| p.as_str())
                                .to_string();
                            parts.uri = format!("http://{upstream}{path}").parse().unwrap();
                            let resp = client
                                .request(hyper::Request::from_parts(parts, Full::new(body)))
                                .await
                                .expect("emulator reachable");
                            let (parts, body) = resp.into_parts();
                            let body = body.collect().await?.to_bytes();
                            Ok(hyper::Response::from_parts(parts, Full::new(body)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FaultProxy { addr, mode, faults }
    }

    pub fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::Relaxed);
    }
}

pub struct Aws {
    pub ecs: aws_sdk_ecs::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub route53: aws_sdk_route53::Client,
    /// The container instance's address (each test its own, so tests run side by side).
    host: String,
}

/// The SDK configuration of a test's own clients of the emulator at `endpoint` (any
/// service's client takes it: `aws_sdk_s3::Client::new(&sdk_config(addr).await)`).
pub async fn sdk_config(endpoint: SocketAddr) -> aws_config::SdkConfig {
    let creds = aws_sdk_ecs::config::Credentials::new("testing", "testing", None, None, "test");
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(format!("http://{endpoint}"))
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .load()
        .await
}

/// A CreateService client token: the SDK sends the same one on each retry of a request, so
/// a retry of a create that succeeded starts no second set of tasks (ECS, and the emulator,
/// make CreateService idempotent by it); unique per call, at most 36 characters.
pub fn client_token(service: &str) -> String {
    let n = CALLER.fetch_add(1, Ordering::Relaxed);
    let mut token = format!("{n}-{service}");
    token.truncate(36);
    token
}

impl Aws {
    pub async fn new(endpoint: SocketAddr, host: &str) -> Aws {
        let conf = sdk_config(endpoint).await;
        Aws {
            ecs: aws_sdk_ecs::Client::new(&conf),
            ec2: aws_sdk_ec2::Client::new(&conf),
            route53: aws_sdk_route53::Client::new(&conf),
            host: host.to_string(),
        }
    }

    /// A Route53 hosted zone for `name`; its id without the `/hostedzone/` prefix.
    pub async fn hosted_zone(&self, name: &str) -> String {
        self.route53
            .create_hosted_zone()
            .name(name)
            .caller_reference(format!(
                "edgemesh-{name}-{}",
                CALLER.fetch_add(1, Ordering::Relaxed)
            ))
            .send()
            .await
            .unwrap()
            .hosted_zone()
            .unwrap()
            .id()
            .trim_start_matches("/hostedzone/")
            .to_string()
    }

    /// An EC2 instance at `ip`, registered as a container instance of `edge`.
    pub async fn instance(&self, subnet: &str, ip: &str) {
        let inst = self
            .ec2
            .run_instances()
            .image_id("ami-12c6146b")
            .min_count(1)
            .max_count(1)
            .subnet_id(subnet)
            .private_ip_address(ip)
            .send()
            .await
            .unwrap();
        let id = inst.instances()[0].instance_id().unwrap().to_string();
        self.ecs
            .register_container_instance()
            .cluster("edge")
            .instance_identity_document(format!(r#"{{"instanceId":"{id}"}}"#))
            .send()
            .await
            .unwrap();
    }

    /// A cluster `edge` with one EC2 container instance at `host` (bridge and host tasks)
    /// and a subnet 127.0.1.0/24 for awsvpc tasks. Returns (subnet, security group).
    pub async fn cluster(&self) -> (String, String) {
        let (subnets, sg) = self
            .network("127.0.0.0/16", &["127.0.0.0/24", "127.0.1.0/24"])
            .await;
        self.instance(&subnets[0], &self.host).await;
        (subnets[1].clone(), sg)
    }

    /// The cluster `edge`, a VPC with `subnets` and a security group: (subnet ids, group id).
    pub async fn network(&self, vpc_cidr: &str, subnets: &[&str]) -> (Vec<String>, String) {
        let vpc = self
            .ec2
            .create_vpc()
            .cidr_block(vpc_cidr)
            .send()
            .await
            .unwrap();
        let vpc = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
        let mut ids = Vec::new();
        for cidr in subnets {
            let s = self
                .ec2
                .create_subnet()
                .vpc_id(&vpc)
                .cidr_block(*cidr)
                .send()
                .await
                .unwrap();
            ids.push(s.subnet().unwrap().subnet_id().unwrap().to_string());
        }
        let sg = self
            .ec2
            .create_security_group()
            .group_name("edge")
            .description("edge tasks")
            .vpc_id(&vpc)
            .send()
            .await
            .unwrap();
        let sg = sg.group_id().unwrap().to_string();
        self.ecs
            .create_cluster()
            .cluster_name("edge")
            .send()
            .await
            .unwrap();
        (ids, sg)
    }

    pub async fn task_def(
        &self,
        family: &str,
        mode: NetworkMode,
        containers: &[(&str, u16)],
    ) -> String {
        self.task_def_ports(family, mode, containers, 0).await
    }

    /// `host_port` 0: dynamic (bridge); otherwise each container port maps to it.
    pub async fn task_def_ports(
        &self,
        family: &str,
        mode: NetworkMode,
        containers: &[(&str, u16)],
        host_port: u16,
    ) -> String {
        self.task_def_full(family, mode, containers, host_port, &[])
            .await
    }

    /// ... with docker labels on every container.
    pub async fn task_def_full(
        &self,
        family: &str,
        mode: NetworkMode,
        containers: &[(&str, u16)],
        host_port: u16,
        labels: &[(&str, &str)],
    ) -> String {
        let mut req = self
            .ecs
            .register_task_definition()
            .family(family)
            .network_mode(mode);
        for (name, port) in containers {
            req = req.container_definitions(
                ContainerDefinition::builder()
                    .name(*name)
                    .image("example/app")
                    .memory(64)
                    .port_mappings(
                        PortMapping::builder()
                            .container_port(i32::from(*port))
                            .host_port(i32::from(host_port))
                            .build(),
                    )
                    .set_docker_labels(Some(
                        labels
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    ))
                    .build(),
            );
        }
        let out = req.send().await.unwrap();
        out.task_definition()
            .unwrap()
            .task_definition_arn()
            .unwrap()
            .to_string()
    }

    pub async fn service(&self, name: &str, td: &str, count: i32, awsvpc: Option<(&str, &str)>) {
        let mut req = self
            .ecs
            .create_service()
            .cluster("edge")
            .service_name(name)
            .task_definition(td)
            .desired_count(count)
            .client_token(client_token(name));
        if let Some((subnet, sg)) = awsvpc {
            req = req.network_configuration(self::awsvpc(subnet, sg));
        }
        req.send().await.unwrap();
    }

    /// The service's running tasks: task id -> the address of `container`'s `port` (ENI address
    /// for awsvpc, instance address and bound host port for bridge).
    pub async fn endpoints(
        &self,
        service: &str,
        container: &str,
        port: u16,
    ) -> BTreeMap<String, SocketAddr> {
        let arns = self
            .ecs
            .list_tasks()
            .cluster("edge")
            .service_name(service)
            .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
            .send()
            .await
            .unwrap();
        let arns = arns.task_arns().to_vec();
        if arns.is_empty() {
            return BTreeMap::new();
        }
        let tasks = self
            .ecs
            .describe_tasks()
            .cluster("edge")
            .set_tasks(Some(arns))
            .send()
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for t in tasks.tasks() {
            let id = t
                .task_arn()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string();
            let eni = t
                .attachments()
                .iter()
                .flat_map(|a| a.details())
                .find(|d| d.name() == Some("privateIPv4Address"))
                .and_then(|d| d.value().map(str::to_string));
            let addr = match eni {
                Some(ip) => format!("{ip}:{port}"),
                None => {
                    let c = t
                        .containers()
                        .iter()
                        .find(|c| c.name() == Some(container))
                        .unwrap();
                    let b = c
                        .network_bindings()
                        .iter()
                        .find(|b| b.container_port() == Some(i32::from(port)))
                        .unwrap();
                    format!("{}:{}", self.host, b.host_port().unwrap())
                }
            };
            out.insert(id, addr.parse().unwrap());
        }
        out
    }

    pub async fn scale(&self, service: &str, count: i32) {
        self.ecs
            .update_service()
            .cluster("edge")
            .service(service)
            .desired_count(count)
            .send()
            .await
            .unwrap();
    }

    pub async fn deploy(&self, service: &str, td: &str) {
        self.ecs
            .update_service()
            .cluster("edge")
            .service(service)
            .task_definition(td)
            .send()
            .await
            .unwrap();
    }

    /// One more task of `service` started outside the scheduler (`RunTask` with the service's
    /// group, as a deployment would), in `subnet`: its id.
    pub async fn run_task(&self, service: &str, td: &str, subnet: &str, sg: &str) -> String {
        let out = self
            .ecs
            .run_task()
            .cluster("edge")
            .task_definition(td)
            .group(format!("service:{service}"))
            .network_configuration(awsvpc(subnet, sg))
            .send()
            .await
            .unwrap();
        let arn = out.tasks()[0].task_arn().unwrap();
        arn.rsplit('/').next().unwrap().to_string()
    }

    pub async fn stop_task(&self, id: &str) {
        self.ecs
            .stop_task()
            .cluster("edge")
            .task(id)
            .send()
            .await
            .unwrap();
    }

    /// The values of record `name` (with the final dot) of type `rtype` in `zone`; empty when
    /// the record is absent or Route53 does not answer.
    pub async fn record(
        &self,
        zone: &str,
        name: &str,
        rtype: aws_sdk_route53::types::RrType,
    ) -> BTreeSet<String> {
        let Ok(out) = self
            .route53
            .list_resource_record_sets()
            .hosted_zone_id(zone)
            .send()
            .await
        else {
            return BTreeSet::new();
        };
        out.resource_record_sets()
            .iter()
            .filter(|r| r.name() == name && *r.r#type() == rtype)
            .flat_map(|r| r.resource_records())
            .map(|v| v.value().to_string())
            .collect()
    }
}
