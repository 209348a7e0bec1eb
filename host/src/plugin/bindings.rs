//! Host bindings generated from `wit/plugin.wit`.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    world: "entity-plugin",
    path: "../wit",
    additional_derives: [PartialEq],
});

pub use self::emcachers::plugin::host::Level;
pub use self::emcachers::plugin::types::{
    Binding, CacheWrite, Change, ChangeOp, Column, ColumnType, Index, PluginInfo, Row, RowOp,
    Shaped, TableLayout,
};
