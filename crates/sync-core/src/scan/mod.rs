//! Reading a tree: walking it into its entries without following links ([`walk::scan`]; a
//! mirror lists one directory at a time with [`crate::tree::Tree::list`]), leaving out what the
//! [`filter::Filter`] excludes.

pub mod filter;
pub mod walk;

pub use filter::Filter;
pub use walk::{Entries, Scanned, scan, scan_lazily};
