//! `native-worker flow`: inspect and steer durable orchestrations from another process.
//!
//! Reads go straight to the flow database (WAL: they never wait on the running worker);
//! `cancel` leaves a message in the engine's inbox, which the running worker applies within a
//! second (or on its next start).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use crate::flow::{self, Status};

#[derive(Debug, clap::Args)]
pub(super) struct FlowArgs {
    #[command(subcommand)]
    action: FlowAction,
    /// Directory holding the flow database (`flow.db`).
    #[arg(
        long,
        global = true,
        env = "PUBSEARCH_DATA_DIR",
        default_value = "data"
    )]
    data_dir: PathBuf,
    /// The workflows of `backfill --all` (`backfill-flow.db`) instead of the worker's.
    #[arg(long, global = true)]
    backfill: bool,
}

#[derive(Debug, Subcommand)]
enum FlowAction {
    /// List instances in id order, a page at a time.
    List {
        /// Only instances in this state: running, completed, failed or cancelled.
        #[arg(long)]
        status: Option<Status>,
        /// Start after this instance id (the `next` of the previous page).
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one instance and its current history as JSON.
    Show { instance: String },
    /// Cancel a running instance (and its running children).
    Cancel {
        instance: String,
        #[arg(long, default_value = "cancelled from the command line")]
        reason: String,
    },
    /// Delete finished instances (and their history) last updated longer ago than this.
    Purge {
        #[arg(long, default_value_t = 168)]
        older_than_hours: u64,
    },
}

fn existing_db(data_dir: &Path, backfill: bool) -> Result<PathBuf> {
    let (path, creator) = match backfill {
        false => (
            flow::flow_path(data_dir),
            "the worker creates it on its first `run`",
        ),
        true => (
            crate::backfill::workflow::flow_path(data_dir),
            "`backfill --all` creates it",
        ),
    };
    if !path.exists() {
        bail!("no flow database at {} ({creator})", path.display());
    }
    Ok(path)
}

pub(super) fn run(args: FlowArgs) -> Result<()> {
    let flows = flow::OutsideClient::new(&existing_db(&args.data_dir, args.backfill)?);
    if !args.backfill && crate::backfill::workflow::flow_path(&args.data_dir).exists() {
        eprintln!("(backfill --all keeps its workflows apart: `flow --backfill …`)");
    }
    match args.action {
        FlowAction::List {
            status,
            after,
            limit,
        } => {
            let page = flows.list(status, after.as_deref(), limit)?;
            for info in &page.instances {
                println!(
                    "{:<40} {:<24} v{:<3} {:<10} {}",
                    info.id,
                    info.name,
                    info.version,
                    info.status,
                    info.custom_status.as_deref().unwrap_or("")
                );
            }
            match page.next {
                Some(next) => eprintln!("more: --after {next}"),
                None => eprintln!("{} instance(s)", page.instances.len()),
            }
        }
        FlowAction::Show { instance } => {
            let (info, history) = flows
                .history(&instance)?
                .with_context(|| format!("no flow instance `{instance}`"))?;
            let shown = serde_json::json!({ "instance": info, "history": history });
            println!("{}", serde_json::to_string_pretty(&shown)?);
        }
        FlowAction::Cancel { instance, reason } => {
            let info = flows
                .status(&instance)?
                .with_context(|| format!("no flow instance `{instance}`"))?;
            if info.status.is_terminal() {
                bail!("instance `{instance}` is already {}", info.status);
            }
            flows.cancel(&instance, reason)?;
            println!(
                "cancellation of `{instance}` queued; the running worker applies it within a second"
            );
        }
        FlowAction::Purge { older_than_hours } => {
            let cutoff = purge_cutoff(flow::now_ms(), older_than_hours);
            let purged = flows.purge_before(cutoff)?;
            println!("purged {purged} finished instance(s)");
        }
    }
    Ok(())
}

/// The finish time before which `flow purge` deletes instances. Saturating: an absurd age means
/// "nothing is that old", never a cutoff in the future that would purge everything.
fn purge_cutoff(now_ms: i64, older_than_hours: u64) -> i64 {
    let age_ms = i64::try_from(older_than_hours)
        .unwrap_or(i64::MAX)
        .saturating_mul(3_600_000);
    now_ms.saturating_sub(age_ms)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_absurd_purge_age_purges_nothing() {
        let now = 1_760_000_000_000;
        assert_eq!(super::purge_cutoff(now, 168), now - 168 * 3_600_000);
        assert!(super::purge_cutoff(now, u64::MAX) < 0);
        assert!(super::purge_cutoff(now, i64::MAX as u64 / 1_000) < 0);
    }
}
