//! Stale-version cleanup (spec §5): `SCAN` (never `KEYS`) every master for
//! each configured prefix and delete the keys whose version segment — the
//! part right after the prefix, up to the next `:` — is not a current
//! version. One `DEL` per key, so no command ever crosses cluster slots.

use std::collections::BTreeSet;

use serde::Serialize;

use super::error::RedisWriterError;
use super::target::{Command, Target};

/// Keys asked for per `SCAN` call.
pub(crate) const SCAN_COUNT: usize = 1000;

/// What one cleanup did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    /// The versions kept.
    pub versions: Vec<String>,
    /// Masters scanned.
    pub nodes: usize,
    /// Keys matched by the prefixes.
    pub scanned: u64,
    /// Keys deleted.
    pub removed: u64,
}

/// The version segment of `key` under `prefix`, if `key` starts with it.
pub(crate) fn version_segment<'k>(key: &'k str, prefix: &str) -> Option<&'k str> {
    let rest = key.strip_prefix(prefix)?;
    Some(rest.split(':').next().unwrap_or(rest))
}

/// Delete every key under `prefixes` whose version is not in `versions`.
/// Refuses (does nothing) when `versions` is empty, which would delete
/// everything.
pub(crate) async fn cleanup(
    target: &Target,
    prefixes: &[String],
    versions: &BTreeSet<String>,
) -> Result<CleanupReport, RedisWriterError> {
    let mut report = CleanupReport {
        versions: versions.iter().cloned().collect(),
        ..CleanupReport::default()
    };
    if prefixes.is_empty() {
        return Ok(report);
    }
    if versions.is_empty() {
        tracing::warn!("stale-version cleanup skipped: no current version is known yet");
        return Ok(report);
    }
    let nodes = target.masters().await?;
    report.nodes = nodes.len();
    for node in &nodes {
        for prefix in prefixes.iter().filter(|p| !p.is_empty()) {
            let mut cursor = 0;
            loop {
                let (next, keys) = target.scan(node, cursor, prefix, SCAN_COUNT).await?;
                report.scanned += keys.len() as u64;
                let stale: Vec<Command> = keys
                    .into_iter()
                    .filter(|key| {
                        version_segment(key, prefix).is_some_and(|v| !versions.contains(v))
                    })
                    .map(|key| Command::Del { key })
                    .collect();
                if !stale.is_empty() {
                    let replies = target.run(&stale, "cleanup").await?;
                    report.removed += replies.iter().filter(|r| r.flag()).count() as u64;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            tracing::debug!(node = %node, prefix, "stale-version cleanup scanned");
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_segments() {
        assert_eq!(
            version_segment("schematic:company:v1:domain:a.com", "schematic:company:"),
            Some("v1")
        );
        assert_eq!(
            version_segment("schematic:flags:v2", "schematic:flags:"),
            Some("v2")
        );
        assert_eq!(version_segment("other:v1", "schematic:flags:"), None);
    }

    #[tokio::test]
    async fn memory_cleanup_removes_other_versions_only() {
        let config = super::super::RedisWriterConfig {
            memory: Some(super::super::MemoryConfig { max_entries: 10 }),
            ..Default::default()
        };
        let target = Target::new(&config).expect("memory target");
        let set = |key: &str| Command::Set {
            key: key.into(),
            value: "1".into(),
            ttl: None,
        };
        target
            .run(
                &[
                    set("schematic:flags:v1:a"),
                    set("schematic:flags:v2:a"),
                    set("schematic:company:old:x"),
                    set("unrelated:v1"),
                ],
                "test",
            )
            .await
            .expect("set");
        let prefixes = vec![
            "schematic:flags:".to_owned(),
            "schematic:company:".to_owned(),
        ];
        let none = cleanup(&target, &prefixes, &BTreeSet::new())
            .await
            .expect("cleanup");
        assert_eq!(none.removed, 0, "no versions known: nothing removed");
        let versions: BTreeSet<String> = ["v2".to_owned()].into();
        let report = cleanup(&target, &prefixes, &versions)
            .await
            .expect("cleanup");
        assert_eq!(report.removed, 2);
        let memory = target.memory().expect("memory");
        assert_eq!(
            memory.keys_with_prefix(""),
            vec!["schematic:flags:v2:a".to_owned(), "unrelated:v1".to_owned()]
        );
    }
}
