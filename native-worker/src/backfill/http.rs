//! The backfill's HTTP: JSON GETs with a timeout, bounded bodies, retries that honour
//! `Retry-After`, and a cap on requests in flight to any one host, so a backfill of the whole
//! network never hammers one PDS (or the PLC directory) however many repos it copies at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Semaphore;
use url::Url;

use super::{BackfillConfig, BackfillError};

/// Why one request failed for good.
#[derive(Debug, thiserror::Error)]
#[error("GET {url} failed: {reason}")]
pub(super) struct RequestError {
    pub url: String,
    pub reason: String,
}

/// A client shared by every repo a backfill copies.
pub(super) struct Http {
    client: reqwest::Client,
    config: BackfillConfig,
    /// One semaphore per `host:port`, created on first use.
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Http {
    pub fn new(config: &BackfillConfig) -> Result<Self, BackfillError> {
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .user_agent(concat!(
                "pubsearch-native-worker/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(BackfillError::Client)?;
        Ok(Http {
            client,
            config: config.clone(),
            hosts: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &BackfillConfig {
        &self.config
    }

    fn host_limit(&self, url: &Url) -> Arc<Semaphore> {
        let host = format!(
            "{}:{}",
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or_default()
        );
        let mut hosts = self
            .hosts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(
            hosts
                .entry(host)
                .or_insert_with(|| Arc::new(Semaphore::new(self.config.per_host.max(1)))),
        )
    }

    /// GETs JSON, retrying retryable failures (connect errors, timeouts, a body cut off, 5xx,
    /// 429) with jittered backoff, or after the server's `Retry-After` when it gives one. A
    /// host's slot is held for one attempt, never while waiting to retry.
    pub async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        url: &Url,
    ) -> Result<T, RequestError> {
        let config = &self.config;
        let limit = self.host_limit(url);
        let mut backoff = config.backoff.clone();
        let mut attempt = 0;
        let failed = |reason: String, attempt: u32| RequestError {
            url: url.to_string(),
            reason: format!("{reason} (attempt {attempt})"),
        };
        loop {
            attempt += 1;
            let permit = limit
                .acquire()
                .await
                .expect("host semaphores are never closed");
            let mut retry_after = None;
            let (retryable, reason) = match self.client.get(url.clone()).send().await {
                Ok(response) if response.status().is_success() => {
                    match body_within(response, config.max_response_bytes).await {
                        Ok(Some(body)) => {
                            return serde_json::from_slice(&body).map_err(|error| {
                                failed(format!("unreadable response: {error}"), attempt)
                            });
                        }
                        Ok(None) => {
                            return Err(failed(
                                format!(
                                    "response over the {} byte limit",
                                    config.max_response_bytes
                                ),
                                attempt,
                            ));
                        }
                        Err(error) => (true, format!("response cut off: {error}")),
                    }
                }
                Ok(mut response) => {
                    let status = response.status();
                    let retryable = status.is_server_error() || status.as_u16() == 429;
                    retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| value.trim().parse::<u64>().ok())
                        .map(|seconds| Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
                    // The start of an error body is enough to say why, and all that is read.
                    let start = response.chunk().await.ok().flatten().unwrap_or_default();
                    let body: String = String::from_utf8_lossy(&start).chars().take(200).collect();
                    (retryable, format!("HTTP {status}: {body}"))
                }
                Err(error) => (
                    error.is_timeout() || error.is_connect() || error.is_request(),
                    error.to_string(),
                ),
            };
            drop(permit);
            if !retryable || attempt >= config.max_attempts {
                return Err(failed(reason, attempt));
            }
            let delay = retry_after.unwrap_or_else(|| backoff.next_delay());
            tracing::debug!(%url, attempt, reason, ?delay, "retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

/// The default [`BackfillConfig::max_response_bytes`]: a `listRecords` page is 100 records,
/// well under a megabyte in practice; 100 records at the firehose's whole frame limit would be
/// 200 MB, so this bounds memory without refusing any page a PDS really serves.
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// Longest `Retry-After` a rate-limited request waits before its next attempt.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Reads a response body, giving up past `limit` bytes (`Ok(None)`).
async fn body_within(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// Parses a PDS, PLC directory or relay address for the command line: http(s) only, and always
/// ending in `/`, so the XRPC paths joined onto it keep any path prefix (`https://host/prefix`).
pub fn service_url(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text).map_err(|error| format!("{text:?} is not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!(
            "{text:?} is not an http(s) address, like https://pds.example.com"
        ));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::service_url;

    #[test]
    fn service_addresses_are_http_and_keep_their_path() {
        let joined = |text: &str| {
            service_url(text)
                .unwrap()
                .join("xrpc/com.atproto.repo.listRecords")
                .unwrap()
                .to_string()
        };
        assert_eq!(
            joined("https://pds.example.com"),
            "https://pds.example.com/xrpc/com.atproto.repo.listRecords"
        );
        assert_eq!(
            joined("http://127.0.0.1:3000/prefix"),
            "http://127.0.0.1:3000/prefix/xrpc/com.atproto.repo.listRecords"
        );
        for bad in [
            "localhost:3000",
            "pds.example.com",
            "ftp://host/",
            "https://",
        ] {
            assert!(service_url(bad).is_err(), "{bad}");
        }
    }
}
