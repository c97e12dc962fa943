//! Versioned snapshots for `oneway --versioned`: the tree digests (the seed's, and the full one
//! that decides whether SOURCE changed), the hard-link groups a version keeps, the manifest
//! kept beside each version, the store that rotates versions atomically (`_0` oldest …
//! `_{N-1}` latest), the versioned pass itself, and verification of a version against its
//! manifest; and the recovery system's state (`config.json`, `.info.json`, `__versions__/`)
//! with the restore that brings a directory back.

pub mod digest;
pub mod history;
pub mod links;
pub mod manifest;
pub mod pass;
pub mod recovery;
pub mod restore;
pub mod retention;
pub mod share;
pub mod store;
pub mod verify;

pub use digest::{full_digest, tree_digest};
pub use links::Links;
pub use manifest::{Item, Manifest};
pub use pass::versioned_pass;
pub use store::{Store, Version};
pub use verify::verify;
