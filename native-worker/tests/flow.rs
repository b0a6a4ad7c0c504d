//! The flow engine's semantics, on real WAL SQLite files: activities and retries, timers across
//! restarts, events before and after the wait, children, races, continue-as-new, cancellation,
//! nondeterminism detection, and the client API.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::{Either, join_all, select};
use pubsearch_native_worker::flow::{
    Engine, EngineOptions, Event, FlowError, OrchestrationContext, OutsideClient, Registry,
    RetryPolicy, Status,
};

const WAIT: Duration = Duration::from_secs(20);

fn options() -> EngineOptions {
    EngineOptions {
        inbox_poll: Duration::from_millis(50),
        ..EngineOptions::default()
    }
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry
        .activity("double", |_, n: u64| async move { Ok(n * 2) })
        .activity("sleep_ms", |_, ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        })
        .orchestration(
            "fan_out",
            1,
            |ctx: OrchestrationContext, n: u64| async move {
                let doubled = join_all((0..n).map(|i| ctx.activity::<_, u64>("double", &i))).await;
                let mut sum = 0;
                for value in doubled {
                    sum += value?;
                }
                let last: u64 = ctx.activity("double", &sum).await?;
                Ok(last)
            },
        );
    registry
}

async fn engine(dir: &tempfile::TempDir, registry: Registry) -> Engine {
    Engine::start(dir.path().join("flow.db"), registry, options())
        .await
        .expect("engine starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_then_sequential_step_completes_with_the_joined_result() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir, registry()).await;
    let client = engine.client();
    assert!(client.start("fan_out", "sum-10", &10u64).await.unwrap());
    let info = client.wait("sum-10", WAIT).await.unwrap();
    assert_eq!(info.status, Status::Completed, "{info:?}");
    // 2 × (0 + 2 + … + 18) = 180
    assert_eq!(info.output.as_deref(), Some("180"));
    let history = client.history("sum-10").unwrap();
    let scheduled = history
        .iter()
        .filter(|event| matches!(event, Event::ActivityScheduled { .. }))
        .count();
    let completed = history
        .iter()
        .filter(|event| matches!(event, Event::ActivityCompleted { .. }))
        .count();
    assert_eq!((scheduled, completed), (11, 11));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_is_idempotent_by_instance_id() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir, registry()).await;
    let client = engine.client();
    assert!(client.start("fan_out", "once", &3u64).await.unwrap());
    assert!(!client.start("fan_out", "once", &100u64).await.unwrap());
    let info = client.wait("once", WAIT).await.unwrap();
    assert_eq!(info.input, "3");
    assert_eq!(info.output.as_deref(), Some("12"));
    assert!(matches!(
        client.start("no_such_orchestration", "x", &()).await,
        Err(FlowError::NotRegistered(_))
    ));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_activity_is_retried_then_reported_after_bounded_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let mut registry = registry();
    let counted = Arc::clone(&calls);
    registry
        .activity("flaky", move |ctx, succeed_on: u32| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if ctx.attempt >= succeed_on {
                    Ok(ctx.attempt)
                } else {
                    Err(format!("attempt {} failed", ctx.attempt))
                }
            }
        })
        .orchestration(
            "retrying",
            1,
            |ctx: OrchestrationContext, succeed_on: u32| async move {
                let policy = RetryPolicy::fixed(3, Duration::from_millis(20));
                ctx.activity_with_retry::<_, u32>("flaky", &succeed_on, policy)
                    .await
            },
        );
    let engine = engine(&dir, registry).await;
    let client = engine.client();
    client.start("retrying", "recovers", &3u32).await.unwrap();
    client.start("retrying", "poisoned", &10u32).await.unwrap();
    let recovers = client.wait("recovers", WAIT).await.unwrap();
    assert_eq!(recovers.status, Status::Completed);
    assert_eq!(recovers.output.as_deref(), Some("3"));
    let poisoned = client.wait("poisoned", WAIT).await.unwrap();
    assert_eq!(poisoned.status, Status::Failed);
    let error = poisoned.error.unwrap();
    assert!(error.contains("failed after 3 attempt(s)"), "{error}");
    assert!(error.contains("attempt 3 failed"), "{error}");
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_time_out_panics_fail_and_unknown_activities_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = registry();
    registry
        .activity("panics", |_, ()| async move {
            if true {
                panic!("boom in activity");
            }
            Ok(())
        })
        .orchestration("slow", 1, |ctx: OrchestrationContext, ()| async move {
            let policy = RetryPolicy::fixed(2, Duration::from_millis(10))
                .with_timeout(Duration::from_millis(50));
            ctx.activity_with_retry::<_, u64>("sleep_ms", &5_000u64, policy)
                .await
        })
        .orchestration("panicky", 1, |ctx: OrchestrationContext, ()| async move {
            ctx.activity_with_retry::<_, ()>("panics", &(), RetryPolicy::no_retry())
                .await
        })
        .orchestration("unknown", 1, |ctx: OrchestrationContext, ()| async move {
            ctx.activity::<_, ()>("does_not_exist", &()).await
        })
        .orchestration(
            "orchestration_panics",
            1,
            |_ctx: OrchestrationContext, ()| async move {
                if true {
                    panic!("boom in orchestration");
                }
                Ok(())
            },
        );
    let engine = engine(&dir, registry).await;
    let client = engine.client();
    let started = Instant::now();
    for name in ["slow", "panicky", "unknown", "orchestration_panics"] {
        client.start(name, name, &()).await.unwrap();
    }
    let error = |name: &str| {
        let client = client.clone();
        let name = name.to_string();
        async move {
            let info = client.wait(&name, WAIT).await.unwrap();
            assert_eq!(info.status, Status::Failed, "{info:?}");
            info.error.unwrap()
        }
    };
    let slow = error("slow").await;
    assert!(
        slow.contains("timed out after 50 ms") && slow.contains("2 attempt"),
        "{slow}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the timeout cut the 5 s attempts short"
    );
    let panicky = error("panicky").await;
    assert!(panicky.contains("panicked: boom in activity"), "{panicky}");
    let unknown = error("unknown").await;
    assert!(
        unknown.contains("`does_not_exist` is not registered"),
        "{unknown}"
    );
    let orchestration = error("orchestration_panics").await;
    assert!(
        orchestration.contains("orchestration panicked: boom in orchestration"),
        "{orchestration}"
    );
    engine.shutdown().await;
}

fn waiting_registry() -> Registry {
    let mut registry = registry();
    registry
        .orchestration("approval", 1, |ctx: OrchestrationContext, ()| async move {
            ctx.set_custom_status("waiting for approval");
            let first: String = ctx.wait_event("approve").await?;
            let second: String = ctx.wait_event("approve").await?;
            Ok(format!("{first}+{second}"))
        })
        .orchestration(
            "deadline",
            1,
            |ctx: OrchestrationContext, ms: u64| async move {
                let event = ctx.wait_event::<String>("go");
                let timer = ctx.sleep(Duration::from_millis(ms));
                Ok(match select(event, timer).await {
                    Either::Left((data, _)) => format!("event {}", data?),
                    Either::Right((fired, _)) => {
                        fired?;
                        "timed out".to_string()
                    }
                })
            },
        );
    registry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_raised_before_and_after_the_wait_are_both_delivered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir, waiting_registry()).await;
    let client = engine.client();
    client.start("approval", "a", &()).await.unwrap();
    // Raised right after the start commits: usually before the orchestration reaches its wait.
    client.raise_event("a", "approve", &"alice").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let info = client.status("a").unwrap().unwrap();
    assert_eq!(info.status, Status::Running);
    assert_eq!(info.custom_status.as_deref(), Some("waiting for approval"));
    client.raise_event("a", "approve", &"bob").await.unwrap();
    let info = client.wait("a", WAIT).await.unwrap();
    assert_eq!(info.output.as_deref(), Some("\"alice+bob\""));
    assert!(matches!(
        client.raise_event("nobody", "approve", &"x").await,
        Err(FlowError::NotFound(_))
    ));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_race_between_an_event_and_a_timer_goes_to_whichever_came_first() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir, waiting_registry()).await;
    let client = engine.client();
    client.start("deadline", "fast", &10_000u64).await.unwrap();
    client.start("deadline", "slow", &50u64).await.unwrap();
    client.raise_event("fast", "go", &"now").await.unwrap();
    let fast = client.wait("fast", WAIT).await.unwrap();
    assert_eq!(fast.output.as_deref(), Some("\"event now\""));
    let slow = client.wait("slow", WAIT).await.unwrap();
    assert_eq!(slow.output.as_deref(), Some("\"timed out\""));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_after_a_restart_and_recorded_values_survive_replay() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = registry();
    registry.orchestration("nap", 1, |ctx: OrchestrationContext, ms: u64| async move {
        let id = ctx.new_uuid();
        let before = ctx.now_ms();
        ctx.sleep(Duration::from_millis(ms)).await?;
        let after = ctx.now_ms();
        Ok((id, before, after))
    });
    let engine = Engine::start(dir.path().join("flow.db"), registry.clone(), options())
        .await
        .unwrap();
    let client = engine.client();
    let started = Instant::now();
    client.start("nap", "nap", &800u64).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let history_before = client.history("nap").unwrap();
    engine.shutdown().await;

    // A new engine on the same file: the timer is recovered from the work table.
    let engine = Engine::start(dir.path().join("flow.db"), registry, options())
        .await
        .unwrap();
    let client = engine.client();
    let info = client.wait("nap", WAIT).await.unwrap();
    assert_eq!(info.status, Status::Completed, "{info:?}");
    assert!(started.elapsed() >= Duration::from_millis(800));
    let (id, before, after): (String, i64, i64) =
        serde_json::from_str(info.output.as_deref().unwrap()).unwrap();
    // The uuid and first `now` were recorded before the restart and replayed, not retaken.
    let recorded: Vec<String> = history_before
        .iter()
        .filter_map(|event| match event {
            Event::SystemValue { value, .. } => Some(value.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(recorded, vec![id, before.to_string()]);
    assert!(after - before >= 800, "{before} → {after}");
    assert!(engine.stats().replays.load(Ordering::Relaxed) >= 1);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_orchestration_is_reported_as_nondeterminism_on_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flow.db");
    let mut v1 = registry();
    v1.orchestration("pipeline", 1, |ctx: OrchestrationContext, ()| async move {
        let doubled: u64 = ctx.activity("double", &1u64).await?;
        let go: String = ctx.wait_event("go").await?;
        Ok(format!("{doubled} {go}"))
    });
    let engine = Engine::start(&path, v1, options()).await.unwrap();
    let client = engine.client();
    client.start("pipeline", "changed", &()).await.unwrap();
    client.start("pipeline", "versioned", &()).await.unwrap();
    wait_for_history(&client, "changed", 3).await;
    wait_for_history(&client, "versioned", 3).await;
    engine.shutdown().await;

    // The same name and version now take a different first step: a deployment mistake.
    let mut changed = registry();
    changed
        .orchestration("pipeline", 1, |ctx: OrchestrationContext, ()| async move {
            let _: u64 = ctx.activity("sleep_ms", &1u64).await?;
            let go: String = ctx.wait_event("go").await?;
            Ok(go)
        })
        .orchestration("pipeline", 2, |ctx: OrchestrationContext, ()| async move {
            let go: String = ctx.wait_event("go").await?;
            Ok(format!("v2 {go}"))
        });
    let engine = Engine::start(&path, changed, options()).await.unwrap();
    let client = engine.client();
    client.raise_event("changed", "go", &"now").await.unwrap();
    let info = client.wait("changed", WAIT).await.unwrap();
    assert_eq!(info.status, Status::Failed);
    let error = info.error.unwrap();
    assert!(
        error.contains("nondeterminism")
            && error.contains("activity `double` at step 0")
            && error.contains("activity `sleep_ms`"),
        "{error}"
    );
    // New instances start on version 2; the old version keeps replaying its own code.
    client.start("pipeline", "fresh", &()).await.unwrap();
    client.raise_event("fresh", "go", &"go").await.unwrap();
    let fresh = client.wait("fresh", WAIT).await.unwrap();
    assert_eq!(fresh.output.as_deref(), Some("\"v2 go\""));
    assert_eq!(fresh.version, 2);
    engine.shutdown().await;
}

async fn wait_for_history(
    client: &pubsearch_native_worker::flow::FlowClient,
    id: &str,
    len: usize,
) {
    let deadline = Instant::now() + WAIT;
    while client.history(id).unwrap().len() < len {
        assert!(
            Instant::now() < deadline,
            "history of {id} never reached {len}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_report_to_their_parent_and_cancellation_reaches_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = waiting_registry();
    registry
        .orchestration("parent", 1, |ctx: OrchestrationContext, n: u64| async move {
            let children = join_all((1..=n).map(|i| ctx.child::<_, u64>("fan_out", &i))).await;
            let mut total = 0;
            for child in children {
                total += child?;
            }
            Ok(total)
        })
        .orchestration("waits_on_child", 1, |ctx: OrchestrationContext, ()| async move {
            ctx.child::<_, String>("approval", &()).await
        });
    let engine = engine(&dir, registry).await;
    let client = engine.client();
    client.start("parent", "parent", &4u64).await.unwrap();
    let info = client.wait("parent", WAIT).await.unwrap();
    // fan_out(i) = 2·Σ2k for k<i = 2i(i−1): 0 + 4 + 12 + 24
    assert_eq!(info.output.as_deref(), Some("40"), "{info:?}");
    let child = client.status("parent:0:0").unwrap().unwrap();
    assert_eq!(child.status, Status::Completed);
    assert_eq!(child.parent.unwrap().instance, "parent");

    client.start("waits_on_child", "stuck", &()).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while client.status("stuck:0:0").unwrap().is_none() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.cancel("stuck", "operator said so").await.unwrap();
    let parent = client.wait("stuck", WAIT).await.unwrap();
    assert_eq!(parent.status, Status::Cancelled);
    assert_eq!(parent.error.as_deref(), Some("operator said so"));
    let child = client.wait("stuck:0:0", WAIT).await.unwrap();
    assert_eq!(child.status, Status::Cancelled);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_as_new_keeps_history_bounded_and_carries_unread_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = registry();
    registry.orchestration(
        "counter",
        1,
        |ctx: OrchestrationContext, n: u64| async move {
            if n == 25 {
                let tail: String = ctx.wait_event("finish").await?;
                return Ok(format!("{n} {tail}"));
            }
            let next: u64 = ctx.activity("double", &n).await?;
            ctx.continue_as_new(&(next / 2 + 1)).await
        },
    );
    let engine = engine(&dir, registry).await;
    let client = engine.client();
    client.start("counter", "loop", &0u64).await.unwrap();
    client.raise_event("loop", "finish", &"done").await.unwrap();
    let info = client.wait("loop", WAIT).await.unwrap();
    assert_eq!(info.output.as_deref(), Some("\"25 done\""), "{info:?}");
    assert_eq!(info.execution, 25);
    let history = client.history("loop").unwrap();
    assert!(history.len() <= 4, "{history:?}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_paginates_purge_removes_finished_and_a_second_engine_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir, waiting_registry()).await;
    let client = engine.client();
    for i in 0..7 {
        client
            .start("fan_out", &format!("job-{i}"), &2u64)
            .await
            .unwrap();
    }
    client.start("approval", "pending", &()).await.unwrap();
    for i in 0..7 {
        client.wait(&format!("job-{i}"), WAIT).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = client.list(None, after.as_deref(), 3).unwrap();
        assert!(page.instances.len() <= 3);
        seen.extend(page.instances.iter().map(|info| info.id.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 8);
    assert!(seen.windows(2).all(|pair| pair[0] < pair[1]));
    let running = client.list(Some(Status::Running), None, 100).unwrap();
    assert_eq!(running.instances.len(), 1);

    match Engine::start(dir.path().join("flow.db"), registry(), options()).await {
        Err(error @ FlowError::Locked { .. }) => {
            let message = error.to_string();
            let holder = format!("pid {} (", std::process::id());
            assert!(message.contains(&holder), "names the holder: {message}");
        }
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("a second engine started on the same database"),
    }

    assert_eq!(client.purge(Duration::ZERO).unwrap(), 7);
    assert!(client.status("job-0").unwrap().is_none());
    assert!(client.status("pending").unwrap().is_some());
    engine.shutdown().await;
}

/// What `flow cancel` leaves in the inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_cancels_through_the_inbox() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flow.db");
    let engine = Engine::start(&path, waiting_registry(), options())
        .await
        .unwrap();
    let client = engine.client();
    client.start("approval", "remote", &()).await.unwrap();
    OutsideClient::new(&path)
        .cancel("remote", "cancelled from the CLI".into())
        .unwrap();
    let info = client.wait("remote", WAIT).await.unwrap();
    assert_eq!(info.status, Status::Cancelled);
    assert_eq!(info.error.as_deref(), Some("cancelled from the CLI"));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_ends_when_the_engine_stops() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = registry();
    registry.orchestration("forever", 1, |ctx: OrchestrationContext, ()| async move {
        ctx.wait_event::<()>("never").await
    });
    let engine = engine(&dir, registry).await;
    let client = engine.client();
    client.start("forever", "forever", &()).await.unwrap();
    let waiting = tokio::spawn(async move { client.wait("forever", WAIT).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    engine.shutdown().await;

    let ended = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the wait outlived the engine that would finish the instance")
        .unwrap();
    assert!(matches!(ended, Err(FlowError::Stopped)), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_record_that_no_longer_decodes_ends_its_instance_not_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flow.db");
    let engine = Engine::start(&path, waiting_registry(), options())
        .await
        .unwrap();
    let client = engine.client();
    client.start("approval", "bad-history", &()).await.unwrap();
    client.start("approval", "healthy", &()).await.unwrap();
    client
        .start("deadline", "bad-timer", &60_000u64)
        .await
        .unwrap();
    wait_for_history(&client, "bad-history", 1).await;
    wait_for_history(&client, "healthy", 1).await;
    wait_for_history(&client, "bad-timer", 2).await;
    engine.shutdown().await;

    // As a newer build, or a damaged disk, might leave them.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "UPDATE flow_history SET event = '{\"FromTheFuture\":{}}' WHERE instance = 'bad-history';
         UPDATE flow_work SET body = 'not json' WHERE instance = 'bad-timer';",
    )
    .unwrap();

    let engine = Engine::start(&path, waiting_registry(), options())
        .await
        .unwrap();
    let client = engine.client();
    let timer = client.wait("bad-timer", WAIT).await.unwrap();
    assert_eq!(timer.status, Status::Cancelled, "{timer:?}");
    assert!(timer.error.unwrap().contains("work item no longer decodes"));

    client
        .raise_event("bad-history", "approve", &"x")
        .await
        .unwrap();
    let history = client.wait("bad-history", WAIT).await.unwrap();
    assert_eq!(history.status, Status::Failed, "{history:?}");
    assert!(history.error.unwrap().contains("history no longer decodes"));

    // A message another process left that does not decode cancels its instance; the messages
    // after it still arrive.
    conn.execute(
        "INSERT INTO flow_inbox (instance, body) VALUES ('bad-message', 'not json')",
        [],
    )
    .unwrap();
    OutsideClient::new(&path)
        .cancel("healthy", "cancelled from the CLI".into())
        .unwrap();
    let healthy = client.wait("healthy", WAIT).await.unwrap();
    assert_eq!(healthy.error.as_deref(), Some("cancelled from the CLI"));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_running_attempt_finish_and_record_its_result() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flow.db");
    let calls = Arc::new(AtomicU32::new(0));
    let registry = || {
        let calls = Arc::clone(&calls);
        let mut registry = registry();
        registry
            .activity("slow", move |_, ms: u64| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(ms)
                }
            })
            .orchestration(
                "one_slow_step",
                1,
                |ctx: OrchestrationContext, ms: u64| async move {
                    let slept: u64 = ctx.activity("slow", &ms).await?;
                    Ok(slept)
                },
            );
        registry
    };
    let engine = Engine::start(&path, registry(), options()).await.unwrap();
    let client = engine.client();
    client
        .start("one_slow_step", "slow", &400u64)
        .await
        .unwrap();
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    engine.shutdown().await;

    // The next engine (another process taking over) finds the result, not the work.
    let engine = Engine::start(&path, registry(), options()).await.unwrap();
    let info = engine.client().wait("slow", WAIT).await.unwrap();
    assert_eq!(info.output.as_deref(), Some("400"), "{info:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the attempt ran once");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_leave_nothing_behind_however_they_end() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir, waiting_registry()).await;
    let client = engine.client();
    client.start("approval", "pending", &()).await.unwrap();
    // Past two of the wait's one-second polls, on an instance that does not finish.
    let waited = client.wait("pending", Duration::from_millis(2_500)).await;
    assert!(
        matches!(waited, Err(FlowError::Timeout { .. })),
        "{waited:?}"
    );
    assert_eq!(client.waiting(), 0, "a timed-out wait left watches behind");

    let finishing = tokio::spawn({
        let client = client.clone();
        async move { client.wait("pending", WAIT).await }
    });
    assert!(support_wait(|| client.waiting() == 1).await);
    for approval in ["a", "b"] {
        client
            .raise_event("pending", "approve", &approval)
            .await
            .unwrap();
    }
    assert_eq!(finishing.await.unwrap().unwrap().status, Status::Completed);
    assert_eq!(client.waiting(), 0, "a finished wait left watches behind");
    engine.shutdown().await;
}

/// Polls `condition` for up to 10 s.
async fn support_wait(condition: impl Fn() -> bool) -> bool {
    for _ in 0..1_000 {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_purges_finished_instances_past_their_retention_and_keeps_the_rest() {
    assert_eq!(
        EngineOptions::default().retention,
        Some(Duration::from_secs(7 * 24 * 3600)),
        "a week by default"
    );
    let dir = tempfile::tempdir().unwrap();
    let options = EngineOptions {
        retention: Some(Duration::from_millis(300)),
        retention_sweep: Duration::from_millis(100),
        ..options()
    };
    let engine = Engine::start(dir.path().join("flow.db"), waiting_registry(), options)
        .await
        .unwrap();
    let client = engine.client();
    client.start("fan_out", "finished", &3u64).await.unwrap();
    client.start("approval", "running", &()).await.unwrap();
    assert_eq!(
        client.wait("finished", WAIT).await.unwrap().status,
        Status::Completed
    );
    assert!(
        support_wait(|| client.status("finished").unwrap().is_none()).await,
        "the finished instance was never purged"
    );
    let running = client.status("running").unwrap().expect("kept");
    assert_eq!(running.status, Status::Running);
    engine.shutdown().await;
}
