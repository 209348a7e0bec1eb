#!/usr/bin/env bash
# Build emcachers, the example plugins and the development datastream server,
# then run the host on the embedded default (SQLite oplog, no external
# service) with examples/emcachers.toml. Two sources feed it:
#  - examples/shape/changes.jsonl through the shape and template plugins into
#    data/dbs/{people,profiles}/db.sqlite;
#  - a local Schematic datastream (examples/datastream-server with the sample
#    data of examples/schematic/fixtures) through the schematic plugin into
#    Schematic's key layout (in memory here; Redis with `[redis] addr`).
# Then look:
#   curl -s localhost:8090/ready
#   curl -s 'localhost:8080/api/cache/keys?prefix=schematic:'
#   curl -s localhost:8080/api/cache/keys/schematic:flags:v1:newcheckoutflow
#   sqlite3 data/dbs/people/db.sqlite 'SELECT id, email, city, logins FROM people'
# and push a change through the datastream:
#   curl -s -XPOST localhost:18081/_dev/push -H 'content-type: application/json' \
#     -d '{"entity_type":"rulesengine.Flag","message_type":"full","data":{"id":"flag_new","key":"brand-new","default_value":true,"rules":[]}}'
# State goes to ./data; press Ctrl-C to stop both processes.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=18081   # the api_url of examples/emcachers.toml
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --release -p emcachers -p emcachers-datastream-server
# shape and schematic are built into emcachers; the template plugin is a
# file in the watched plugin directory (a file named like a built-in
# overrides it).
mkdir -p data/plugins
./target/release/emcachers plugin build examples/plugin-template --out-dir data/plugins --profile plugin
rm -f data/plugins/emcachers_plugin_shape.wasm data/plugins/emcachers_plugin_schematic.wasm
./target/release/emcachers plugin list --config examples/emcachers.toml

./target/release/datastream-dev-server --listen "127.0.0.1:$PORT" \
  --fixtures examples/schematic/fixtures >data/datastream-server.out 2>data/datastream-server.log &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q '^listening on' data/datastream-server.out 2>/dev/null && break
  kill -0 $SERVER 2>/dev/null || { cat data/datastream-server.log >&2; exit 1; }
  sleep 0.1
done
echo "datastream dev server on http://127.0.0.1:$PORT (log: data/datastream-server.log)" >&2
echo "look at: curl -s localhost:8090/ready; curl -s 'localhost:8080/api/cache/keys?prefix=schematic:'" >&2
./target/release/emcachers run --config examples/emcachers.toml "$@"
