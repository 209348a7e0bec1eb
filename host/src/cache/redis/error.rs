//! Errors of the Redis cache writer.

use std::time::Duration;

use crate::oplog::StoreError;

/// Why a step of the Redis writer, or opening it, failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisWriterError {
    /// Redis answered with an error, or could not be reached.
    #[error("redis {op}: {source}")]
    Redis {
        /// What the writer was doing.
        op: &'static str,
        /// The client's error.
        source: redis::RedisError,
    },
    /// Redis did not answer in time.
    #[error("redis {op}: no answer within {} ms", after.as_millis())]
    Timeout {
        /// What the writer was doing.
        op: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// Redis answered something the writer cannot read.
    #[error("redis {op}: unexpected reply: {reason}")]
    Reply {
        /// What the writer was doing.
        op: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// The oplog store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The settings are unusable.
    #[error("redis writer configuration: {0}")]
    Config(String),
    /// A blocking task (a plugin call) failed.
    #[error("redis writer worker failed: {0}")]
    Worker(String),
    /// The writer lock is held by another owner (or was lost): nothing is
    /// written until it is re-acquired.
    #[error("the writer lock {key} is not held by this writer")]
    LockNotHeld {
        /// The lock key.
        key: String,
    },
    /// The circuit breaker is open: Redis is not called until it half-opens.
    #[error("the redis circuit breaker is open; retry in {} ms", retry_in.as_millis())]
    BreakerOpen {
        /// How long until a trial call.
        retry_in: Duration,
    },
}

impl RedisWriterError {
    /// Whether this is a failure of Redis itself (it counts for the circuit
    /// breaker), rather than of the oplog store or a worker.
    pub fn is_redis(&self) -> bool {
        matches!(
            self,
            RedisWriterError::Redis { .. }
                | RedisWriterError::Timeout { .. }
                | RedisWriterError::Reply { .. }
        )
    }
}
