//! The `emcachers` command line, end to end: each command run as a process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use emcachers_tests::{emcachers_bin, plugins, workspace_root};
use serde_json::Value;

fn emcachers(args: &[&str]) -> Output {
    Command::new(emcachers_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run emcachers")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn check_prints_the_description() {
    let out = emcachers(&["plugin", "check", path(&plugins().shape)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let description: Value = serde_json::from_slice(&out.stdout).expect("JSON description");
    assert_eq!(description["name"], "shape");
    assert_eq!(description["sha256"].as_str().map(str::len), Some(64));
}

#[test]
fn check_rejects_a_file_that_is_not_a_plugin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"not wasm at all").expect("write");
    let out = emcachers(&["plugin", "check", path(&bogus)]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a valid emcachers component"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn test_prints_rows_and_writes_and_fails_on_bad_items() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("users.json");
    std::fs::write(
        &config,
        r#"{"entity_name": "users", "source_name": "users", "columns": [
            {"name": "id", "type": "Text", "path": "_id"},
            {"name": "age", "type": "Integer", "path": "age"}]}"#,
    )
    .expect("write config");
    let input = dir.path().join("changes.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"collection": "users", "op": "upsert", "id": "u1", "document": {"_id": "u1", "age": 7}}"#,
            "\n",
            r#"{"collection": "users", "op": "delete", "id": "u2"}"#,
            "\n",
            r#"{"collection": "users", "op": "upsert", "id": "u3", "document": {"_id": "u3", "age": "old"}}"#,
            "\n"
        ),
    )
    .expect("write input");
    let args = [
        "plugin",
        "test",
        path(&plugins().shape),
        "--entity",
        "users",
        "--config",
        path(&config),
        "--input",
        path(&input),
    ];

    let out = emcachers(&args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed item fails the command"
    );
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let rows: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "row").collect();
    let writes: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "write").collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["data"], serde_json::json!({"id": "u1", "age": 7}));
    assert_eq!(
        (rows[1]["id"].as_str(), rows[1]["op"].as_str()),
        (Some("u2"), Some("delete"))
    );
    assert_eq!(writes.len(), 1, "only upserts produce cache writes");
    assert!(
        writes[0]["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("users:") && k.ends_with(":u1"))
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("u3") && stderr.contains("age"), "{stderr}");

    // Without the bad line the command succeeds.
    let good = dir.path().join("good.jsonl");
    let first_two: String = std::fs::read_to_string(&input)
        .expect("read")
        .lines()
        .take(2)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&good, first_two).expect("write");
    let mut args = args;
    args[8] = path(&good);
    let out = emcachers(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn new_then_build_then_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crate_dir = dir.path().join("orders");
    let out = emcachers(&["plugin", "new", "orders", "--dir", path(&crate_dir)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lib = std::fs::read_to_string(crate_dir.join("src/lib.rs")).expect("lib.rs scaffolded");
    assert!(
        lib.contains("\"orders\""),
        "the plugin is named after the argument"
    );
    assert!(!lib.contains("plugin-template"));
    let again = emcachers(&["plugin", "new", "orders", "--dir", path(&crate_dir)]);
    assert!(
        !again.status.success(),
        "an existing directory is not overwritten"
    );

    let plugin_dir = dir.path().join("plugins");
    let out = Command::new(emcachers_bin())
        .args([
            "plugin",
            "build",
            path(&crate_dir),
            "--out-dir",
            path(&plugin_dir),
        ])
        // Share one build directory across runs so the SDK is compiled once.
        .env(
            "CARGO_TARGET_DIR",
            workspace_root().join("target/scaffold-build"),
        )
        .output()
        .expect("run build");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let built = plugin_dir.join("orders.wasm");
    assert!(built.exists(), "the .wasm lands in the plugin directory");

    let out = emcachers(&["plugin", "check", path(&built)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let description: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(description["name"], "orders");
}

#[test]
fn run_reports_a_bad_configuration_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("emcachers.toml");
    std::fs::write(&config, "[plugins]\ndeadline_ms = \"soon\"\n").expect("write");
    let out = emcachers(&["run", "--config", path(&config)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("plugins.deadline_ms"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn run_loads_the_plugin_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir_all(&plugin_dir).expect("mkdir");
    std::fs::copy(&plugins().hostile, plugin_dir.join("hostile.wasm")).expect("copy");
    let config = dir.path().join("emcachers.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[api]\nlisten = \"127.0.0.1:0\"\n[plugins]\ndir = {:?}\n",
            path(&dir.path().join("data")),
            path(&plugin_dir)
        ),
    )
    .expect("write");
    let mut child = Command::new(emcachers_bin())
        .args(["run", "--config", path(&config)])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start emcachers run");
    let stderr = child.stderr.take().expect("stderr");
    let mut loaded_line = None;
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("log line");
        if line.contains("plugins loaded") {
            loaded_line = Some(line);
            break;
        }
    }
    child.kill().expect("stop emcachers");
    let _ = child.wait();
    let line = loaded_line.expect("the host logs the plugins it loaded");
    assert!(
        line.contains("hostile@1.0.0")
            && line.contains("schematic@0.1.0 (builtin:")
            && line.contains("loaded=3"),
        "the file plugin and the two built-ins: {line}"
    );
    assert!(
        dir.path()
            .join("data/plugin-cache")
            .read_dir()
            .expect("cache dir")
            .next()
            .is_some(),
        "compiled artefact cached"
    );
}
