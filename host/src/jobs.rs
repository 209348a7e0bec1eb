//! The job server: supervised long-running tasks and named interval jobs,
//! cancelled together on shutdown.
//!
//! - A **task** ([`JobServer::spawn`]) is built by a factory, so it can be
//!   built again: when a run ends (returns, or its future panics) while the
//!   server is not shutting down, it is restarted after a backoff
//!   ([`RestartPolicy`]: 1 s doubling to 60 s, back to 1 s after a run that
//!   lasted 60 s). A task whose work is complete says so with
//!   [`TaskExit::Finished`] and is not restarted.
//! - A **job** ([`JobServer::every`]) runs on an interval; a run that fails
//!   or panics is logged and counted, and the next run happens as planned.
//!
//! Every task and job has a [`TaskState`] in [`TaskStates`], which `/health`
//! shows.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::FutureExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// When a task that ended is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// The wait before the first restart.
    pub initial: Duration,
    /// The longest wait; each restart doubles the wait up to this.
    pub max: Duration,
    /// A run that lasted this long was healthy: the next wait is `initial`.
    pub healthy_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            healthy_after: Duration::from_secs(60),
        }
    }
}

/// How one run of a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskExit {
    /// The task's work is complete (a finite source read to its end): it is
    /// not restarted.
    Finished,
    /// The task ended early (an error, or a return while it should run):
    /// it is restarted.
    Failed(String),
}

/// A task returning `()` was meant to run until shutdown: ending is a failure.
impl From<()> for TaskExit {
    fn from((): ()) -> Self {
        TaskExit::Failed("the task returned".into())
    }
}

/// Whether a state belongs to a supervised task or an interval job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// A long-running task ([`JobServer::spawn`]).
    Task,
    /// An interval job ([`JobServer::every`]).
    Job,
}

/// What a task or job is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskPhase {
    /// Running (a task), or its last run worked (a job).
    Running,
    /// A task that ended early, waiting out its backoff.
    Restarting,
    /// A job whose last run failed or panicked.
    Failing,
    /// A task that reported [`TaskExit::Finished`].
    Finished,
    /// Stopped by shutdown.
    Stopped,
}

/// The state of one task or job, as `/health` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskState {
    /// Task or job.
    pub kind: TaskKind,
    /// What it is doing.
    pub state: TaskPhase,
    /// How many times a task was started again after its first run.
    pub restarts: u64,
    /// How many runs ended early (a task) or failed (a job), panics included.
    pub failures: u64,
    /// Why the last failed run failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// While restarting: the wait before the next run, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
}

impl TaskState {
    fn new(kind: TaskKind) -> Self {
        TaskState {
            kind,
            state: TaskPhase::Running,
            restarts: 0,
            failures: 0,
            last_failure: None,
            retry_in_ms: None,
        }
    }

    /// Whether it is not doing its work now: a task waiting to restart or a
    /// job whose last run failed.
    pub fn degraded(&self) -> bool {
        matches!(self.state, TaskPhase::Restarting | TaskPhase::Failing)
    }
}

/// The states of a server's tasks and jobs, by name (cheap to clone; every
/// clone sees the same states).
#[derive(Debug, Clone, Default)]
pub struct TaskStates(Arc<Mutex<BTreeMap<String, TaskState>>>);

impl TaskStates {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, TaskState>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every state, by name.
    pub fn snapshot(&self) -> BTreeMap<String, TaskState> {
        self.lock().clone()
    }

    /// The state of `name`.
    pub fn get(&self, name: &str) -> Option<TaskState> {
        self.lock().get(name).cloned()
    }

    /// The names of the degraded tasks and jobs ([`TaskState::degraded`]).
    pub fn degraded(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, state)| state.degraded())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Add `name` (made unique with a `#n` suffix when taken); returns the
    /// name it is registered under.
    fn register(&self, name: String, kind: TaskKind) -> String {
        let mut states = self.lock();
        let mut unique = name.clone();
        let mut n = 2;
        while states.contains_key(&unique) {
            unique = format!("{name}#{n}");
            n += 1;
        }
        states.insert(unique.clone(), TaskState::new(kind));
        unique
    }

    fn update(&self, name: &str, change: impl FnOnce(&mut TaskState)) {
        if let Some(state) = self.lock().get_mut(name) {
            change(state);
        }
    }
}

/// Runs named tasks and jobs until shutdown.
#[derive(Clone, Default)]
pub struct JobServer {
    cancel: CancellationToken,
    tracker: TaskTracker,
    states: TaskStates,
    policy: RestartPolicy,
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

impl JobServer {
    /// A server with no jobs and the default [`RestartPolicy`].
    pub fn new() -> Self {
        JobServer::default()
    }

    /// A server with no jobs that restarts tasks by `policy`.
    pub fn with_policy(policy: RestartPolicy) -> Self {
        JobServer {
            policy,
            ..JobServer::default()
        }
    }

    /// The token every job watches; cancelled by [`shutdown`](Self::shutdown).
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// The states of the tasks and jobs (live: later changes show).
    pub fn states(&self) -> TaskStates {
        self.states.clone()
    }

    /// Run `job` every `interval` (the first run after one interval) until
    /// shutdown. A failed or panicking run is logged and counted in the
    /// job's state; the next one runs as planned.
    pub fn every<F, Fut, E>(&self, name: impl Into<String>, interval: Duration, job: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let name = self.states.register(name.into(), TaskKind::Job);
        let cancel = self.cancel.clone();
        let states = self.states.clone();
        let span = tracing::info_span!("job", job = %name);
        self.tracker.spawn(
            async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker.tick().await;
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = ticker.tick() => {}
                    }
                    // A panic while building the run or while running it
                    // ends only this run.
                    let run = match std::panic::catch_unwind(AssertUnwindSafe(&job)) {
                        Ok(future) => AssertUnwindSafe(future).catch_unwind().left_future(),
                        Err(payload) => futures_util::future::ready(Err(payload)).right_future(),
                    };
                    let run = tokio::select! {
                        _ = cancel.cancelled() => break,
                        run = run => run,
                    };
                    let failure = match run {
                        Ok(Ok(())) => None,
                        Ok(Err(error)) => {
                            tracing::warn!(job = %name, %error, "job failed");
                            Some(error.to_string())
                        }
                        Err(payload) => {
                            let panic = panic_message(payload.as_ref());
                            tracing::error!(job = %name, %panic, "job panicked");
                            Some(format!("panicked: {panic}"))
                        }
                    };
                    states.update(&name, |state| match failure {
                        None => state.state = TaskPhase::Running,
                        Some(failure) => {
                            state.state = TaskPhase::Failing;
                            state.failures += 1;
                            state.last_failure = Some(failure);
                        }
                    });
                }
                states.update(&name, |state| state.state = TaskPhase::Stopped);
                tracing::debug!(job = %name, "job stopped");
            }
            .instrument(span),
        );
    }

    /// Run a long-running task, built by `factory` with the token to watch,
    /// and supervise it: when a run ends while the server is not shutting
    /// down (its future returned, or panicked), log it and build and run it
    /// again after the [`RestartPolicy`]'s backoff. A run returning
    /// [`TaskExit::Finished`] ends the task for good; a run returning `()`
    /// counts as a failure (the task was meant to run until shutdown).
    pub fn spawn<F, Fut>(&self, name: impl Into<String>, factory: F)
    where
        F: Fn(CancellationToken) -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: Into<TaskExit> + Send + 'static,
    {
        let name = self.states.register(name.into(), TaskKind::Task);
        let span = tracing::info_span!("task", task = %name);
        let supervisor = Supervisor {
            name,
            cancel: self.cancel.clone(),
            states: self.states.clone(),
            policy: self.policy,
        };
        self.tracker
            .spawn(supervisor.run(factory, span.clone()).instrument(span));
    }

    /// Cancel every job and wait for them, at most `grace`. Returns whether
    /// all stopped in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// The restart loop of one task.
struct Supervisor {
    name: String,
    cancel: CancellationToken,
    states: TaskStates,
    policy: RestartPolicy,
}

impl Supervisor {
    async fn run<F, Fut>(self, factory: F, span: tracing::Span)
    where
        F: Fn(CancellationToken) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Into<TaskExit> + Send + 'static,
    {
        let name = self.name.as_str();
        let mut backoff = self.policy.initial;
        let mut first = true;
        loop {
            if self.cancel.is_cancelled() {
                break;
            }
            if !first {
                self.states.update(name, |state| {
                    state.state = TaskPhase::Running;
                    state.restarts += 1;
                    state.retry_in_ms = None;
                });
            }
            first = false;
            let started = tokio::time::Instant::now();
            // The run is a task of its own, so a panic ends only the run and
            // comes back as a `JoinError`.
            let token = self.cancel.clone();
            let built = std::panic::catch_unwind(AssertUnwindSafe(|| factory(token)));
            let exit = match built {
                Ok(future) => match tokio::spawn(future.instrument(span.clone())).await {
                    Ok(output) => output.into(),
                    Err(error) => match error.try_into_panic() {
                        Ok(payload) => TaskExit::Failed(format!(
                            "panicked: {}",
                            panic_message(payload.as_ref())
                        )),
                        Err(error) => TaskExit::Failed(error.to_string()),
                    },
                },
                Err(payload) => {
                    TaskExit::Failed(format!("panicked: {}", panic_message(payload.as_ref())))
                }
            };
            let failure = match exit {
                TaskExit::Finished => {
                    self.states
                        .update(name, |state| state.state = TaskPhase::Finished);
                    tracing::debug!(task = name, "task finished");
                    return;
                }
                TaskExit::Failed(failure) => failure,
            };
            if self.cancel.is_cancelled() {
                if failure.starts_with("panicked") {
                    tracing::warn!(task = name, error = %failure, "task failed while stopping");
                }
                break;
            }
            if started.elapsed() >= self.policy.healthy_after {
                backoff = self.policy.initial;
            }
            let wait = backoff;
            backoff = (backoff * 2).min(self.policy.max);
            let mut restarts = 0;
            self.states.update(name, |state| {
                state.state = TaskPhase::Restarting;
                state.failures += 1;
                state.last_failure = Some(failure.clone());
                state.retry_in_ms = Some(wait.as_millis() as u64);
                restarts = state.restarts;
            });
            tracing::error!(
                task = name,
                restarts,
                error = %failure,
                retry_in_ms = wait.as_millis() as u64,
                "task ended; restarting it"
            );
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        self.states.update(name, |state| {
            state.state = TaskPhase::Stopped;
            state.retry_in_ms = None;
        });
        tracing::debug!(task = name, "task stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A run that panics with `message`.
    async fn explode(message: &'static str) {
        panic!("{message}");
    }

    fn counter() -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let runs = Arc::new(AtomicUsize::new(0));
        (runs.clone(), runs)
    }

    #[tokio::test(start_paused = true)]
    async fn interval_jobs_run_and_stop_on_shutdown() {
        let jobs = JobServer::new();
        let (runs, counter) = counter();
        jobs.every("count", Duration::from_secs(1), move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<(), String>(())
            }
        });
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert!(jobs.shutdown(Duration::from_secs(1)).await);
        let after = runs.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(runs.load(Ordering::SeqCst), after, "no run after shutdown");
        let state = jobs.states().get("count").expect("state");
        assert_eq!(state.state, TaskPhase::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_interval_run_does_not_kill_the_job() {
        let jobs = JobServer::new();
        let (runs, counter) = counter();
        jobs.every("flaky", Duration::from_secs(1), move || {
            let run = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                match run {
                    2 => panic!("run two explodes"),
                    3 => Err("run three fails".to_owned()),
                    _ => Ok(()),
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let state = jobs.states().get("flaky").expect("state");
        assert_eq!(state.state, TaskPhase::Failing);
        assert_eq!(state.failures, 1);
        assert_eq!(
            state.last_failure.as_deref(),
            Some("panicked: run two explodes")
        );
        assert_eq!(jobs.states().degraded(), vec!["flaky".to_owned()]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let state = jobs.states().get("flaky").expect("state");
        assert_eq!(state.failures, 2);
        assert_eq!(state.last_failure.as_deref(), Some("run three fails"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 4, "runs go on after a panic");
        let state = jobs.states().get("flaky").expect("state");
        assert_eq!(state.state, TaskPhase::Running, "a good run clears it");
        assert!(jobs.states().degraded().is_empty());
        assert!(jobs.shutdown(Duration::from_secs(1)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_with_growing_backoff() {
        let jobs = JobServer::new();
        let (runs, counter) = counter();
        jobs.spawn("boom", move |_cancel| {
            counter.fetch_add(1, Ordering::SeqCst);
            explode("kaboom")
        });
        // Runs at 0 s, then after 1 s, 2 s, 4 s: at 0, 1, 3 and 7 s.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let state = jobs.states().get("boom").expect("state");
        assert_eq!(state.kind, TaskKind::Task);
        assert_eq!(state.state, TaskPhase::Restarting);
        assert_eq!((state.restarts, state.failures), (0, 1));
        assert_eq!(state.last_failure.as_deref(), Some("panicked: kaboom"));
        assert_eq!(state.retry_in_ms, Some(1000));
        tokio::time::sleep(Duration::from_secs(3)).await; // 3.5 s
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let state = jobs.states().get("boom").expect("state");
        assert_eq!((state.restarts, state.failures), (2, 3));
        assert_eq!(state.retry_in_ms, Some(4000));
        tokio::time::sleep(Duration::from_secs(4)).await; // 7.5 s
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        assert_eq!(jobs.states().degraded(), vec!["boom".to_owned()]);
        assert!(jobs.shutdown(Duration::from_secs(1)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_returns_is_restarted_and_runs_again() {
        let jobs = JobServer::new();
        let (runs, counter) = counter();
        jobs.spawn("short", move |cancel: CancellationToken| {
            let run = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if run < 3 {
                    return; // ends early twice
                }
                cancel.cancelled().await;
            }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let state = jobs.states().get("short").expect("state");
        assert_eq!(state.state, TaskPhase::Running);
        assert_eq!((state.restarts, state.failures), (2, 2));
        assert_eq!(state.last_failure.as_deref(), Some("the task returned"));
        assert!(!state.degraded());
        assert!(jobs.shutdown(Duration::from_secs(1)).await);
        let state = jobs.states().get("short").expect("state");
        assert_eq!(state.state, TaskPhase::Stopped);
        assert_eq!(runs.load(Ordering::SeqCst), 3, "no restart on shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_task_is_not_restarted() {
        let jobs = JobServer::new();
        let (runs, counter) = counter();
        jobs.spawn("once", move |_cancel| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { TaskExit::Finished }
        });
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let state = jobs.states().get("once").expect("state");
        assert_eq!(state.state, TaskPhase::Finished);
        assert_eq!(state.restarts, 0);
        assert!(jobs.shutdown(Duration::from_secs(1)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_restarting() {
        let jobs = JobServer::new();
        let (runs, counter) = counter();
        jobs.spawn("boom", move |_cancel| {
            counter.fetch_add(1, Ordering::SeqCst);
            explode("kaboom")
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(jobs.shutdown(Duration::from_secs(1)).await);
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2, "no run after shutdown");
        let state = jobs.states().get("boom").expect("state");
        assert_eq!(state.state, TaskPhase::Stopped);
        assert_eq!(state.retry_in_ms, None);
        assert!(jobs.states().degraded().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_is_capped_and_resets_after_a_healthy_run() {
        let policy = RestartPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(4),
            healthy_after: Duration::from_secs(30),
        };
        let jobs = JobServer::with_policy(policy);
        let (runs, counter) = counter();
        jobs.spawn("worker", move |_cancel| {
            let run = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                // Runs 1-4 fail at once, run 5 works for a minute, then fails.
                if run == 5 {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            }
        });
        let waits = |jobs: &JobServer| jobs.states().get("worker").and_then(|s| s.retry_in_ms);
        // Failures at 0 (wait 1), 1 (wait 2), 3 (wait 4), 7 (wait 4, capped).
        tokio::time::sleep(Duration::from_millis(7500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        assert_eq!(waits(&jobs), Some(4000), "capped at max");
        // Run 5 starts at 11 s and fails at 71 s: the wait is back to 1 s.
        tokio::time::sleep(Duration::from_secs(64)).await; // 71.5 s
        assert_eq!(runs.load(Ordering::SeqCst), 5);
        assert_eq!(waits(&jobs), Some(1000), "reset after a healthy run");
        assert!(jobs.shutdown(Duration::from_secs(1)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn names_are_made_unique() {
        let jobs = JobServer::new();
        for _ in 0..2 {
            jobs.spawn("source", |cancel: CancellationToken| async move {
                cancel.cancelled().await;
            });
        }
        tokio::task::yield_now().await;
        let names: Vec<String> = jobs.states().snapshot().into_keys().collect();
        assert_eq!(names, vec!["source".to_owned(), "source#2".to_owned()]);
        assert!(jobs.shutdown(Duration::from_secs(1)).await);
    }
}
