//! Sharing storage with another version store (`oneway --versioned --link-dest VDIR`, rsync's
//! `--link-dest` for versions): twoway keeps one store per side of a synced pair, whose files
//! are mostly the same, so a file that cannot share the inode of its own previous version may
//! share the one at the same path in the other store's latest version, where that version's
//! manifest records an equal item (see `pass::shareable`). The other store is only read: its
//! manifest says what a file is, and the applier checks the file's identity (kind, size,
//! modification time) before linking it, as it does for the store's own previous version.

use std::io;
use std::path::{Path, PathBuf};

use sync_core::display::Escaped;
use sync_core::model::Kind;
use sync_core::tree::{LocalTree, Tree};

use crate::manifest::Manifest;
use crate::store::{Store, StoreError};

/// Why `--link-dest VDIR` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LinkDestError {
    /// It cannot be opened as a directory (missing, a file, unreadable).
    #[error("--link-dest {path}: cannot open it as a directory")]
    Open {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// It is a directory, but not a version store.
    #[error("--link-dest {path} is not a version store: {why}")]
    NotStore {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// It is the version store being written.
    #[error("--link-dest {path} is the version directory itself")]
    Itself {
        /// The path given.
        path: PathBuf,
    },
}

/// Another version store, held open from the start of the run.
#[derive(Debug)]
pub struct LinkDest {
    tree: LocalTree,
}

impl LinkDest {
    /// Opens the version store at `vdir` (a path the user typed, resolved this once), for the
    /// versions written into `own`.
    ///
    /// Fails if `vdir` is not a directory, is `own` itself, or is not a version store: it has
    /// a current generation that cannot be read, or it has none yet and holds anything but
    /// files (a store not yet written, as twoway makes one for each side, holds at most its
    /// log; a tree of the user's given by mistake would share nothing, silently).
    pub fn open(vdir: &Path, own: &Path) -> Result<LinkDest, LinkDestError> {
        let tree = LocalTree::open(vdir).map_err(|source| LinkDestError::Open {
            path: vdir.to_path_buf(),
            source,
        })?;
        // A missing `own` is the session's to report.
        if LocalTree::open(own).is_ok_and(|o| o.identity() == tree.identity()) {
            return Err(LinkDestError::Itself {
                path: vdir.to_path_buf(),
            });
        }
        let not_store = |why: String| LinkDestError::NotStore {
            path: vdir.to_path_buf(),
            why,
        };
        let store = Store::held(tree.clone()).map_err(|e| not_store(one_line(&e)))?;
        if store.latest().is_none() {
            let listing = tree
                .list(Path::new(""), &|_| false)
                .map_err(|e| not_store(format!("cannot list it: {e}")))?;
            if let Some((name, _)) = listing.iter().find(|(_, e)| e.kind != Kind::File) {
                return Err(not_store(format!(
                    "it holds no versions but holds {}",
                    Escaped(Path::new(name))
                )));
            }
        }
        Ok(LinkDest { tree })
    }

    /// The other store's latest version now (its directory and manifest), or `None` if it has
    /// none or cannot be read; that only costs sharing this pass, so it is logged, not an
    /// error. Read anew at every pass: the other store rotates on its own.
    pub fn latest(&self) -> Option<(PathBuf, Manifest)> {
        let shown = Escaped(self.tree.root());
        if let Err(err) = self.tree.check_root() {
            log::warn!("--link-dest {shown}: {err}; nothing shared with it");
            return None;
        }
        let read = Store::held(self.tree.clone()).and_then(|store| match store.latest() {
            Some(v) => Ok(Some((v.manifest()?, v.dir))),
            None => Ok(None),
        });
        match read {
            Ok(Some((manifest, dir))) => Some((dir, manifest)),
            Ok(None) => {
                log::info!("--link-dest {shown} holds no version yet; nothing shared with it");
                None
            }
            Err(err) => {
                log::warn!(
                    "--link-dest {shown}: {}; nothing shared with it",
                    one_line(&err)
                );
                None
            }
        }
    }
}

fn one_line(err: &StoreError) -> String {
    sync_core::error::one_line(err)
}
