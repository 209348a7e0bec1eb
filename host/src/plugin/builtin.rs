//! The built-in plugins: `shape` and `schematic`, compiled by `build.rs`
//! from `plugins/` and embedded in the binary, so `emcachers run` needs no
//! plugin directory for them. A file in the plugin directory whose plugin
//! has the same name overrides a built-in while it is there.

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));
}

/// One plugin embedded in the binary.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinPlugin {
    /// The crate it was built from (`plugins/{crate}`).
    pub source: &'static str,
    /// The component's bytes.
    pub bytes: &'static [u8],
}

impl BuiltinPlugin {
    /// The label used in logs and errors before the plugin has described
    /// itself: `builtin:{source}`.
    pub fn label(&self) -> String {
        format!("builtin:{}", self.source)
    }

    /// SHA-256 of the embedded component (hex).
    pub fn hash(&self) -> String {
        super::engine::content_hash(self.bytes)
    }
}

/// Every built-in plugin.
pub const BUILTINS: &[BuiltinPlugin] = &[
    BuiltinPlugin {
        source: "emcachers-plugin-shape",
        bytes: embedded::SHAPE_WASM,
    },
    BuiltinPlugin {
        source: "emcachers-plugin-schematic",
        bytes: embedded::SCHEMATIC_WASM,
    },
];
