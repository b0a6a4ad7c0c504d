//! Command-line interface: one subcommand per job, all with embedded defaults.

mod backfill;
mod flow;
mod progress;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::firehose::jetstream;
use crate::ingest::IngestConfig;
use crate::run::{self, RunOptions, Source};
use pubsearch_shared::delta::{Delta, Layers};
use pubsearch_shared::search::{self, SearchRequest};
use pubsearch_shared::{Timestamp, schema};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

/// pubsearch native worker: ingest, sync, workflows and snapshot publishing.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ingest the firehose into the local store (embedded defaults: public Jetstream, ./data).
    Run(Box<RunArgs>),
    /// Copy whole repos from their PDS (listRecords): named ones, or with --all every repo the
    /// relay lists for the collections we index; resumes an interrupted run.
    Backfill(Box<backfill::BackfillArgs>),
    /// Write a deterministic synthetic Jetstream corpus (NDJSON) for tests and benchmarks.
    GenCorpus {
        /// Events to generate.
        #[arg(long, default_value_t = 10_000)]
        records: usize,
        /// RNG seed: the same seed gives byte-identical output.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Fraction of records made deliberately malformed.
        #[arg(long, default_value_t = 0.0)]
        malformed_rate: f64,
        /// Output file, or `-` for stdout.
        #[arg(long, default_value = "-")]
        out: PathBuf,
    },
    /// Build, verify and publish a snapshot now; `rollback` and `list` manage published builds.
    Publish(PublishArgs),
    /// Inspect and steer durable orchestrations: list, show, cancel, purge.
    Flow(flow::FlowArgs),
    /// Serve the search API and page from the latest published build of a channel (a
    /// --snapshot-dir or --s3-bucket), without ingesting: a read-only search box.
    Serve(ServeArgs),
    /// Distil the static embedding table from the installed model, once (builds do it
    /// themselves when it is missing; this does it ahead of them and says where it is).
    EmbedTable {
        /// The model directory (`scripts/install-toolchain.sh` installs it there).
        #[arg(long, env = "PUBSEARCH_MODEL_DIR", default_value = crate::embed::DEFAULT_MODEL_DIR)]
        model_dir: PathBuf,
    },
    /// Search a snapshot file exactly as the edge would, printing the JSON response.
    Search {
        /// The snapshot SQLite file.
        #[arg(long, value_name = "FILE")]
        snapshot: PathBuf,
        /// A delta over that snapshot, searched together with it as the edge does.
        #[arg(long, value_name = "FILE")]
        delta: Option<PathBuf>,
        /// Search parameters as the edge takes them, e.g. `platform=leaflet` or `limit=5`.
        #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// The query text.
        query: String,
    },
}

/// Which firehose to follow.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum SourceKind {
    /// Jetstream v1 (JSON over websocket, resumed by cursor).
    Jetstream,
    /// tap (`/channel`, acknowledged once durable).
    Tap,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Directory for the store (`store.db`) and other local state.
    #[arg(long, env = "PUBSEARCH_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Which firehose to follow.
    #[arg(long, value_enum, default_value = "jetstream")]
    source: SourceKind,
    /// Jetstream `/subscribe` endpoint.
    #[arg(long, env = "JETSTREAM_URL", default_value = jetstream::DEFAULT_URL)]
    jetstream_url: Url,
    /// tap `/channel` endpoint.
    #[arg(long, env = "TAP_URL", default_value = "ws://127.0.0.1:2480/channel")]
    tap_url: Url,
    /// Replay a Jetstream NDJSON file instead of following a live source, then exit.
    #[arg(long, value_name = "FILE.ndjson", conflicts_with = "source")]
    replay: Option<PathBuf>,
    /// File of banned DIDs (one per line, `#` comments): their records are never stored.
    /// Replaces the stored list; without it the stored list applies.
    #[arg(long, env = "PUBSEARCH_BANNED_DIDS", value_name = "FILE")]
    banned_dids: Option<PathBuf>,
    /// Address of the admin endpoint (`/health`, `/stats`); `off` disables it.
    #[arg(long, env = "PUBSEARCH_ADMIN_ADDR", default_value = "127.0.0.1:7070", value_parser = parse_listen_addr)]
    admin_addr: ListenAddr,
    /// Where the public search API and page are served from what this worker publishes
    /// (`/`, `/search`, `/document`, `/tags`, `/feed`, ...); `off` disables it.
    #[arg(long, env = "PUBSEARCH_SERVE_ADDR", default_value = crate::serve::DEFAULT_ADDR, value_parser = parse_listen_addr)]
    serve_addr: ListenAddr,
    /// Bearer token the admin endpoint requires (`Authorization: Bearer …`); needed to bind
    /// an address other than loopback.
    #[arg(long, env = "PUBSEARCH_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Most changes committed per transaction.
    #[arg(long, default_value_t = IngestConfig::default().max_batch)]
    max_batch: usize,
    /// Threads embedding documents as they are stored, for semantic search (when the model is
    /// installed); 0 leaves it to the builds.
    #[arg(long, env = "PUBSEARCH_EMBED_THREADS", default_value_t = 1)]
    embed_threads: usize,
    /// Documents written to the store a second (by this process or a backfill beside it)
    /// above which the embedder waits; 0 never waits.
    #[arg(long, env = "PUBSEARCH_EMBED_DEFER_ABOVE", default_value_t = crate::embedder::EmbedderOptions::default().defer_above)]
    embed_defer_above: u64,
    /// Seconds between progress log lines.
    #[arg(long, default_value_t = 10)]
    progress_secs: u64,
    /// Minutes between scheduled snapshot publishes (to --s3-bucket or --snapshot-dir); 0
    /// disables publishing, deltas included.
    #[arg(long, env = "PUBSEARCH_PUBLISH_MINUTES", default_value_t = 15)]
    publish_minutes: u64,
    /// Seconds between deltas over the live build (what changed since it, so new posts are
    /// searchable within a minute); 0 publishes whole builds only.
    #[arg(long, env = "PUBSEARCH_DELTA_SECONDS", default_value_t = 10)]
    delta_seconds: u64,
    /// A delta larger than this many megabytes makes the next publish a whole build.
    #[arg(long, default_value_t = 8)]
    delta_max_mb: u64,
    /// Channel scheduled publishes update.
    #[arg(long, default_value = "prod")]
    channel: String,
    #[command(flatten)]
    target: TargetArgs,
    /// Turso database (`libsql://…`): write every batch through to it and sync other writers'
    /// rows down. Unset: the local store is the source of truth.
    #[arg(long, env = "TURSO_URL")]
    turso_url: Option<String>,
    /// Turso auth token (a database token from `turso db tokens create`).
    #[arg(long, env = "TURSO_AUTH_TOKEN", hide_env_values = true)]
    turso_auth_token: Option<String>,
    /// Seconds between incremental syncs down from Turso.
    #[arg(long, default_value_t = 30)]
    turso_sync_secs: u64,
}

#[derive(Debug, clap::Args)]
struct PublishArgs {
    #[command(subcommand)]
    action: Option<PublishAction>,
    /// Directory holding the store (`store.db`).
    #[arg(
        long,
        global = true,
        env = "PUBSEARCH_DATA_DIR",
        default_value = "data"
    )]
    data_dir: PathBuf,
    /// Channel whose pointer to update.
    #[arg(long, global = true, default_value = "prod")]
    channel: String,
    #[command(flatten)]
    target: TargetArgs,
    /// Publish even if the build has under half the live build's documents.
    #[arg(long)]
    force: bool,
    /// Publish a delta (what changed since the live build) over the live build instead of a
    /// new build.
    #[arg(long, conflicts_with = "force")]
    delta: bool,
}

/// Where snapshots are published, and how many are kept there: shared by `publish` and `run`.
#[derive(Debug, clap::Args)]
struct TargetArgs {
    /// Publish to this S3/R2 bucket (configured by the AWS_* variables) instead of a directory.
    #[arg(long, global = true, env = "PUBSEARCH_S3_BUCKET")]
    s3_bucket: Option<String>,
    /// Local publish directory (default: DATA_DIR/snapshots).
    #[arg(long, global = true)]
    snapshot_dir: Option<PathBuf>,
    /// Builds to keep: the newest N (counting the live one), and always the live one and its
    /// predecessor (the rollback target).
    #[arg(long, global = true, default_value_t = 5)]
    keep: usize,
}

impl TargetArgs {
    fn open(&self, data_dir: &std::path::Path) -> Result<crate::publish::objects::ObjectTarget> {
        use crate::publish::objects::ObjectTarget;
        Ok(match &self.s3_bucket {
            Some(bucket) => ObjectTarget::s3(bucket)?,
            None => ObjectTarget::local(
                &self
                    .snapshot_dir
                    .clone()
                    .unwrap_or_else(|| data_dir.join("snapshots")),
            )?,
        })
    }
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to answer on.
    #[arg(long, env = "PUBSEARCH_SERVE_ADDR", default_value = crate::serve::DEFAULT_ADDR, value_parser = parse_listen_addr)]
    serve_addr: ListenAddr,
    /// Directory for downloaded builds (from --s3-bucket); builds in a --snapshot-dir are read
    /// in place.
    #[arg(long, env = "PUBSEARCH_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Channel whose pointer names the build to serve.
    #[arg(long, default_value = "prod")]
    channel: String,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Debug, Subcommand)]
enum PublishAction {
    /// Point the channel back at the build before the live one, and hold it there: scheduled
    /// publishing skips the channel until the next `publish` run by hand.
    Rollback,
    /// List the channel's published builds, marking the live one.
    List,
}

/// A listen address, or none (`off`).
#[derive(Debug, Clone, Copy)]
struct ListenAddr(Option<SocketAddr>);

fn parse_listen_addr(text: &str) -> Result<ListenAddr, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(ListenAddr(None));
    }
    use std::net::ToSocketAddrs;
    // An IP address as is; a name (`localhost:7070`) as the first address it resolves to.
    text.to_socket_addrs()
        .map_err(|e| format!("expected HOST:PORT or `off`: {e}"))?
        .next()
        .map(|addr| ListenAddr(Some(addr)))
        .ok_or_else(|| format!("{text} resolves to no address"))
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

impl Cli {
    /// Runs the chosen subcommand.
    pub fn run(self) -> Result<()> {
        match self.command {
            Command::Run(args) => run_ingest(*args),
            Command::Publish(args) => publish(args),
            Command::Flow(args) => flow::run(args),
            Command::Backfill(args) => backfill::run(*args),
            Command::Serve(args) => serve(args),
            Command::GenCorpus {
                records,
                seed,
                malformed_rate,
                out,
            } => gen_corpus(records, seed, malformed_rate, &out),
            Command::EmbedTable { model_dir } => embed_table(&model_dir),
            Command::Search {
                snapshot,
                delta,
                params,
                query,
            } => search_snapshot(&snapshot, delta.as_deref(), query, params),
        }
    }
}

fn embed_table(model_dir: &Path) -> Result<()> {
    let started = std::time::Instant::now();
    let model = crate::embed::stored::load_or_distill(model_dir).with_context(|| {
        format!(
            "loading the embedding model from {} (scripts/install-toolchain.sh installs it)",
            model_dir.display()
        )
    })?;
    println!(
        "{}: {} tokens × {} dimensions ({}), ready in {:.1} s",
        crate::embed::stored::table_path(model_dir).display(),
        model.table.rows(),
        model.table.dims(),
        model.name,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run_ingest(args: RunArgs) -> Result<()> {
    let source = match (args.replay, args.source) {
        (Some(path), _) => Source::Replay(path),
        (None, SourceKind::Jetstream) => Source::Jetstream(args.jetstream_url),
        (None, SourceKind::Tap) => Source::Tap(args.tap_url),
    };
    let publish = (args.publish_minutes > 0)
        .then(|| -> Result<run::ScheduledPublish> {
            Ok(run::ScheduledPublish {
                every: Duration::from_secs(args.publish_minutes.saturating_mul(60)),
                delta_every: (args.delta_seconds > 0)
                    .then(|| Duration::from_secs(args.delta_seconds)),
                delta_max_bytes: args.delta_max_mb.saturating_mul(1_000_000),
                target: args.target.open(&args.data_dir)?,
                options: crate::publish::PublishOptions {
                    channel: args.channel.clone(),
                    force: false,
                    keep: args.target.keep,
                },
            })
        })
        .transpose()?;
    let turso = args
        .turso_url
        .as_deref()
        .map(|url| -> Result<crate::turso::Replication> {
            let config = crate::turso::TursoConfig::new(url, args.turso_auth_token.clone())?;
            let mut replication = crate::turso::Replication::new(config);
            replication.sync.every = Duration::from_secs(args.turso_sync_secs.max(1));
            Ok(replication)
        })
        .transpose()?;
    let serve = match args.serve_addr.0 {
        Some(addr) => Some(run::ServeOptions {
            addr,
            target: args.target.open(&args.data_dir)?,
            channel: args.channel.clone(),
        }),
        None => None,
    };
    // A replay has an end: a bar towards it on a terminal (a live firehose logs its rate).
    let (progress, bar) = match (&source, std::io::stderr().is_terminal()) {
        (Source::Replay(path), true) => {
            let lines = count_lines(path)?;
            let bar = Arc::new(Mutex::new(progress::Progress::new(
                "replay",
                "events",
                Some(lines),
            )));
            let shown = bar.clone();
            let hook = run::ProgressHook(Arc::new(move |stats: &crate::ingest::StatsSnapshot| {
                let read = stats.events + stats.undecodable_frames + stats.oversized_frames;
                if let Ok(mut bar) = shown.lock() {
                    bar.show(read, &format!("{} committed", stats.applied));
                }
            }));
            (Some(hook), Some(bar))
        }
        _ => (None, None),
    };
    let options = RunOptions {
        turso,
        publish,
        serve,
        progress,
        data_dir: args.data_dir,
        source,
        banned_dids: args.banned_dids,
        admin_addr: args.admin_addr.0,
        admin_token: args.admin_token.map(secrecy::SecretString::from),
        progress_every: Duration::from_secs(args.progress_secs.max(1)),
        ingest: IngestConfig {
            max_batch: args.max_batch,
            ..IngestConfig::default()
        },
        embed: (args.embed_threads > 0).then(|| crate::embedder::EmbedderOptions {
            threads: args.embed_threads,
            defer_above: args.embed_defer_above,
            ..Default::default()
        }),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(run::run(options, CancellationToken::new()));
    if let Some(bar) = bar
        && let Ok(bar) = bar.lock()
    {
        bar.finish();
    }
    result?;
    Ok(())
}

/// Lines in a replay file, for its progress bar.
fn count_lines(path: &Path) -> Result<u64> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut lines = 0u64;
    loop {
        let buffer = reader
            .fill_buf()
            .with_context(|| format!("reading {}", path.display()))?;
        if buffer.is_empty() {
            return Ok(lines);
        }
        lines += buffer.iter().filter(|&&b| b == b'\n').count() as u64;
        let read = buffer.len();
        reader.consume(read);
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    let Some(addr) = args.serve_addr.0 else {
        anyhow::bail!("serve needs an address: --serve-addr off leaves nothing to do");
    };
    if let Some(dir) = &args.target.snapshot_dir
        && !dir.is_dir()
    {
        anyhow::bail!(
            "no published directory at {}: pass the --snapshot-dir `run` or `publish` writes to",
            dir.display()
        );
    }
    let options = run::ServeOptions {
        addr,
        target: args.target.open(&args.data_dir)?,
        channel: args.channel,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = crate::serve::bind(addr).await?;
        let builds = options.builds(&args.data_dir);
        tracing::info!(
            url = %format!("http://{}/", listener.local_addr()?),
            source = builds.source(),
            "search server listening"
        );
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::signal::ctrl_c().await.ok();
            tracing::info!("stopping the search server");
            stop.cancel();
        });
        crate::serve::serve(listener, builds, shutdown)
            .await
            .context("serving")
    })
}

fn gen_corpus(records: usize, seed: u64, malformed_rate: f64, out: &std::path::Path) -> Result<()> {
    use crate::corpus::{CorpusConfig, generate};
    let config = CorpusConfig {
        records,
        seed,
        malformed_rate: malformed_rate.clamp(0.0, 1.0),
    };
    let mut bar = progress::Progress::new("gen-corpus", "events", Some(records as u64));
    let progress = |events| bar.show(events as u64, "");
    let summary = if out.as_os_str() == "-" {
        generate(
            &config,
            &mut std::io::BufWriter::new(std::io::stdout().lock()),
            progress,
        )
    } else {
        let file =
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        generate(
            &config,
            &mut std::io::BufWriter::with_capacity(1 << 20, file),
            progress,
        )
    }
    .context("writing the corpus");
    bar.finish();
    let summary = summary?;
    tracing::info!(?summary, "corpus written");
    Ok(())
}

fn publish(args: PublishArgs) -> Result<()> {
    use crate::publish::{self, PublishOptions};
    let target = args.target.open(&args.data_dir)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        match args.action {
            Some(PublishAction::Rollback) => {
                let manifest = target.rollback(&args.channel).await?;
                println!(
                    "{} now serves build {}; scheduled publishing holds off until `native-worker publish` is run by hand",
                    args.channel, manifest.build_id
                );
            }
            Some(PublishAction::List) => {
                let live = target.current(&args.channel).await?.map(|m| m.build_id);
                for build in target.builds(&args.channel).await? {
                    let marker = if live.as_ref() == Some(&build.build_id) {
                        "*"
                    } else {
                        " "
                    };
                    println!(
                        "{marker} {}  {} documents  {} bytes  watermark {}",
                        build.build_id,
                        build.counts.documents,
                        build.byte_size,
                        build.source_watermark_us
                    );
                }
            }
            None => {
                let store = crate::store::Store::open(run::store_path(&args.data_dir))?;
                let options = PublishOptions {
                    channel: args.channel.clone(),
                    force: args.force,
                    keep: args.target.keep,
                };
                let mut display = progress::Progress::new("publish", "documents", None);
                let shown = progress::poll_while(move || {
                    if let Some(stage) = publish::progress::current() {
                        let of = stage.total.map(|t| format!(" of {t}")).unwrap_or_default();
                        display.show(stage.done, &format!("{}{of}", stage.name));
                    }
                });
                let manifest = match args.delta {
                    true => {
                        publish::publish_delta_once(&store, &args.data_dir, &target, &options)
                            .await?
                    }
                    false => {
                        publish::publish_once(&store, &args.data_dir, &target, &options).await?
                    }
                };
                drop(shown);
                println!("{}", serde_json::to_string_pretty(&manifest)?);
            }
        }
        anyhow::Ok(())
    })
}

fn search_snapshot(
    path: &Path,
    delta: Option<&Path>,
    query: String,
    mut params: Vec<(String, String)>,
) -> Result<()> {
    let open = |path: &Path| {
        Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening snapshot {}", path.display()))
    };
    let conn = open(path)?;
    schema::check_compatible(&conn)
        .with_context(|| format!("checking snapshot {}", path.display()))?;
    search::prepare(&conn)
        .with_context(|| format!("preparing snapshot {} for search", path.display()))?;
    let delta = delta
        .map(|delta_path| -> Result<Delta> {
            let delta = Delta::open(open(delta_path)?)
                .with_context(|| format!("opening delta {}", delta_path.display()))?;
            let base: String = conn
                .query_row("SELECT value FROM meta WHERE key = 'build_id'", [], |row| {
                    row.get(0)
                })
                .optional()?
                .unwrap_or_default();
            if !base.is_empty() {
                delta.check_base(&base)?;
            }
            Ok(delta)
        })
        .transpose()?;
    params.push(("q".into(), query));
    let request = SearchRequest::from_params(params)?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .context("system clock is before 1970")?;
    let now = Timestamp::from_unix_millis(now.as_millis() as i64)
        .context("system clock is past year 9999")?;
    let layers = Layers {
        base: &conn,
        delta: delta.as_ref(),
    };
    let page = search::search_layers(layers, &request, now, &search::NoPrefetch)?;
    let body = serde_json::to_string_pretty(&page.to_json(request.format()))?;
    match writeln!(std::io::stdout().lock(), "{body}") {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing results"),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};
    use crate::publish::objects::TargetSpec;

    #[test]
    fn admin_addresses_take_names_and_off() {
        let addr = |text| super::parse_listen_addr(text).map(|addr| addr.0);
        assert_eq!(addr("off").unwrap(), None);
        assert_eq!(addr("127.0.0.1:7070").unwrap().unwrap().port(), 7070);
        assert!(addr("localhost:7071").unwrap().unwrap().ip().is_loopback());
        assert!(addr("7070").is_err());
    }

    #[test]
    fn scheduled_publishing_goes_where_publish_would() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        let cli = Cli::try_parse_from([
            "native-worker".as_ref(),
            "run".as_ref(),
            "--snapshot-dir".as_ref(),
            elsewhere.as_os_str(),
            "--keep".as_ref(),
            "2".as_ref(),
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("parsed as another command");
        };
        let target = args.target.open(&args.data_dir).unwrap();
        let TargetSpec::Dir { path } = target.spec() else {
            panic!("{target:?}");
        };
        assert_eq!(path, &elsewhere.canonicalize().unwrap());
        assert_eq!(args.target.keep, 2);
    }
}
