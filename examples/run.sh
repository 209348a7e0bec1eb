#!/usr/bin/env bash
# Build emcachers and the example plugins, then run the host on the embedded
# default (SQLite oplog, no external service) with examples/emcachers.toml:
# it ingests examples/shape/changes.jsonl through the shape and template
# plugins and replicates the rows into data/dbs/{users,profiles}/db.sqlite.
#   sqlite3 data/dbs/users/db.sqlite 'SELECT id, email, city, logins FROM users'
# State goes to ./data; press Ctrl-C to stop.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --release -p emcachers
mkdir -p data/plugins
for crate in plugins/shape examples/plugin-template; do
  ./target/release/emcachers plugin build "$crate" --out-dir data/plugins --profile plugin
done
echo "query the caches with: sqlite3 data/dbs/users/db.sqlite 'SELECT * FROM users'" >&2
exec ./target/release/emcachers run --config examples/emcachers.toml "$@"
