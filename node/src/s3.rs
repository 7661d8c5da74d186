//! Reading the cluster configuration object from S3 (`[cluster_config] s3`): one
//! conditional GetObject per poll, so an unchanged object costs a 304 and no body.

use std::time::Duration;

use crate::aws::describe;

/// A read of the object.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// The object still has the ETag given.
    Unchanged,
    Object {
        etag: String,
        body: Vec<u8>,
    },
}

pub struct S3Reader {
    client: aws_sdk_s3::Client,
}

impl S3Reader {
    pub async fn new(region: Option<&str>) -> S3Reader {
        let conf = crate::aws::sdk_config(region, Duration::from_secs(10)).await;
        S3Reader {
            client: aws_sdk_s3::Client::new(&conf),
        }
    }

    /// Reads `bucket/key` unless its ETag is still `if_none_match`; an object larger than
    /// `max_bytes` is an error (its body is not read).
    pub async fn read(
        &self,
        bucket: &str,
        key: &str,
        if_none_match: Option<&str>,
        max_bytes: usize,
    ) -> Result<Read, String> {
        let req = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .set_if_none_match(if_none_match.map(str::to_string));
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) => {
                let (_, status, message) = describe(&e);
                return match status {
                    Some(304) => Ok(Read::Unchanged),
                    _ => Err(format!("GetObject s3://{bucket}/{key}: {message}")),
                };
            }
        };
        let too_large = |len: u64| {
            format!("s3://{bucket}/{key} is {len} bytes; a cluster configuration holds at most {max_bytes} bytes")
        };
        let etag = out.e_tag().unwrap_or_default().to_string();
        if etag.is_empty() {
            return Err(format!(
                "GetObject s3://{bucket}/{key}: no ETag in the answer"
            ));
        }
        // Refused by its declared length before the body is read; the body is checked too.
        let len = out.content_length().unwrap_or(0).max(0) as u64;
        if len > max_bytes as u64 {
            return Err(too_large(len));
        }
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| format!("GetObject s3://{bucket}/{key}: reading the body: {e}"))?
            .into_bytes()
            .to_vec();
        if body.len() > max_bytes {
            return Err(too_large(body.len() as u64));
        }
        Ok(Read::Object { etag, body })
    }
}
