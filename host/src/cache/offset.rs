//! Cache writer offsets: how far a writer applied the oplog, and **which**
//! oplog that was.
//!
//! Every writer (the Redis writer, the SQLite replicator, each entity
//! database) saves its offset as an [`Offset`]: the last applied log id
//! together with the oplog's identity ([`OplogStore::identity`]). On resume,
//! [`resume`] decides: go on after the saved id, or bootstrap from the
//! latest rows because the offset is missing, unreadable, counts in another
//! oplog (the oplog was wiped, or another process with its own embedded
//! oplog wrote this cache) or lies beyond the oplog's head.
//!
//! [`OplogStore::identity`]: crate::oplog::OplogStore::identity

use std::fmt;

/// A saved offset: every log entry up to `id` of the oplog `oplog` is
/// applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offset {
    /// The identity of the oplog the id counts in.
    pub oplog: String,
    /// The last applied log id.
    pub id: i64,
}

impl Offset {
    /// The offset `id` in the oplog `oplog`.
    pub fn new(oplog: impl Into<String>, id: i64) -> Offset {
        Offset {
            oplog: oplog.into(),
            id,
        }
    }

    /// The text form, `{oplog}:{id}`, as saved in Redis and in local
    /// metadata.
    pub fn encode(&self) -> String {
        format!("{}:{}", self.oplog, self.id)
    }

    /// Parse [`encode`](Self::encode)'s form. A bare number (saved before
    /// offsets carried an identity) parses with an empty identity, which
    /// matches no oplog.
    pub fn parse(text: &str) -> Option<Offset> {
        let text = text.trim();
        let (oplog, id) = match text.rsplit_once(':') {
            Some((oplog, id)) => (oplog, id),
            None => ("", text),
        };
        let id = id.parse::<i64>().ok().filter(|id| *id >= 0)?;
        Some(Offset::new(oplog, id))
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// Why a writer rebuilds from the latest rows instead of resuming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapReason {
    /// No offset was saved (a new or flushed cache).
    Missing,
    /// The saved offset cannot be read.
    Unreadable {
        /// What was saved.
        saved: String,
    },
    /// The offset counts in another oplog.
    OtherOplog {
        /// The identity it was saved with (empty: saved without one).
        saved: String,
        /// This oplog's identity.
        current: String,
    },
    /// The offset is beyond this oplog's head.
    AheadOfHead {
        /// The saved id.
        saved: i64,
        /// The head.
        head: i64,
    },
}

impl BootstrapReason {
    /// Whether the cache may hold data of another oplog (so a bootstrap
    /// must also remove what the latest rows no longer have).
    pub fn may_hold_foreign_data(&self) -> bool {
        !matches!(self, BootstrapReason::Missing)
    }
}

impl fmt::Display for BootstrapReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootstrapReason::Missing => f.write_str("no saved offset"),
            BootstrapReason::Unreadable { saved } => {
                write!(f, "the saved offset {saved:?} is unreadable")
            }
            BootstrapReason::OtherOplog { saved, current } if saved.is_empty() => write!(
                f,
                "the saved offset names no oplog (saved by an older version); this oplog is {current}"
            ),
            BootstrapReason::OtherOplog { saved, current } => write!(
                f,
                "the saved offset counts in oplog {saved}, not in this oplog {current} (wiped, or another process's oplog)"
            ),
            BootstrapReason::AheadOfHead { saved, head } => {
                write!(
                    f,
                    "the saved offset {saved} is beyond the oplog head {head}"
                )
            }
        }
    }
}

/// What a writer does with its saved offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Go on after this log id.
    After(i64),
    /// Rebuild from the latest rows, then go on after the head read first.
    Bootstrap(BootstrapReason),
}

/// Decide how to resume from the saved text `saved` (as [`Offset::encode`]
/// wrote it) against the oplog `identity` whose head is `head`.
pub fn resume(saved: Option<&str>, identity: &str, head: i64) -> Resume {
    let Some(saved) = saved else {
        return Resume::Bootstrap(BootstrapReason::Missing);
    };
    let Some(offset) = Offset::parse(saved) else {
        return Resume::Bootstrap(BootstrapReason::Unreadable {
            saved: saved.to_owned(),
        });
    };
    resume_offset(&offset, identity, head)
}

/// [`resume`] for an offset already parsed.
pub fn resume_offset(offset: &Offset, identity: &str, head: i64) -> Resume {
    if offset.oplog != identity {
        return Resume::Bootstrap(BootstrapReason::OtherOplog {
            saved: offset.oplog.clone(),
            current: identity.to_owned(),
        });
    }
    if offset.id > head {
        return Resume::Bootstrap(BootstrapReason::AheadOfHead {
            saved: offset.id,
            head,
        });
    }
    Resume::After(offset.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_parses() {
        let offset = Offset::new("abc123", 42);
        assert_eq!(offset.encode(), "abc123:42");
        assert_eq!(Offset::parse("abc123:42"), Some(offset));
        assert_eq!(Offset::parse("17"), Some(Offset::new("", 17)));
        assert_eq!(Offset::parse("x:-1"), None);
        assert_eq!(Offset::parse("x:y"), None);
        assert_eq!(Offset::parse(""), None);
    }

    #[test]
    fn resumes_only_in_the_same_oplog_up_to_its_head() {
        assert_eq!(resume(Some("a:5"), "a", 9), Resume::After(5));
        assert_eq!(resume(Some("a:9"), "a", 9), Resume::After(9));
        assert_eq!(
            resume(None, "a", 9),
            Resume::Bootstrap(BootstrapReason::Missing)
        );
        assert_eq!(
            resume(Some("b:5"), "a", 9),
            Resume::Bootstrap(BootstrapReason::OtherOplog {
                saved: "b".into(),
                current: "a".into()
            })
        );
        assert!(matches!(
            resume(Some("5"), "a", 9),
            Resume::Bootstrap(BootstrapReason::OtherOplog { .. })
        ));
        assert_eq!(
            resume(Some("a:10"), "a", 9),
            Resume::Bootstrap(BootstrapReason::AheadOfHead { saved: 10, head: 9 })
        );
        assert!(matches!(
            resume(Some("garbage"), "a", 9),
            Resume::Bootstrap(BootstrapReason::Unreadable { .. })
        ));
        assert!(!BootstrapReason::Missing.may_hold_foreign_data());
    }
}
