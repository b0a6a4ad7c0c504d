//! Crash recovery: a child process runs many orchestrations and is killed with SIGKILL at
//! random points, again and again, then restarted to finish. Afterwards every orchestration has
//! completed, every step's result is the one its activity recorded last (a recorded result is
//! never recomputed), each step was applied exactly once, and re-executions stay bounded by
//! what the kills could have interrupted.
//!
//! The child is this test binary re-run with `FLOW_CRASH_CHILD` set (see `crash_child`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use pubsearch_native_worker::flow::{
    Engine, EngineOptions, Event, OrchestrationContext, OutsideClient, Registry, RetryPolicy,
    Status,
};
use rand::{Rng, SeedableRng};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

const INSTANCES: usize = 400;
const CHAIN: u64 = 4;
const FAN: u64 = 3;
const KILLS: usize = 10;
const ACTIVITY_SLOTS: usize = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Step {
    instance: String,
    step: u64,
    value: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Applied {
    value: u64,
    token: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Output {
    value: u64,
    tokens: Vec<(u64, String)>,
}

/// An interrupted attempt counts as a failed one (it might be what crashes the worker), and
/// every kill may land in the same activity: room for all of them, so the run tests recovery,
/// not where the kills happened to fall.
fn survives_every_kill() -> RetryPolicy {
    RetryPolicy {
        max_attempts: KILLS as u32 + 1,
        ..RetryPolicy::default()
    }
}

/// Every activity execution is appended to the ledger, durably, before it returns.
fn ledger(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS executions (
             id INTEGER PRIMARY KEY, instance TEXT, step INTEGER, token TEXT)",
    )
    .unwrap();
    conn
}

fn registry(ledger_path: PathBuf) -> Registry {
    let conn = std::sync::Arc::new(std::sync::Mutex::new(ledger(&ledger_path)));
    let mut registry = Registry::new();
    registry
        .activity("apply", move |_, step: Step| {
            let conn = std::sync::Arc::clone(&conn);
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let token = uuid::Uuid::new_v4().to_string();
                conn.lock()
                    .unwrap()
                    .execute(
                        "INSERT INTO executions (instance, step, token) VALUES (?1, ?2, ?3)",
                        params![step.instance, step.step as i64, token],
                    )
                    .map_err(|error| error.to_string())?;
                Ok(Applied {
                    value: step.value + 1,
                    token,
                })
            }
        })
        .orchestration("chain", 1, |ctx: OrchestrationContext, ()| async move {
            let instance = ctx.instance_id().to_string();
            let mut tokens = Vec::new();
            let mut value = 0;
            for step in 0..CHAIN {
                let applied: Applied = ctx
                    .activity_with_retry(
                        "apply",
                        &Step {
                            instance: instance.clone(),
                            step,
                            value,
                        },
                        survives_every_kill(),
                    )
                    .await?;
                value = applied.value;
                tokens.push((step, applied.token));
            }
            ctx.sleep(Duration::from_millis(5)).await?;
            let fanned = join_all((CHAIN..CHAIN + FAN).map(|step| {
                ctx.activity_with_retry::<_, Applied>(
                    "apply",
                    &Step {
                        instance: instance.clone(),
                        step,
                        value: 0,
                    },
                    survives_every_kill(),
                )
            }))
            .await;
            for (step, applied) in (CHAIN..).zip(fanned) {
                let applied = applied?;
                value += applied.value;
                tokens.push((step, applied.token));
            }
            Ok(Output { value, tokens })
        });
    registry
}

/// The runtime a child process runs its engine on: two workers, like the machine.
fn child_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The directory a child process works in, from `variable`; run without it (`--ignored` by
/// hand), the child fails rather than passing without doing anything.
fn child_dir(variable: &str, parent: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| {
        panic!("this is the child process of the test {parent}, which sets {variable}; run that test instead")
    })
}

/// The child process: start every instance (idempotently) and wait for all of them.
#[test]
#[ignore = "run by flow_crash_recovery as its child process"]
fn crash_child() {
    let dir = child_dir("FLOW_CRASH_CHILD", "flow_crash_recovery");
    let dir = PathBuf::from(dir);
    child_runtime().block_on(async {
        let options = EngineOptions {
            orchestration_slots: 2,
            activity_slots: ACTIVITY_SLOTS,
            ..EngineOptions::default()
        };
        let engine = Engine::start(
            dir.join("flow.db"),
            registry(dir.join("ledger.db")),
            options,
        )
        .await
        .unwrap();
        let client = engine.client();
        for i in 0..INSTANCES {
            client
                .start("chain", &format!("job-{i:03}"), &())
                .await
                .unwrap();
        }
        for i in 0..INSTANCES {
            let info = client
                .wait(&format!("job-{i:03}"), Duration::from_secs(60))
                .await
                .unwrap();
            assert_eq!(info.status, Status::Completed, "{info:?}");
        }
        engine.shutdown().await;
    });
}

fn child(dir: &Path) -> std::process::Child {
    rerun(dir, "crash_child", "FLOW_CRASH_CHILD")
}

/// This test binary again, running only the ignored test `name` with `env` naming `dir`.
fn rerun(dir: &Path, name: &str, env: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(env, dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

#[test]
fn flow_crash_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let seed: u64 = std::env::var("FLOW_CRASH_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("flow_crash_recovery seed {seed} (rerun with FLOW_CRASH_SEED={seed})");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut kills = 0;
    for _ in 0..KILLS {
        let mut process = child(dir.path());
        std::thread::sleep(Duration::from_millis(rng.random_range(20..200)));
        if process.try_wait().unwrap().is_some() {
            break;
        }
        process.kill().unwrap();
        process.wait().unwrap();
        kills += 1;
    }
    let started = Instant::now();
    let status = child(dir.path()).wait().unwrap();
    assert!(status.success(), "the final run failed: {status}");
    eprintln!(
        "{kills} kills; the final run finished in {:?}",
        started.elapsed()
    );

    let flow = OutsideClient::new(&dir.path().join("flow.db"));
    let executions = executions(&ledger(&dir.path().join("ledger.db")));
    let mut reexecuted = 0;
    for i in 0..INSTANCES {
        let id = format!("job-{i:03}");
        let (info, history) = flow.history(&id).unwrap().expect("instance exists");
        assert_eq!(info.status, Status::Completed, "{info:?}");
        let output: Output = serde_json::from_str(info.output.as_deref().unwrap()).unwrap();
        // Each chained step added exactly one; each fanned step contributed exactly one.
        assert_eq!(output.value, CHAIN + FAN, "{id}: {output:?}");
        assert_eq!(output.tokens.len() as u64, CHAIN + FAN);
        for (step, token) in &output.tokens {
            let ran = &executions[&(id.clone(), *step)];
            assert_eq!(
                ran.last(),
                Some(token),
                "{id} step {step}: the result used is not the last one recorded ({ran:?})"
            );
            reexecuted += ran.len() - 1;
        }
        // One scheduling and one answer per step: nothing was applied twice.
        let mut answered = std::collections::HashSet::new();
        for event in &history {
            if let Event::ActivityCompleted { seq, .. } = event {
                assert!(answered.insert(*seq), "{id}: step {seq} answered twice");
            }
        }
        assert_eq!(answered.len() as u64, CHAIN + FAN);
    }
    // The engine's private queue table, read as any SQLite tool would.
    let leftover: i64 = Connection::open(dir.path().join("flow.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM flow_work", [], |row| row.get(0))
        .unwrap();
    assert_eq!(leftover, 0, "work left behind after everything completed");
    // A kill can interrupt at most the activities running or awaiting their commit.
    let bound = kills * ACTIVITY_SLOTS * 4;
    eprintln!("{reexecuted} activity re-executions after {kills} kills (bound {bound})");
    assert!(reexecuted <= bound, "{reexecuted} re-executions > {bound}");
}

fn executions(conn: &Connection) -> HashMap<(String, u64), Vec<String>> {
    let mut statement = conn
        .prepare("SELECT instance, step, token FROM executions ORDER BY id")
        .unwrap();
    let mut map: HashMap<(String, u64), Vec<String>> = HashMap::new();
    let rows = statement
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)? as u64,
                row.get::<_, String>(2)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (instance, step, token) = row.unwrap();
        map.entry((instance, step)).or_default().push(token);
    }
    map
}

/// The poison child: an activity that kills the whole process every time it runs.
#[test]
#[ignore = "run by an_activity_that_crashes_the_worker_fails_after_its_attempts as its child process"]
fn poison_child() {
    let dir = child_dir(
        "FLOW_POISON_CHILD",
        "an_activity_that_crashes_the_worker_fails_after_its_attempts",
    );
    child_runtime().block_on(async {
        let mut registry = Registry::new();
        registry
            .activity("crash", |_, ()| async move {
                std::process::abort();
                #[allow(unreachable_code)]
                Ok(())
            })
            .orchestration("poisoned", 1, |ctx: OrchestrationContext, ()| async move {
                let policy = RetryPolicy::fixed(3, Duration::from_millis(10));
                ctx.activity_with_retry::<_, ()>("crash", &(), policy).await
            });
        let engine = Engine::start(
            PathBuf::from(&dir).join("flow.db"),
            registry,
            EngineOptions::default(),
        )
        .await
        .unwrap();
        let client = engine.client();
        client.start("poisoned", "poison", &()).await.unwrap();
        client
            .wait("poison", Duration::from_secs(30))
            .await
            .unwrap();
        engine.shutdown().await;
    });
}

#[test]
fn an_activity_that_crashes_the_worker_fails_after_its_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let mut crashes = 0;
    let mut finished = false;
    for _ in 0..6 {
        let status = rerun(dir.path(), "poison_child", "FLOW_POISON_CHILD")
            .wait()
            .unwrap();
        if status.success() {
            finished = true;
            break;
        }
        crashes += 1;
    }
    assert!(finished, "the worker kept crashing on the same activity");
    // Each allowed attempt, plus at most one crash before the first attempt's mark was durable.
    assert!((3..=4).contains(&crashes), "{crashes} crashes");
    let flow = OutsideClient::new(&dir.path().join("flow.db"));
    let info = flow.status("poison").unwrap().unwrap();
    assert_eq!(info.status, Status::Failed);
    let error = info.error.unwrap();
    assert!(
        error.contains("failed after 3 attempt(s)") && error.contains("interrupted"),
        "{error}"
    );
}

/// The repeatable child: an activity safe to repeat that kills the process on its first
/// `FLOW_REPEATABLE_CRASHES` runs (counted in a file), then succeeds; one attempt allowed.
#[test]
#[ignore = "run by repeatable_activities_survive_interruptions_within_their_bound as its child process"]
fn repeatable_child() {
    let dir = PathBuf::from(child_dir(
        "FLOW_REPEATABLE_CHILD",
        "repeatable_activities_survive_interruptions_within_their_bound",
    ));
    let crashes: usize = std::env::var("FLOW_REPEATABLE_CRASHES")
        .unwrap()
        .parse()
        .unwrap();
    child_runtime().block_on(async {
        let runs = dir.join("runs");
        let mut registry = Registry::new();
        registry
            .repeatable_activity("rebuild", move |_, ()| {
                let runs = runs.clone();
                async move {
                    let before = std::fs::read_to_string(&runs).unwrap_or_default().len();
                    std::fs::write(&runs, "x".repeat(before + 1)).unwrap();
                    if before < crashes {
                        std::process::abort();
                    }
                    Ok(before)
                }
            })
            .orchestration("rebuilds", 1, |ctx: OrchestrationContext, ()| async move {
                let once = RetryPolicy::fixed(1, Duration::from_millis(10));
                ctx.activity_with_retry::<_, usize>("rebuild", &(), once)
                    .await
            });
        let engine = Engine::start(dir.join("flow.db"), registry, EngineOptions::default())
            .await
            .unwrap();
        let client = engine.client();
        client.start("rebuilds", "rebuild", &()).await.unwrap();
        client
            .wait("rebuild", Duration::from_secs(30))
            .await
            .unwrap();
        engine.shutdown().await;
    });
}

/// Runs the repeatable child until it exits cleanly; returns how many times it crashed.
fn run_repeatable(dir: &Path, crashes: usize) -> usize {
    for crashed in 0..10 {
        let status = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "repeatable_child",
                "--ignored",
                "--test-threads=1",
            ])
            .env("FLOW_REPEATABLE_CHILD", dir)
            .env("FLOW_REPEATABLE_CRASHES", crashes.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .unwrap();
        if status.success() {
            return crashed;
        }
    }
    panic!("the worker kept crashing");
}

#[test]
fn repeatable_activities_survive_interruptions_within_their_bound() {
    use pubsearch_native_worker::flow::FREE_INTERRUPTIONS;
    // Interrupted twice, then done: with one attempt allowed, it still completes.
    let dir = tempfile::tempdir().unwrap();
    let crashes = run_repeatable(dir.path(), 2);
    assert_eq!(crashes, 2);
    let info = OutsideClient::new(&dir.path().join("flow.db"))
        .status("rebuild")
        .unwrap()
        .unwrap();
    assert_eq!(info.status, Status::Completed, "{:?}", info.error);
    assert_eq!(info.output.as_deref(), Some("2"));

    // Killing the worker every time: it fails once the free interruptions are spent.
    let dir = tempfile::tempdir().unwrap();
    let crashes = run_repeatable(dir.path(), usize::MAX);
    assert!(
        (FREE_INTERRUPTIONS as usize + 1..=FREE_INTERRUPTIONS as usize + 2).contains(&crashes),
        "{crashes} crashes"
    );
    let info = OutsideClient::new(&dir.path().join("flow.db"))
        .status("rebuild")
        .unwrap()
        .unwrap();
    assert_eq!(info.status, Status::Failed);
    assert!(info.error.unwrap().contains("interrupted"));
}
