//! Copying many repos at once: up to [`BackfillConfig::concurrency`] repos in flight, each
//! host's requests capped by [`BackfillConfig::per_host`] (in [`Http`]), all through one
//! ingest writer.

use futures_util::StreamExt;

use super::http::Http;
use super::repo::{RepoFailure, copy_repo};
use super::{BackfillConfig, BackfillError, BackfillReport};
use crate::ingest::{self, IngestConfig, Policy};
use crate::store::Store;

/// Copies `dids` into `store`, resuming whatever an earlier run left unfinished; banned repos
/// are skipped. `policy` replaces the stored ban list, `None` uses it. `on_repo` is called
/// after each repo with the report so far (progress).
pub(super) async fn copy_repos(
    store: &Store,
    dids: &[String],
    config: &BackfillConfig,
    policy: Option<Policy>,
    mut on_repo: impl FnMut(&BackfillReport),
) -> Result<BackfillReport, BackfillError> {
    let http = Http::new(config)?;
    let ingest_config = IngestConfig {
        cursor_source: "backfill".into(),
        write_through: config.write_through,
        ..IngestConfig::default()
    };
    let (sink, writer) = ingest::spawn_writer(store, &ingest_config, policy, None)?;
    let mut report = BackfillReport::default();
    // Owned DIDs: a future borrowing from the stream's items would not be `Send` for every
    // lifetime, which the engine's activities need.
    let mut copies = futures_util::stream::iter(dids.iter().cloned())
        .map(|did: String| {
            let (http, sink) = (&http, &sink);
            async move {
                if sink.policy().is_banned(&did) {
                    return (did, None);
                }
                let outcome = copy_repo(http, sink, store, &did).await;
                (did, Some(outcome))
            }
        })
        .buffer_unordered(config.concurrency.max(1));
    let mut stopped = false;
    while let Some((did, outcome)) = copies.next().await {
        report.repos += 1;
        match outcome {
            None => {
                tracing::info!(did, "skipping banned repo");
                report.banned_repos += 1;
            }
            Some(Ok(copy)) => {
                report.finished_repos += usize::from(copy.was_finished());
                report.records += copy.records;
                report.pages += copy.pages;
                report.already_done += copy.already_done;
                report.malformed_records += copy.malformed_records;
            }
            Some(Err(RepoFailure::Repo(error))) => {
                tracing::warn!(did, %error, "skipping repo");
                report.failed_repos.push((did, error.to_string()));
            }
            Some(Err(RepoFailure::PipelineStopped)) => {
                stopped = true;
                break;
            }
        }
        on_repo(&report);
    }
    drop(copies);
    drop(sink);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .expect("the writer thread panicked")?;
    if stopped {
        return Err(BackfillError::PipelineStopped);
    }
    Ok(report)
}
