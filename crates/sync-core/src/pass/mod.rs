//! One pass of each kind, from the scan to the state it leaves: a mirror ([`mirror`]) and a
//! two-way sync ([`twoway`]). (The versioned pass lives in the `versioning` crate.)

pub mod mirror;
pub mod twoway;

use std::path::{Path, PathBuf};

use crate::model::Side;
use crate::scan::Filter;

/// What a pass works on and how.
#[derive(Debug)]
pub struct PassOptions {
    /// Canonical SOURCE.
    pub source: PathBuf,
    /// Canonical BACKUP.
    pub backup: PathBuf,
    /// Paths left alone on both sides.
    pub filter: Filter,
    /// Log what would be done; change nothing.
    pub dry_run: bool,
    /// Re-hash every file even where the cached hash is valid.
    pub checksum: bool,
    /// Let the refusals of SPEC §8 through.
    pub force: bool,
}

impl PassOptions {
    /// The root of `side`.
    pub fn root(&self, side: Side) -> &Path {
        match side {
            Side::Source => &self.source,
            Side::Backup => &self.backup,
        }
    }
}
