//! Route53 for the node: the DNS-01 solver of the `acme` crate (TXT records under
//! `_acme-challenge.`) and the entrypoint's A/AAAA records, written as UPSERT/DELETE change
//! batches, each waited on until Route53 reports it INSYNC (served by every authoritative
//! server).

use std::time::{Duration, Instant};

use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType,
};
use edgemesh_acme::DnsSolver;
use tracing::{info, warn};

/// TTL of challenge records: short, so a retried order's new value is not hidden by a cache.
const TXT_TTL: i64 = 60;
/// How long a change may take to become INSYNC (Route53: typically under a minute).
const INSYNC_WITHIN: Duration = Duration::from_secs(180);

pub struct Route53 {
    client: aws_sdk_route53::Client,
    zone: String,
}

impl Route53 {
    pub async fn new(zone: &str, region: Option<&str>) -> Route53 {
        // Route53 is a global service whose API lives in us-east-1.
        let conf =
            crate::aws::sdk_config(Some(region.unwrap_or("us-east-1")), Duration::from_secs(10))
                .await;
        Route53 {
            client: aws_sdk_route53::Client::new(&conf),
            zone: zone.to_string(),
        }
    }

    fn fail<E>(&self, call: &str, e: &crate::aws::SdkError<E>) -> String
    where
        E: aws_sdk_route53::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (_, _, message) = crate::aws::describe(e);
        format!("Route53 {call} in hosted zone {}: {message}", self.zone)
    }

    /// The values of record `name` of type `rtype` (TXT values unquoted), empty when there
    /// is none.
    pub async fn values(&self, name: &str, rtype: RrType) -> Result<Vec<String>, String> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let out = self
            .client
            .list_resource_record_sets()
            .hosted_zone_id(&self.zone)
            .start_record_name(&fqdn)
            .start_record_type(rtype.clone())
            .max_items(1)
            .send()
            .await
            .map_err(|e| self.fail("ListResourceRecordSets", &e))?;
        Ok(out
            .resource_record_sets()
            .iter()
            .filter(|r| r.name().eq_ignore_ascii_case(&fqdn) && *r.r#type() == rtype)
            .flat_map(|r| r.resource_records())
            .map(|v| v.value().trim_matches('"').to_string())
            .collect())
    }

    /// Writes record `name` of type `rtype` as exactly `values` (UPSERT), or deletes it
    /// (`Delete`, with the values it holds), and waits until the change is INSYNC.
    pub async fn change(
        &self,
        action: ChangeAction,
        name: &str,
        rtype: RrType,
        ttl: i64,
        values: &[String],
    ) -> Result<(), String> {
        let quote = rtype == RrType::Txt;
        let mut set = ResourceRecordSet::builder()
            .name(format!("{}.", name.trim_end_matches('.')))
            .r#type(rtype)
            .ttl(ttl);
        for v in values {
            let value = if quote { format!("\"{v}\"") } else { v.clone() };
            set = set.resource_records(
                ResourceRecord::builder()
                    .value(value)
                    .build()
                    .map_err(|e| e.to_string())?,
            );
        }
        let change = Change::builder()
            .action(action)
            .resource_record_set(set.build().map_err(|e| e.to_string())?)
            .build()
            .map_err(|e| e.to_string())?;
        let out = self
            .client
            .change_resource_record_sets()
            .hosted_zone_id(&self.zone)
            .change_batch(
                ChangeBatch::builder()
                    .comment("edgemesh")
                    .changes(change)
                    .build()
                    .map_err(|e| e.to_string())?,
            )
            .send()
            .await
            .map_err(|e| self.fail("ChangeResourceRecordSets", &e))?;
        let Some(info) = out.change_info() else {
            return Err(format!(
                "Route53 ChangeResourceRecordSets in hosted zone {}: no change info in the answer",
                self.zone
            ));
        };
        let id = info.id().to_string();
        let mut status = info.status().clone();
        let deadline = Instant::now() + INSYNC_WITHIN;
        while status != ChangeStatus::Insync {
            if Instant::now() > deadline {
                return Err(format!(
                    "Route53 change {id} for {name} not INSYNC after {INSYNC_WITHIN:?}"
                ));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let out = self
                .client
                .get_change()
                .id(&id)
                .send()
                .await
                .map_err(|e| self.fail("GetChange", &e))?;
            status = out
                .change_info()
                .map_or(ChangeStatus::Pending, |c| c.status().clone());
        }
        Ok(())
    }

    /// Sets the TXT record `name` to `values`; deletes it (given what it held) when empty.
    async fn set_txt(
        &self,
        name: &str,
        before: &[String],
        values: &[String],
    ) -> Result<(), String> {
        match (values.is_empty(), before.is_empty()) {
            (false, _) => {
                self.change(ChangeAction::Upsert, name, RrType::Txt, TXT_TTL, values)
                    .await
            }
            (true, false) => {
                self.change(ChangeAction::Delete, name, RrType::Txt, TXT_TTL, before)
                    .await
            }
            (true, true) => Ok(()),
        }
    }
}

impl DnsSolver for Route53 {
    async fn present(&self, name: &str, value: &str) -> Result<(), String> {
        // Read, add, write: a wildcard and its base domain put two values at one name.
        let before = self.values(name, RrType::Txt).await?;
        let mut values = before.clone();
        if !values.iter().any(|v| v == value) {
            values.push(value.to_string());
        }
        self.set_txt(name, &before, &values).await?;
        info!(record = %name, zone = %self.zone, "DNS-01 TXT record in sync");
        Ok(())
    }

    async fn cleanup(&self, name: &str, value: &str) {
        let result = async {
            let before = self.values(name, RrType::Txt).await?;
            let values: Vec<String> = before.iter().filter(|v| *v != value).cloned().collect();
            if values.len() == before.len() {
                return Ok(());
            }
            self.set_txt(name, &before, &values).await
        }
        .await;
        if let Err(e) = result {
            warn!(record = %name, error = %e, "DNS-01 TXT record not removed");
        }
    }
}
