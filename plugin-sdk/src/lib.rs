//! Write [emcachers](https://github.com/emcachers/emcachers) entity plugins in Rust.
//!
//! A plugin is a WebAssembly component that implements the `entity-plugin`
//! world of `wit/plugin.wit`. This crate hides the generated bindings behind
//! the [`Plugin`] trait: implement it, export it with [`export_plugin!`], and
//! build with `cargo build --target wasm32-wasip2 --release`.
//!
//! ```
//! use emcachers_plugin_sdk::{Change, Plugin, PluginInfo, Result, Row, Shaped, json_path};
//!
//! #[derive(Default)]
//! struct Emails;
//!
//! impl Plugin for Emails {
//!     fn describe(&self) -> PluginInfo {
//!         PluginInfo::new("emails", "0.1.0").serving("emails", "mongo", "users")
//!     }
//!
//!     fn shape(&self, entity: &str, change: Change) -> Result<Shaped> {
//!         let Some(doc) = change.upsert_document() else {
//!             return Ok(Shaped::row(Row::delete(entity, change.id)));
//!         };
//!         let email = json_path::get(doc, "contact.email").cloned().unwrap_or_default();
//!         Ok(Shaped::row(Row::upsert(entity, change.id, [("email", email)])))
//!     }
//! }
//!
//! emcachers_plugin_sdk::export_plugin!(Emails);
//! ```
//!
//! Every call crosses the boundary in batches; the SDK runs your per-item
//! functions over each batch and turns an `Err` into that item's error, so
//! one bad document never fails its batch. Test a plugin natively with
//! [`testing::Harness`]: it runs the same adapter code without WebAssembly.

/// The guest's global allocator (feature `fast-alloc`, on by default).
#[cfg(all(
    feature = "fast-alloc",
    target_family = "wasm",
    not(target_feature = "atomics")
))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

pub mod coerce;
pub mod json_path;
pub mod log;
pub mod testing;

mod model;
mod runner;

pub use model::{
    Binding, CacheWrite, Change, ChangeOp, Column, ColumnType, Error, Index, PluginInfo, RawChange,
    RawRow, RawShaped, Result, Row, RowOp, Shaped, TableLayout,
};
pub use runner::Runner;
pub use serde_json::{self, Map, Value, json};

/// The bindings generated from `wit/plugin.wit`. Plugin code rarely needs
/// them: [`Plugin`] and [`export_plugin!`] cover the contract.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "entity-plugin",
        path: "../wit",
        pub_export_macro: true,
        default_bindings_module: "emcachers_plugin_sdk::bindings",
        export_macro_name: "__export_entity_plugin",
    });
}

/// An entity plugin. Implement it on a `Default` type and export it with
/// [`export_plugin!`].
///
/// The host creates one value per plugin instance, calls
/// [`configure`](Plugin::configure) for every entity it serves, then calls
/// the other methods per item of each batch. Return `Err` for an item that
/// cannot be handled: it becomes that item's error (the host records it as a
/// rejected record), and the rest of the batch goes on.
pub trait Plugin: Default + 'static {
    /// Name, version and the entities/collections the plugin serves.
    fn describe(&self) -> PluginInfo;

    /// Accept (or reject) the configuration of one entity.
    fn configure(&mut self, entity: &str, config: Value) -> Result<()> {
        let _ = (entity, config);
        Ok(())
    }

    /// Turn one change into rows.
    fn shape(&self, entity: &str, change: Change) -> Result<Shaped>;

    /// Turn one change into rows, working on the JSON text as it crossed the
    /// boundary. This is what the SDK calls for every change; the default
    /// parses the change ([`RawChange::parse`]), calls
    /// [`shape`](Plugin::shape) and serialises the rows.
    ///
    /// Override it only to save work in a hot plugin, e.g. to parse just the
    /// fields it needs (see [`json_path::Selector`]) or to write row JSON
    /// directly; it must behave as `shape` does. Most plugins implement
    /// `shape` alone.
    fn shape_raw(&self, entity: &str, change: RawChange) -> Result<RawShaped> {
        let change = change.parse()?;
        self.shape(entity, change).map(RawShaped::from)
    }

    /// The cache writes one upsert row implies. The default writes the row's
    /// JSON under `{entity}:{version}:{id}`.
    fn keys(&self, entity: &str, row: &Row) -> Result<Vec<CacheWrite>> {
        let key = format!("{entity}:{}:{}", self.version(entity), row.id);
        Ok(vec![CacheWrite::new(key, runner::json_text(&row.data))])
    }

    /// The cache writes of one row, working on its JSON text as it crossed
    /// the boundary. This is what the SDK calls for every row; the default
    /// parses the row ([`RawRow::parse`]) and calls [`keys`](Plugin::keys).
    ///
    /// Override it only to save work in a hot plugin (e.g. write the row
    /// text as the value instead of re-serialising it, and parse just the
    /// fields the keys need); it must behave as `keys` does.
    fn keys_raw(&self, entity: &str, row: RawRow) -> Result<Vec<CacheWrite>> {
        let row = row.parse()?;
        self.keys(entity, &row)
    }

    /// The cache-layout version of `entity`. The default is the plugin version.
    fn version(&self, entity: &str) -> String {
        let _ = entity;
        self.describe().version
    }

    /// The tabular layout of `entity`, if the plugin defines one.
    fn table(&self, entity: &str) -> Option<TableLayout> {
        let _ = entity;
        None
    }
}

/// Export a [`Plugin`] type as the component's implementation of the
/// `entity-plugin` world. Use it once, at the crate root.
///
/// On targets other than `wasm32` it expands to nothing, so a plugin crate
/// also builds natively for `cargo test`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::bindings::exports::emcachers::plugin::plugin as __wit;
            use $crate::bindings::emcachers::plugin::types as __types;

            ::std::thread_local! {
                static __RUNNER: ::core::cell::RefCell<$crate::Runner<$plugin>> =
                    ::core::cell::RefCell::new($crate::Runner::new(<$plugin as ::core::default::Default>::default()));
            }

            struct __Export;

            impl __wit::Guest for __Export {
                fn describe() -> __types::PluginInfo {
                    __RUNNER.with(|r| r.borrow().describe())
                }
                fn configure(entity: ::std::string::String, config: ::std::string::String)
                    -> ::core::result::Result<(), ::std::string::String> {
                    __RUNNER.with(|r| r.borrow_mut().configure(&entity, &config))
                }
                fn shape(entity: ::std::string::String, changes: ::std::vec::Vec<__types::Change>)
                    -> ::std::vec::Vec<::core::result::Result<__types::Shaped, ::std::string::String>> {
                    __RUNNER.with(|r| r.borrow().shape(&entity, changes))
                }
                fn keys(entity: ::std::string::String, rows: ::std::vec::Vec<__types::Row>)
                    -> ::std::vec::Vec<::core::result::Result<::std::vec::Vec<__types::CacheWrite>, ::std::string::String>> {
                    __RUNNER.with(|r| r.borrow().keys(&entity, rows))
                }
                fn version(entity: ::std::string::String) -> ::std::string::String {
                    __RUNNER.with(|r| r.borrow().version(&entity))
                }
                fn table(entity: ::std::string::String) -> ::core::option::Option<__types::TableLayout> {
                    __RUNNER.with(|r| r.borrow().table(&entity))
                }
            }

            $crate::bindings::__export_entity_plugin!(__Export with_types_in $crate::bindings);
        };
    };
}
