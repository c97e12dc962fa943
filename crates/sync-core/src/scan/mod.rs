//! Reading a tree: walking a root into its entries without following links
//! ([`walk::scan`], or one directory at a time with [`walk::list_dir`]), leaving out what the
//! [`filter::Filter`] excludes.

pub mod filter;
pub mod walk;

pub use filter::Filter;
pub use walk::{Entries, Scanned, scan};
