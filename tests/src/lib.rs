//! Support for the end-to-end tests: real plugins compiled to WebAssembly,
//! the `emcachers` binary, and small helpers to wait on conditions.

pub mod services;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The workspace's target directory (`CARGO_TARGET_DIR` when set).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// A compiled-plugin cache shared by the `emcachers` processes tests start
/// (`[plugins] cache_dir`), so each does not compile the built-in plugins
/// again.
pub fn plugin_cache_dir() -> PathBuf {
    target_dir().join("test-plugin-cache")
}

/// The guest plugins the tests use, built for wasm32-wasip2.
#[derive(Debug, Clone)]
pub struct Plugins {
    /// `plugins/shape`.
    pub shape: PathBuf,
    /// `examples/plugin-template`.
    pub template: PathBuf,
    /// `tests/plugins/hostile`, version 1.0.0.
    pub hostile: PathBuf,
    /// `tests/plugins/hostile` with feature `v2`, version 2.0.0.
    pub hostile_v2: PathBuf,
    /// `plugins/schematic`.
    pub schematic: PathBuf,
}

fn cargo_build_wasm(packages: &[&str], features: &[&str]) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    // The test process's CARGO_MANIFEST_DIR would differ from a plain build's
    // and make build scripts that watch it (ring's) rebuild their dependants.
    command.env_remove("CARGO_MANIFEST_DIR");
    command.current_dir(workspace_root()).args([
        "build",
        "--quiet",
        "--target",
        "wasm32-wasip2",
        "--profile",
        "plugin",
    ]);
    for package in packages {
        command.args(["-p", package]);
    }
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    let status = command
        .status()
        .expect("cannot run cargo to build the test plugins");
    assert!(
        status.success(),
        "building {packages:?} for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)"
    );
}

/// Build the test plugins once per test process and return their paths.
/// Each is copied out of cargo's output so later builds cannot change it.
pub fn plugins() -> &'static Plugins {
    static PLUGINS: OnceLock<Plugins> = OnceLock::new();
    PLUGINS.get_or_init(|| {
        let out = target_dir().join("wasm32-wasip2/plugin");
        let dir = target_dir().join("test-plugins");
        std::fs::create_dir_all(&dir).expect("create test plugin directory");
        let copy = |built: &str, name: &str| {
            let to = dir.join(name);
            std::fs::copy(out.join(built), &to).unwrap_or_else(|e| panic!("copy {built}: {e}"));
            to
        };
        cargo_build_wasm(
            &["emcachers-test-plugin-hostile"],
            &["emcachers-test-plugin-hostile/v2"],
        );
        let hostile_v2 = copy("emcachers_test_plugin_hostile.wasm", "hostile_v2.wasm");
        cargo_build_wasm(
            &[
                "emcachers-plugin-shape",
                "emcachers-plugin-schematic",
                "emcachers-plugin-template",
                "emcachers-test-plugin-hostile",
            ],
            &[],
        );
        Plugins {
            shape: copy("emcachers_plugin_shape.wasm", "shape.wasm"),
            template: copy("emcachers_plugin_template.wasm", "template.wasm"),
            hostile: copy("emcachers_test_plugin_hostile.wasm", "hostile.wasm"),
            hostile_v2,
            schematic: copy("emcachers_plugin_schematic.wasm", "schematic.wasm"),
        }
    })
}

/// The `emcachers` binary, built (once per test process) from the current
/// sources so a CLI test never runs a stale binary.
pub fn emcachers_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current test executable");
        // target/<profile>/deps/<test> → target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command.env_remove("CARGO_MANIFEST_DIR");
        command.current_dir(workspace_root()).args([
            "build",
            "--quiet",
            "-p",
            "emcachers",
            "--bin",
            "emcachers",
        ]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            command.arg("--release");
        }
        let status = command
            .status()
            .expect("cannot run cargo to build emcachers");
        assert!(status.success(), "building the emcachers binary failed");
        let bin = profile_dir.join("emcachers");
        assert!(bin.exists(), "{} is missing after the build", bin.display());
        bin
    })
    .clone()
}

/// Poll `condition` every 10 ms until it holds or `timeout` passes.
/// Returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The machine a benchmark ran on: `"{cores} cores, {CPU model}"`.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}
