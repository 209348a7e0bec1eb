//! Every metadata key, typed in one place.
//!
//! The strings are part of the on-disk format (SQLite data directories and
//! PostgreSQL databases made by earlier versions must keep working): they
//! never change. Add a key here, never as a literal at its call site.
//!
//! - [`MetaKey`]: the keys of the oplog store's `metadata` table
//!   ([`OplogStore::meta_get`](super::OplogStore::meta_get) and friends).
//! - [`CacheMetaKey`]: the keys of `_emcachers_meta` in every per-entity
//!   SQLite cache database, and [`REPLICATOR_OFFSET_KEY`] in
//!   `dbs/replicator.sqlite`.

use std::fmt;

/// The metadata key holding the store's identity (a JSON string).
pub const IDENTITY_KEY: &str = "oplog_identity";

/// Metadata key prefix of an entity's published cache layout (`layout:{entity}`).
pub const LAYOUT_META_PREFIX: &str = "layout:";

/// Metadata key prefix of an entity's running initial load (`load:{entity}`).
pub const LOAD_META_PREFIX: &str = "load:";

/// A key of the oplog store's `metadata` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetaKey<'a> {
    /// `oplog_identity`: the store's random identity (a JSON string), made
    /// once when the store is created.
    Identity,
    /// `layout:{entity}`: the entity's published cache layout.
    Layout(&'a str),
    /// `load:{entity}`: the oplog head at the start of the entity's running
    /// initial load (`{"head": id}`).
    Load(&'a str),
}

impl MetaKey<'_> {
    /// The key as stored.
    pub fn key(&self) -> String {
        self.to_string()
    }

    /// The entity the key belongs to, if any: such keys are removed with
    /// their entity.
    pub fn entity(&self) -> Option<&str> {
        match self {
            MetaKey::Identity => None,
            MetaKey::Layout(entity) | MetaKey::Load(entity) => Some(entity),
        }
    }
}

impl fmt::Display for MetaKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaKey::Identity => f.write_str(IDENTITY_KEY),
            MetaKey::Layout(entity) => write!(f, "{LAYOUT_META_PREFIX}{entity}"),
            MetaKey::Load(entity) => write!(f, "{LOAD_META_PREFIX}{entity}"),
        }
    }
}

/// The metadata key of `entity` under `prefix` (one of the `*_META_PREFIX`es).
/// Prefer [`MetaKey`].
pub fn entity_meta_key(prefix: &str, entity: &str) -> String {
    format!("{prefix}{entity}")
}

/// Every metadata key that belongs to `entity`: they are removed with it
/// ([`OplogStore::delete_entity`](super::OplogStore::delete_entity)), so a
/// re-created entity starts clean.
pub fn entity_meta_keys(entity: &str) -> [String; 2] {
    [MetaKey::Layout(entity).key(), MetaKey::Load(entity).key()]
}

/// A key of `_emcachers_meta`, the metadata table of every per-entity SQLite
/// cache database (`dbs/{entity}/db.sqlite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheMetaKey {
    /// `layout`: the layout the database was built for (JSON).
    Layout,
    /// `layout_version`: that layout's version.
    LayoutVersion,
    /// `applied_oplog_id`: the last log id applied to the database.
    AppliedOplogId,
    /// `oplog_identity`: the identity of the oplog it was built from.
    OplogIdentity,
}

impl CacheMetaKey {
    /// The key as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMetaKey::Layout => "layout",
            CacheMetaKey::LayoutVersion => "layout_version",
            CacheMetaKey::AppliedOplogId => "applied_oplog_id",
            CacheMetaKey::OplogIdentity => "oplog_identity",
        }
    }
}

impl fmt::Display for CacheMetaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The key of the SQLite replicator's saved offset in the `metadata` table
/// of `dbs/replicator.sqlite`.
pub const REPLICATOR_OFFSET_KEY: &str = "oplog_offset";

#[cfg(test)]
mod tests {
    use super::*;

    /// The strings are an on-disk format: this test pins them.
    #[test]
    fn key_strings_never_change() {
        assert_eq!(MetaKey::Identity.key(), "oplog_identity");
        assert_eq!(MetaKey::Layout("users").key(), "layout:users");
        assert_eq!(MetaKey::Load("users").key(), "load:users");
        assert_eq!(
            entity_meta_keys("e"),
            ["layout:e".to_owned(), "load:e".to_owned()]
        );
        assert_eq!(entity_meta_key(LAYOUT_META_PREFIX, "e"), "layout:e");
        assert_eq!(MetaKey::Load("e").entity(), Some("e"));
        assert_eq!(MetaKey::Identity.entity(), None);
        assert_eq!(CacheMetaKey::Layout.as_str(), "layout");
        assert_eq!(CacheMetaKey::LayoutVersion.as_str(), "layout_version");
        assert_eq!(CacheMetaKey::AppliedOplogId.as_str(), "applied_oplog_id");
        assert_eq!(CacheMetaKey::OplogIdentity.as_str(), "oplog_identity");
        assert_eq!(REPLICATOR_OFFSET_KEY, "oplog_offset");
    }
}
