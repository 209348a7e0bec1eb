-- The emcachers oplog store (PostgreSQL). Same semantics as the embedded
-- SQLite store (host/src/oplog/sqlite.rs).

CREATE TABLE oplog_sequence (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    last_id BIGINT NOT NULL
);
INSERT INTO oplog_sequence (singleton, last_id) VALUES (TRUE, 0);

CREATE TABLE oplog (
    id BIGINT PRIMARY KEY,
    entity TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    op SMALLINT NOT NULL,
    data TEXT,
    created_at BIGINT NOT NULL,
    plugin TEXT NOT NULL,
    plugin_version TEXT NOT NULL
);
CREATE INDEX oplog_by_entity ON oplog (entity, id);

CREATE TABLE latest (
    entity TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    oplog_id BIGINT NOT NULL,
    op SMALLINT NOT NULL,
    PRIMARY KEY (entity, doc_id)
);

CREATE TABLE source_positions (
    source TEXT PRIMARY KEY,
    position TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE entities (
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    collection TEXT NOT NULL,
    plugin TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE staging (
    id BIGSERIAL PRIMARY KEY,
    entity TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    op SMALLINT NOT NULL,
    data TEXT,
    created_at BIGINT NOT NULL,
    plugin TEXT NOT NULL,
    plugin_version TEXT NOT NULL
);
CREATE INDEX staging_by_entity ON staging (entity, id);

CREATE TABLE rejected (
    id BIGSERIAL PRIMARY KEY,
    source TEXT NOT NULL,
    collection TEXT NOT NULL,
    entity TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    change TEXT NOT NULL,
    plugin TEXT NOT NULL,
    plugin_version TEXT NOT NULL,
    error TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE metadata (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
