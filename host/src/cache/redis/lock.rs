//! The writer lock (spec §5): one writer per Redis. `SET key token NX PX
//! ttl` takes it; a Lua compare-and-extend renews it every `ttl / 3` while
//! it still holds our token; a compare-and-delete releases it. The writer
//! writes only while [`WriterLock::is_held`]; each new acquisition bumps an
//! epoch, after which the writer re-reads its state from Redis (another
//! writer may have written meanwhile).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::config::LockConfig;
use super::error::RedisWriterError;
use super::status::{LockState, RedisWriterStatus};
use super::target::{Command, Target};

#[derive(Debug, Default)]
struct Held {
    /// We may write until then (a margin before Redis expires the key).
    until: Option<Instant>,
    epoch: u64,
}

/// The writer lock of one writer.
#[derive(Debug)]
pub(crate) struct WriterLock {
    key: String,
    token: String,
    ttl: Duration,
    held: Mutex<Held>,
    /// Serialises acquire / renew / release of this writer's tasks.
    op: tokio::sync::Mutex<()>,
    status: Arc<RedisWriterStatus>,
}

impl WriterLock {
    pub(crate) fn new(config: &LockConfig, status: Arc<RedisWriterStatus>) -> WriterLock {
        let token = format!(
            "emcachers-{}-{:032x}",
            std::process::id(),
            rand::random::<u128>()
        );
        WriterLock {
            key: config.key.clone(),
            token,
            ttl: config.ttl(),
            held: Mutex::new(Held::default()),
            op: tokio::sync::Mutex::new(()),
            status,
        }
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Our owner token.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// How often to renew, or retry taking, the lock.
    pub(crate) fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// Whether we hold the lock now.
    pub(crate) fn is_held(&self) -> bool {
        self.held()
            .until
            .is_some_and(|until| Instant::now() < until)
    }

    /// Bumped on every acquisition.
    pub(crate) fn epoch(&self) -> u64 {
        self.held().epoch
    }

    fn mark(&self, ours: bool, started: Instant) {
        let mut held = self.held();
        let was_held = held.until.is_some_and(|until| Instant::now() < until);
        if ours {
            // Redis set the expiry after `started`; keep a tenth as margin.
            held.until = Some(started + self.ttl - self.ttl / 10);
            if !was_held {
                held.epoch += 1;
                tracing::info!(key = %self.key, token = %self.token, epoch = held.epoch, "writer lock acquired");
            }
            self.status.set_lock(LockState::Held);
        } else {
            if was_held {
                tracing::warn!(key = %self.key, token = %self.token, "writer lock lost: another writer holds it; writing stops");
            }
            held.until = None;
            self.status.set_lock(LockState::Waiting);
        }
    }

    /// Renew the lock if we hold it, else try to take it. Returns whether
    /// we hold it afterwards.
    pub(crate) async fn tick(&self, target: &Target) -> Result<bool, RedisWriterError> {
        let _op = self.op.lock().await;
        let started = Instant::now();
        let renew = Command::LockRenew {
            key: self.key.clone(),
            token: self.token.clone(),
            ttl: self.ttl,
        };
        let result = if self.is_held() {
            target.run(&[renew], "renew writer lock").await
        } else {
            let acquire = Command::LockAcquire {
                key: self.key.clone(),
                token: self.token.clone(),
                ttl: self.ttl,
            };
            // SET NX fails on our own key too (a lock we took and then lost
            // track of): the compare-and-extend then says it is ours.
            target.run(&[acquire, renew], "acquire writer lock").await
        };
        match result {
            Ok(replies) => {
                let ours = replies.iter().any(|r| r.flag());
                self.mark(ours, started);
                Ok(ours)
            }
            Err(error) => {
                if !self.is_held() {
                    self.status.set_lock(LockState::Waiting);
                }
                Err(error)
            }
        }
    }

    /// Release the lock if it is ours (compare-and-delete).
    pub(crate) async fn release(&self, target: &Target) -> Result<bool, RedisWriterError> {
        let _op = self.op.lock().await;
        let replies = target
            .run(
                &[Command::LockRelease {
                    key: self.key.clone(),
                    token: self.token.clone(),
                }],
                "release writer lock",
            )
            .await?;
        let released = replies.iter().any(|r| r.flag());
        self.held().until = None;
        self.status.set_lock(LockState::Waiting);
        if released {
            tracing::info!(key = %self.key, token = %self.token, "writer lock released");
        }
        Ok(released)
    }
}
