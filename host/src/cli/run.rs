//! `emcachers run`: the long-running host.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use emcachers::config::Config;
use emcachers::plugin::{PluginEngine, PluginRegistry, PluginWatcher};
use emcachers::telemetry;

pub fn run(config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    telemetry::init(&config.log.level, config.log.format);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(serve(config))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    std::fs::create_dir_all(&config.plugins.dir).with_context(|| {
        format!(
            "cannot create plugin directory {}",
            config.plugins.dir.display()
        )
    })?;

    let engine = PluginEngine::new(config.sandbox())?;
    let registry = Arc::new(PluginRegistry::new(engine));
    for entity in &config.entities {
        // A rejected configuration is logged; the entity is not served, the host runs on.
        if let Err(error) =
            registry.assign(&entity.name, &entity.plugin, &entity.config.to_string())
        {
            tracing::error!(entity = %entity.name, plugin = %entity.plugin, %error, "entity not configured");
        }
    }
    let dir = config.plugins.dir.clone();
    let loader = registry.clone();
    let errors = tokio::task::spawn_blocking(move || loader.load_dir(&dir)).await?;
    let loaded = registry.plugins();
    tracing::info!(
        dir = %config.plugins.dir.display(),
        loaded = loaded.len(),
        failed = errors.len(),
        plugins = %loaded.iter().map(|p| format!("{}@{}", p.name, p.version)).collect::<Vec<_>>().join(","),
        "plugins loaded"
    );
    let _watcher = if config.plugins.watch {
        Some(PluginWatcher::start(registry.clone(), &config.plugins.dir)?)
    } else {
        None
    };

    shutdown_signal().await;
    tracing::info!("shutting down");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
