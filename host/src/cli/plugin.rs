//! `emcachers plugin …`: scaffold, build, check and test plugins.

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};
use clap::Subcommand;
use emcachers::config::Config;
use emcachers::plugin::{
    BUILTINS, CacheWrite, ChangeOp, PluginEngine, PluginOrigin, PluginRegistry, Row, RowOp,
    SandboxConfig, Shaped,
};
use emcachers::sources::jsonl;
use serde_json::{Value, json};

/// The template plugin, scaffolded by `plugin new`.
const TEMPLATE_LIB: &str = include_str!("../../../examples/plugin-template/src/lib.rs");
/// The name the template uses for itself.
const TEMPLATE_NAME: &str = "plugin-template";
/// The SDK in this source tree, used as a path dependency when it exists.
const SDK_SOURCE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-sdk");
/// Changes per plugin call in `plugin test`.
const TEST_BATCH: usize = 1000;

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Scaffold a new plugin crate from the template.
    New {
        /// Plugin (and crate) name, e.g. `orders`.
        name: String,
        /// Where to create it (default: `./<name>`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Path of the emcachers-plugin-sdk crate (default: the one this
        /// binary was built from, else the crates.io release).
        #[arg(long, env = "EMCACHERS_SDK_PATH")]
        sdk_path: Option<PathBuf>,
    },
    /// Build a plugin crate for wasm32-wasip2 and copy it into the plugin directory.
    Build {
        /// The plugin crate (default: the current directory).
        #[arg(default_value = ".")]
        path: PathBuf,
        /// The plugin directory (default: `plugins.dir` of the configuration).
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// The configuration file giving `plugins.dir`.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The cargo profile to build with.
        #[arg(long, default_value = "release")]
        profile: String,
    },
    /// List the plugins a node would serve: the built-in ones and the files
    /// of the plugin directory (a file overrides the built-in of its name).
    List {
        /// The configuration file giving `plugins.dir` and `plugins.builtins`.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The plugin directory (default: `plugins.dir` of the configuration).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Validate a plugin file against the WIT contract and print its description.
    Check {
        /// The `.wasm` file.
        file: PathBuf,
    },
    /// Run `shape` then `keys` over JSON-lines changes and print rows and cache writes.
    Test {
        /// The `.wasm` file.
        file: PathBuf,
        /// The entity to shape.
        #[arg(long)]
        entity: String,
        /// The entity's plugin configuration (a JSON file).
        #[arg(long)]
        config: Option<PathBuf>,
        /// JSON-lines changes (`-` for standard input).
        #[arg(long)]
        input: PathBuf,
    },
}

pub fn run(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::New {
            name,
            dir,
            sdk_path,
        } => new(&name, dir, sdk_path),
        PluginCommand::Build {
            path,
            out_dir,
            config,
            profile,
        } => build(&path, out_dir, config, &profile),
        PluginCommand::List { config, dir, json } => list(config.as_deref(), dir, json),
        PluginCommand::Check { file } => check(&file),
        PluginCommand::Test {
            file,
            entity,
            config,
            input,
        } => test(&file, &entity, config.as_deref(), &input),
    }
}

fn new(name: &str, dir: Option<PathBuf>, sdk_path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if !valid {
        bail!(
            "plugin name {name:?} must start with a lower-case letter and hold only a-z, 0-9, - and _"
        );
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let sdk_dependency = match sdk_path.or_else(|| {
        let here = PathBuf::from(SDK_SOURCE_DIR);
        here.join("Cargo.toml").exists().then_some(here)
    }) {
        Some(path) => {
            let path = path
                .canonicalize()
                .with_context(|| format!("SDK path {}", path.display()))?;
            format!("{{ path = {:?} }}", path.display().to_string())
        }
        None => format!("\"{}\"", env!("CARGO_PKG_VERSION")),
    };
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
emcachers-plugin-sdk = {sdk_dependency}

# Small, fast plugins: `emcachers plugin build` uses this profile.
[profile.release]
opt-level = 3
lto = true
codegen-units = 1
strip = true
panic = "abort"

# A standalone crate, not a member of an enclosing workspace.
[workspace]
"#
    );
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("Cargo.toml"), manifest)?;
    std::fs::write(
        dir.join("src/lib.rs"),
        TEMPLATE_LIB.replace(TEMPLATE_NAME, name),
    )?;
    std::fs::write(dir.join(".gitignore"), "/target\n")?;
    println!("created plugin {name} in {}", dir.display());
    println!(
        "next: cd {} && cargo test && emcachers plugin build",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn build(
    path: &Path,
    out_dir: Option<PathBuf>,
    config: Option<PathBuf>,
    profile: &str,
) -> anyhow::Result<ExitCode> {
    let out_dir = match out_dir {
        Some(dir) => dir,
        None => Config::load(config.as_deref())?.plugins.dir,
    };
    let manifest = path.join("Cargo.toml");
    if !manifest.exists() {
        bail!("{} is not a crate: no Cargo.toml", path.display());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
            "--profile",
            profile,
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !output.status.success() {
        bail!(
            "cargo build failed for {} (is the target installed? `rustup target add wasm32-wasip2`)",
            path.display()
        );
    }
    let artefacts = wasm_artefacts(&output.stdout, &manifest)?;
    if artefacts.is_empty() {
        bail!(
            "cargo built no .wasm for {}: is its crate-type cdylib?",
            path.display()
        );
    }
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    for artefact in artefacts {
        let file_name = artefact
            .file_name()
            .context("artefact without a file name")?;
        let target = out_dir.join(file_name);
        // Copy under a hidden name, then rename: a watching host never sees half a file.
        let staging = out_dir.join(format!(".{}.partial", file_name.to_string_lossy()));
        std::fs::copy(&artefact, &staging)
            .with_context(|| format!("cannot copy to {}", staging.display()))?;
        std::fs::rename(&staging, &target)
            .with_context(|| format!("cannot move into {}", target.display()))?;
        println!("{}", target.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The `.wasm` files cargo reported for the package of `manifest`.
fn wasm_artefacts(messages: &[u8], manifest: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let manifest = manifest.canonicalize()?;
    let mut found = Vec::new();
    for line in messages.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(message) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let same_package = message["manifest_path"]
            .as_str()
            .is_some_and(|p| Path::new(p) == manifest);
        if !same_package {
            continue;
        }
        for file in message["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if file.ends_with(".wasm") {
                found.push(PathBuf::from(file));
            }
        }
    }
    Ok(found)
}

fn list(config: Option<&Path>, dir: Option<PathBuf>, as_json: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    let dir = dir.unwrap_or_else(|| config.plugins.dir.clone());
    let registry = PluginRegistry::new(PluginEngine::new(config.sandbox())?);
    let mut failed: Vec<(String, String)> = Vec::new();
    if config.plugins.builtins {
        for (label, error) in registry.load_builtins(BUILTINS) {
            failed.push((label, error.to_string()));
        }
    }
    if dir.is_dir() {
        for (path, error) in registry.load_dir(&dir) {
            failed.push((path.display().to_string(), error.to_string()));
        }
    }
    let plugins = registry.plugins();
    if as_json {
        let failed: Vec<Value> = failed
            .iter()
            .map(|(what, error)| json!({"plugin": what, "error": error}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"plugins": plugins, "failed": failed}))?
        );
    } else {
        println!("{:<16} {:<12} {:<64} ORIGIN", "NAME", "VERSION", "SHA256");
        for plugin in &plugins {
            let origin = match (&plugin.origin, &plugin.overrides_builtin) {
                (PluginOrigin::Builtin { .. }, _) => "built-in".to_owned(),
                (PluginOrigin::File { path }, None) => path.display().to_string(),
                (PluginOrigin::File { path }, Some(version)) => {
                    format!("{} (overrides built-in {version})", path.display())
                }
            };
            println!(
                "{:<16} {:<12} {:<64} {origin}",
                plugin.name, plugin.version, plugin.hash
            );
        }
        for (what, error) in &failed {
            println!("FAILED {what}: {error}");
        }
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn check(file: &Path) -> anyhow::Result<ExitCode> {
    let registry = PluginRegistry::new(PluginEngine::new(SandboxConfig::default())?);
    registry.load_file(file)?;
    let status = registry
        .plugins()
        .into_iter()
        .next()
        .context("the file loaded no plugin")?;
    let plugin = registry.plugin(&status.name).context("plugin vanished")?;
    let info = plugin.info();
    let description = json!({
        "name": info.name,
        "version": info.version,
        "description": info.description,
        "bindings": info.bindings.iter().map(|b| json!({
            "entity": b.entity, "source": b.source, "collection": b.collection
        })).collect::<Vec<_>>(),
        "file": file.display().to_string(),
        "sha256": status.hash,
    });
    println!("{}", serde_json::to_string_pretty(&description)?);
    Ok(ExitCode::SUCCESS)
}

fn test(
    file: &Path,
    entity: &str,
    config: Option<&Path>,
    input: &Path,
) -> anyhow::Result<ExitCode> {
    let config = match config {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => "{}".to_owned(),
    };
    serde_json::from_str::<Value>(&config).context("the entity configuration is not valid JSON")?;
    let registry = PluginRegistry::new(PluginEngine::new(SandboxConfig::default())?);
    registry.load_file(file)?;
    let name = registry
        .plugins()
        .into_iter()
        .next()
        .context("the file loaded no plugin")?
        .name;
    registry.assign(entity, &name, &config)?;
    let plugin = registry.plugin(&name).context("plugin vanished")?;

    let reader: Box<dyn std::io::BufRead> = if input == Path::new("-") {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        Box::new(BufReader::new(
            std::fs::File::open(input)
                .with_context(|| format!("cannot open {}", input.display()))?,
        ))
    };
    let mut failures = 0usize;
    let mut changes = Vec::new();
    for change in jsonl::read(reader) {
        match change {
            Ok(change) => changes.push(change),
            Err(error) => {
                failures += 1;
                eprintln!("{error}");
            }
        }
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for batch in changes.chunks(TEST_BATCH) {
        let shaped = plugin.shape(entity, batch);
        let mut upserts: Vec<Row> = Vec::new();
        for (change, result) in batch.iter().zip(shaped) {
            match result {
                Ok(Shaped { rows, complete_set }) => {
                    for row in rows {
                        writeln!(out, "{}", row_json(&row))?;
                        if row.op == RowOp::Upsert {
                            upserts.push(row);
                        }
                    }
                    if let Some(entity) = complete_set {
                        writeln!(out, "{}", json!({"kind": "complete-set", "entity": entity}))?;
                    }
                }
                Err(error) => {
                    failures += 1;
                    eprintln!("change {} ({}): {error}", change.id, op_name(change.op));
                }
            }
        }
        for (row, result) in upserts.iter().zip(plugin.keys(entity, &upserts)) {
            match result {
                Ok(writes) => {
                    for write in writes {
                        writeln!(out, "{}", write_json(&row.id, &write))?;
                    }
                }
                Err(error) => {
                    failures += 1;
                    eprintln!("keys of row {}: {error}", row.id);
                }
            }
        }
    }
    out.flush()?;
    if failures > 0 {
        eprintln!("{failures} item(s) failed");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn op_name(op: ChangeOp) -> &'static str {
    match op {
        ChangeOp::Upsert => "upsert",
        ChangeOp::Delete => "delete",
        ChangeOp::Partial => "partial",
    }
}

fn row_json(row: &Row) -> Value {
    let data: Value =
        serde_json::from_str(&row.data).unwrap_or_else(|_| Value::String(row.data.clone()));
    json!({
        "kind": "row",
        "entity": row.entity,
        "id": row.id,
        "op": match row.op { RowOp::Upsert => "upsert", RowOp::Delete => "delete" },
        "data": data,
    })
}

fn write_json(row_id: &str, write: &CacheWrite) -> Value {
    json!({"kind": "write", "row": row_id, "key": write.key, "value": write.value})
}
