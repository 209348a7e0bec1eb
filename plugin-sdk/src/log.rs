//! Structured logging from plugin code.
//!
//! In a WebAssembly build the record goes to the host, which writes it to its
//! `tracing` output with the plugin's name and version. In a native build
//! (`cargo test`) it goes to standard error.

use crate::bindings::emcachers::plugin::host::Level;

/// Log `message` with key/value `fields` at `level`.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    #[cfg(target_arch = "wasm32")]
    {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        crate::bindings::emcachers::plugin::host::log(level, message, &fields);
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!("[plugin {level:?}] {message} {}", fields.join(" "));
    }
}

/// Log at debug level.
pub fn debug(message: &str, fields: &[(&str, &str)]) {
    log(Level::Debug, message, fields);
}

/// Log at info level.
pub fn info(message: &str, fields: &[(&str, &str)]) {
    log(Level::Info, message, fields);
}

/// Log at warn level.
pub fn warn(message: &str, fields: &[(&str, &str)]) {
    log(Level::Warn, message, fields);
}

/// Log at error level.
pub fn error(message: &str, fields: &[(&str, &str)]) {
    log(Level::Error, message, fields);
}
