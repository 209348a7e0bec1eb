//! What an error of the change stream means for the source.
//!
//! The driver already resumes once by itself on network errors, on
//! `CursorNotFound` (43) and on errors labelled
//! `ResumableChangeStreamError`; what reaches the source after that is
//! classified here:
//!
//! - [`ErrorClass::HistoryLost`]: `ChangeStreamHistoryLost` (286),
//!   `InvalidResumeToken` (260), `ChangeStreamFatalError` (280),
//!   `CappedPositionLost` (136). The saved token can never be resumed: the
//!   source stops with an error saying so (the snapshot slice will
//!   re-snapshot). Never "continue from now".
//! - [`ErrorClass::Resumable`]: network and server-selection errors, the
//!   resumable codes of the change stream specification (primary step-down,
//!   shutdown, not primary, ...) and the `ResumableChangeStreamError` label:
//!   the source reopens the stream from its last token, with backoff.
//! - [`ErrorClass::Config`]: authentication, a bad URI or option, DNS, TLS:
//!   the source stops with an error naming it.
//! - [`ErrorClass::Fatal`]: anything else: the source stops (the supervisor
//!   restarts it from its committed token).

use mongodb::error::{Error, ErrorKind};

/// Codes after which the saved token cannot be resumed.
pub const HISTORY_LOST_CODES: [i32; 4] = [286, 260, 280, 136];

/// The resumable server codes of the change stream specification
/// (HostUnreachable, HostNotFound, CursorNotFound, StaleShardVersion,
/// NetworkTimeout, ShutdownInProgress, FailedToSatisfyReadPreference,
/// StaleEpoch, PrimarySteppedDown, RetryChangeStream, ExceededTimeLimit,
/// SocketException, NotWritablePrimary, InterruptedAtShutdown,
/// InterruptedDueToReplStateChange, StaleConfig, NotPrimaryNoSecondaryOk,
/// NotPrimaryOrSecondary).
pub const RESUMABLE_CODES: [i32; 18] = [
    6, 7, 43, 63, 89, 91, 133, 150, 189, 234, 262, 9001, 10107, 11600, 11602, 13388, 13435, 13436,
];

/// Codes of authentication and authorisation failures.
const AUTH_CODES: [i32; 2] = [13, 18];

/// The label servers put on resumable change stream errors.
pub const RESUMABLE_LABEL: &str = "ResumableChangeStreamError";

/// See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The token cannot be resumed.
    HistoryLost,
    /// Reopen from the last token, with backoff.
    Resumable,
    /// Authentication or configuration.
    Config,
    /// Anything else.
    Fatal,
}

/// The kind of a driver error, reduced to what classification needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A server command failed with this code.
    Command(i32),
    /// I/O, a cleared pool, no server selectable.
    Network,
    /// Authentication, invalid argument, DNS, TLS.
    Config,
    /// Anything else.
    Other,
}

/// Classify a driver error.
pub fn classify(error: &Error) -> ErrorClass {
    let kind = match error.kind.as_ref() {
        ErrorKind::Command(command) => Kind::Command(command.code),
        ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => Kind::Network,
        ErrorKind::ServerSelection { .. } => Kind::Network,
        ErrorKind::Authentication { .. }
        | ErrorKind::InvalidArgument { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::InvalidTlsConfig { .. } => Kind::Config,
        _ => Kind::Other,
    };
    classify_parts(kind, error.contains_label(RESUMABLE_LABEL))
}

/// [`classify`] on the parts of an error.
pub fn classify_parts(kind: Kind, resumable_label: bool) -> ErrorClass {
    match kind {
        Kind::Command(code) if HISTORY_LOST_CODES.contains(&code) => ErrorClass::HistoryLost,
        _ if resumable_label => ErrorClass::Resumable,
        Kind::Command(code) if RESUMABLE_CODES.contains(&code) => ErrorClass::Resumable,
        Kind::Command(code) if AUTH_CODES.contains(&code) => ErrorClass::Config,
        Kind::Network => ErrorClass::Resumable,
        Kind::Config => ErrorClass::Config,
        Kind::Command(_) | Kind::Other => ErrorClass::Fatal,
    }
}

/// The server code of a driver error, for logs.
pub fn code(error: &Error) -> Option<i32> {
    match error.kind.as_ref() {
        ErrorKind::Command(command) => Some(command.code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_history_wins_over_a_resumable_label() {
        for code in HISTORY_LOST_CODES {
            assert_eq!(
                classify_parts(Kind::Command(code), false),
                ErrorClass::HistoryLost
            );
            assert_eq!(
                classify_parts(Kind::Command(code), true),
                ErrorClass::HistoryLost
            );
        }
    }

    #[test]
    fn resumable_errors() {
        for code in [6, 43, 189, 91, 10107, 11602] {
            assert_eq!(
                classify_parts(Kind::Command(code), false),
                ErrorClass::Resumable,
                "{code}"
            );
        }
        assert_eq!(
            classify_parts(Kind::Command(2), true),
            ErrorClass::Resumable
        );
        assert_eq!(classify_parts(Kind::Network, false), ErrorClass::Resumable);
    }

    #[test]
    fn config_and_other_errors() {
        assert_eq!(classify_parts(Kind::Command(18), false), ErrorClass::Config);
        assert_eq!(classify_parts(Kind::Config, false), ErrorClass::Config);
        assert_eq!(classify_parts(Kind::Command(2), false), ErrorClass::Fatal);
        assert_eq!(classify_parts(Kind::Other, false), ErrorClass::Fatal);
    }
}
