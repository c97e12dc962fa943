//! One pass of each kind, from the scan to the state it leaves: a mirror ([`mirror`]) and a
//! two-way sync ([`twoway`]). (The versioned pass lives in the `versioning` crate.)

pub mod mirror;
pub mod twoway;

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::model::Side;
use crate::scan::Filter;
use crate::tree::{LocalTree, Tree};

/// What a pass works on and how.
#[derive(Debug)]
pub struct PassOptions {
    /// Canonical SOURCE.
    pub source: PathBuf,
    /// Canonical BACKUP.
    pub backup: PathBuf,
    /// SOURCE and BACKUP, held open since the run began.
    pub trees: [LocalTree; 2],
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

    /// The tree of `side`.
    pub fn tree(&self, side: Side) -> &LocalTree {
        &self.trees[side as usize]
    }

    /// Checks that SOURCE and BACKUP still name the directories the run began with: a root
    /// that someone replaced since (by a link elsewhere, say) is not the one the user named.
    ///
    /// Fails, naming the root, if either was replaced or can no longer be reached.
    pub fn check_roots(&self) -> Result<(), Error> {
        for side in [Side::Source, Side::Backup] {
            self.tree(side)
                .check_root()
                .map_err(|source| Error::ListRoot {
                    role: side.name(),
                    path: self.root(side).to_path_buf(),
                    source,
                })?;
        }
        Ok(())
    }
}

/// Warns, once per pass, of the setuid and setgid entries of another user that `trees`
/// listed: their copies are this user's, and do not keep those bits.
pub fn warn_privileged(trees: &[&dyn Tree]) {
    for tree in trees {
        let n = tree.take_privileged();
        if n > 0 {
            log::warn!(
                "{n} setuid or setgid entries of {} belong to another user: their copies are \
                 this user's and do not keep those bits",
                crate::display::Escaped(Path::new(&tree.name()))
            );
        }
    }
}
