//! The ECS and EC2 calls the poller makes, behind a trait, and their AWS SDK implementation.
//! Every call the code makes is in [`crate::aws::CALLS`], for the IAM policy the deployment
//! grants.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use aws_sdk_ec2::error::ProvideErrorMetadata;

use super::model::{ContainerInfo, NetworkMode, TaskDefInfo, TaskInfo};

/// DescribeTasks and DescribeContainerInstances take at most 100 ARNs.
pub const DESCRIBE_BATCH: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Rate limited: back off.
    Throttled,
    /// 5xx, timeouts, connection failures: transient.
    Unavailable,
    /// Missing IAM permission: an operator must act.
    Denied,
    Other,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{call}: {message}")]
pub struct ApiError {
    /// The failing call, as an IAM action (`ecs:DescribeTasks`).
    pub call: &'static str,
    pub kind: ErrorKind,
    pub message: String,
}

/// The calls the poller needs. Implemented over the AWS SDK; tests run it against an
/// emulator speaking the real wire protocol.
#[allow(async_fn_in_trait)]
pub trait EcsApi {
    /// Every task of the cluster whose desired status is RUNNING (all pages); only `service`'s
    /// when given.
    async fn list_tasks(&self, service: Option<&str>) -> Result<Vec<String>, ApiError>;
    /// At most [`DESCRIBE_BATCH`] tasks.
    async fn describe_tasks(&self, arns: &[String]) -> Result<Vec<TaskInfo>, ApiError>;
    async fn describe_task_definition(&self, arn: &str) -> Result<TaskDefInfo, ApiError>;
    /// At most [`DESCRIBE_BATCH`] container instances -> their EC2 instance ids.
    async fn describe_container_instances(
        &self,
        arns: &[String],
    ) -> Result<BTreeMap<String, String>, ApiError>;
    /// EC2 instance id -> private address.
    async fn instance_addresses(
        &self,
        ids: &[String],
    ) -> Result<BTreeMap<String, IpAddr>, ApiError>;
}

pub struct SdkApi {
    ecs: aws_sdk_ecs::Client,
    ec2: aws_sdk_ec2::Client,
    cluster: String,
}

impl SdkApi {
    /// Clients from the standard chain (environment, profile, container and instance
    /// credentials; `AWS_ENDPOINT_URL` honoured), TLS by rustls with ring.
    pub async fn new(cluster: &str, region: Option<&str>, call_timeout: Duration) -> SdkApi {
        let conf = crate::aws::sdk_config(region, call_timeout).await;
        SdkApi {
            ecs: aws_sdk_ecs::Client::new(&conf),
            ec2: aws_sdk_ec2::Client::new(&conf),
            cluster: cluster.to_string(),
        }
    }
}

use crate::aws::SdkError;

fn classify<E>(call: &'static str, e: SdkError<E>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let (code, status, message) = crate::aws::describe(&e);
    let kind = match &e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => ErrorKind::Unavailable,
        _ if code.contains("Throttl") || code == "RequestLimitExceeded" || status == Some(429) => {
            ErrorKind::Throttled
        }
        _ if code.contains("AccessDenied")
            || code == "UnauthorizedOperation"
            || status == Some(403) =>
        {
            ErrorKind::Denied
        }
        _ if status.is_some_and(|s| s >= 500) => ErrorKind::Unavailable,
        _ => ErrorKind::Other,
    };
    ApiError {
        call,
        kind,
        message,
    }
}

fn port(v: Option<i32>) -> Option<u16> {
    v.and_then(|p| u16::try_from(p).ok())
}

fn task_info(t: &aws_sdk_ecs::types::Task) -> TaskInfo {
    let eni_ip = t
        .attachments()
        .iter()
        .filter(|a| a.r#type() == Some("ElasticNetworkInterface"))
        .flat_map(|a| a.details())
        .find(|d| d.name() == Some("privateIPv4Address"))
        .and_then(|d| d.value()?.parse().ok())
        .or_else(|| {
            t.containers()
                .iter()
                .flat_map(|c| c.network_interfaces())
                .find_map(|n| n.private_ipv4_address()?.parse().ok())
        });
    TaskInfo {
        arn: t.task_arn().unwrap_or_default().to_string(),
        group: t.group().unwrap_or_default().to_string(),
        task_definition: t.task_definition_arn().unwrap_or_default().to_string(),
        container_instance: t.container_instance_arn().map(str::to_string),
        last_status: t.last_status().unwrap_or_default().to_string(),
        desired_status: t.desired_status().unwrap_or_default().to_string(),
        health: t
            .health_status()
            .map_or("UNKNOWN", |h| h.as_str())
            .to_string(),
        eni_ip,
        containers: t
            .containers()
            .iter()
            .map(|c| ContainerInfo {
                name: c.name().unwrap_or_default().to_string(),
                bindings: c
                    .network_bindings()
                    .iter()
                    .filter_map(|b| Some((port(b.container_port())?, port(b.host_port())?)))
                    .collect(),
            })
            .collect(),
    }
}

impl EcsApi for SdkApi {
    async fn list_tasks(&self, service: Option<&str>) -> Result<Vec<String>, ApiError> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .ecs
                .list_tasks()
                .cluster(&self.cluster)
                .set_service_name(service.map(str::to_string))
                .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
                .max_results(100)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| classify("ecs:ListTasks", e))?;
            out.extend(page.task_arns().iter().cloned());
            token = page.next_token().map(str::to_string);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    async fn describe_tasks(&self, arns: &[String]) -> Result<Vec<TaskInfo>, ApiError> {
        let out = self
            .ecs
            .describe_tasks()
            .cluster(&self.cluster)
            .set_tasks(Some(arns.to_vec()))
            .send()
            .await
            .map_err(|e| classify("ecs:DescribeTasks", e))?;
        Ok(out.tasks().iter().map(task_info).collect())
    }

    async fn describe_task_definition(&self, arn: &str) -> Result<TaskDefInfo, ApiError> {
        let call = "ecs:DescribeTaskDefinition";
        let out = self
            .ecs
            .describe_task_definition()
            .task_definition(arn)
            .send()
            .await
            .map_err(|e| classify(call, e))?;
        let def = out.task_definition().ok_or_else(|| ApiError {
            call,
            kind: ErrorKind::Other,
            message: format!("no task definition in the answer for {arn}"),
        })?;
        use aws_sdk_ecs::types::NetworkMode as M;
        let network_mode = match def.network_mode() {
            Some(M::Awsvpc) => NetworkMode::Awsvpc,
            Some(M::Host) => NetworkMode::Host,
            // ECS's default on EC2 (and "none", which has no ports to route).
            _ => NetworkMode::Bridge,
        };
        let ports = def
            .container_definitions()
            .iter()
            .map(|c| {
                let ports = c
                    .port_mappings()
                    .iter()
                    .filter_map(|p| port(p.container_port()))
                    .collect();
                (c.name().unwrap_or_default().to_string(), ports)
            })
            .collect();
        let mut labels = std::collections::BTreeMap::new();
        for c in def.container_definitions() {
            let mine: Vec<(&String, &String)> = c
                .docker_labels()
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.starts_with("edgemesh."))
                .collect();
            if !mine.is_empty() && !labels.contains_key("edgemesh.container") {
                labels.insert(
                    "edgemesh.container".to_string(),
                    c.name().unwrap_or_default().to_string(),
                );
            }
            labels.extend(mine.into_iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Ok(TaskDefInfo {
            network_mode,
            ports,
            labels,
        })
    }

    async fn describe_container_instances(
        &self,
        arns: &[String],
    ) -> Result<BTreeMap<String, String>, ApiError> {
        let out = self
            .ecs
            .describe_container_instances()
            .cluster(&self.cluster)
            .set_container_instances(Some(arns.to_vec()))
            .send()
            .await
            .map_err(|e| classify("ecs:DescribeContainerInstances", e))?;
        Ok(out
            .container_instances()
            .iter()
            .filter_map(|c| {
                Some((
                    c.container_instance_arn()?.to_string(),
                    c.ec2_instance_id()?.to_string(),
                ))
            })
            .collect())
    }

    async fn instance_addresses(
        &self,
        ids: &[String],
    ) -> Result<BTreeMap<String, IpAddr>, ApiError> {
        let out = self
            .ec2
            .describe_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(|e| classify("ec2:DescribeInstances", e))?;
        Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| {
                Some((
                    i.instance_id()?.to_string(),
                    i.private_ip_address()?.parse().ok()?,
                ))
            })
            .collect())
    }
}
