//! Named, versioned orchestrations and named activities.
//!
//! An instance remembers the version it started with and is always replayed with that code, so
//! a changed orchestration ships as a new version while old instances finish on the old one.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::OrchestrationContext;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
pub(crate) type OrchestrationFn =
    Arc<dyn Fn(OrchestrationContext, String) -> BoxFuture<Result<String, String>> + Send + Sync>;
pub(crate) type ActivityFn =
    Arc<dyn Fn(ActivityContext, String) -> BoxFuture<Result<String, String>> + Send + Sync>;

/// What an activity knows about the call it serves.
#[derive(Debug, Clone)]
pub struct ActivityContext {
    pub instance: String,
    pub name: String,
    /// 1 on the first attempt; activities run at least once, so side effects should be
    /// idempotent or keyed by `(instance, seq)`.
    pub attempt: u32,
    pub seq: u64,
}

/// The code the engine can run. Build it once, hand it to [`super::Engine::start`].
#[derive(Clone, Default)]
pub struct Registry {
    orchestrations: HashMap<String, BTreeMap<u32, OrchestrationFn>>,
    activities: HashMap<String, ActivityFn>,
    repeatable: std::collections::HashSet<String>,
}

/// How many times an attempt of a repeatable activity may be interrupted (the worker stopping
/// while it runs) and run again without counting as an attempt. Bounded, so an activity that
/// crashes the worker itself still fails in the end.
pub const FREE_INTERRUPTIONS: u32 = 3;

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers version `version` of orchestration `name`. New instances start on the highest
    /// registered version.
    pub fn orchestration<I, O, F, Fut>(&mut self, name: &str, version: u32, run: F) -> &mut Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + 'static,
        F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, String>> + Send + 'static,
    {
        let erased: OrchestrationFn = erase(run);
        self.orchestrations
            .entry(name.to_string())
            .or_default()
            .insert(version, erased);
        self
    }

    /// Registers activity `name`.
    pub fn activity<I, O, F, Fut>(&mut self, name: &str, run: F) -> &mut Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + 'static,
        F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, String>> + Send + 'static,
    {
        let erased: ActivityFn = erase(run);
        self.activities.insert(name.to_string(), erased);
        self
    }

    /// Registers activity `name` as safe to repeat: running it twice has the effect of running
    /// it once (it writes only files it names itself, or idempotent upserts). An attempt
    /// interrupted by the worker stopping is run again without counting as an attempt, up to
    /// [`FREE_INTERRUPTIONS`] times; errors it returns count as usual. Activities registered
    /// with [`Registry::activity`] count every interruption, so one that kills the worker
    /// cannot run forever.
    pub fn repeatable_activity<I, O, F, Fut>(&mut self, name: &str, run: F) -> &mut Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + 'static,
        F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, String>> + Send + 'static,
    {
        self.repeatable.insert(name.to_string());
        self.activity(name, run)
    }

    /// Whether an interrupted attempt of `name` is run again without counting.
    pub(crate) fn is_repeatable(&self, name: &str) -> bool {
        self.repeatable.contains(name)
    }

    pub(crate) fn latest_version(&self, name: &str) -> Option<u32> {
        self.orchestrations
            .get(name)?
            .last_key_value()
            .map(|(version, _)| *version)
    }

    pub(crate) fn orchestration_fn(&self, name: &str, version: u32) -> Option<&OrchestrationFn> {
        self.orchestrations.get(name)?.get(&version)
    }

    pub(crate) fn activity_fn(&self, name: &str) -> Option<&ActivityFn> {
        self.activities.get(name)
    }
}

/// Wraps typed code as JSON in, JSON out.
#[allow(clippy::type_complexity)]
fn erase<C, I, O, F, Fut>(
    run: F,
) -> Arc<dyn Fn(C, String) -> BoxFuture<Result<String, String>> + Send + Sync>
where
    C: Send + 'static,
    I: DeserializeOwned + Send + 'static,
    O: Serialize + 'static,
    F: Fn(C, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, String>> + Send + 'static,
{
    let run = Arc::new(run);
    Arc::new(move |ctx, input: String| {
        let run = Arc::clone(&run);
        Box::pin(async move {
            let input: I = decode(&input)?;
            let output = run(ctx, input).await?;
            encode(&output)
        })
    })
}

fn decode<I: DeserializeOwned>(json: &str) -> Result<I, String> {
    serde_json::from_str(json).map_err(|error| format!("input does not decode: {error}"))
}

fn encode<O: Serialize>(output: &O) -> Result<String, String> {
    serde_json::to_string(output).map_err(|error| format!("output does not encode: {error}"))
}
