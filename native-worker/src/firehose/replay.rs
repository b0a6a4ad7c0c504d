//! Replays a Jetstream NDJSON file through the pipeline, for offline runs, tests and benchmarks.

use std::path::Path;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use super::{EventSink, MAX_FRAME_BYTES, Position, Refused, decode_jetstream};

/// Why a replay stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read replay file {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the ingest pipeline stopped before the replay finished")]
    PipelineStopped,
}

/// Feeds every line of `path` to `sink`, or those before `stop`; returns the number of lines
/// read. Undecodable lines are counted and skipped. Replays keep no cursor: the store's revision
/// check makes them idempotent, so a stopped one is simply run again.
pub async fn run(
    path: &Path,
    sink: &impl EventSink,
    stop: &CancellationToken,
) -> Result<u64, ReplayError> {
    let read_error = |source| ReplayError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(read_error)?;
    let mut lines = BufReader::with_capacity(1 << 20, file).lines();
    let mut count = 0u64;
    while let Some(line) = lines.next_line().await.map_err(read_error)? {
        if stop.is_cancelled() {
            tracing::info!(lines = count, "replay stopped");
            break;
        }
        count += 1;
        if line.trim().is_empty() {
            continue;
        }
        if line.len() > MAX_FRAME_BYTES {
            sink.refused(Refused::Oversized);
            continue;
        }
        match decode_jetstream(&line) {
            Ok(mut event) => {
                event.position = Position::Line(count);
                if !sink.deliver(event).await {
                    return Err(ReplayError::PipelineStopped);
                }
            }
            Err(error) => {
                tracing::debug!(line = count, %error, "skipping undecodable replay line");
                sink.refused(Refused::Undecodable);
            }
        }
    }
    Ok(count)
}
