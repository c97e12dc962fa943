//! Where versions live and how they rotate, atomically.
//!
//! In VDIR, `_0` … `_{N-1}` are links `_k -> .current/_k`, made once. `.current` is a link to
//! a generation directory `.gen-G`, whose links `_k -> ../.v-ID` name the version trees
//! `.v-ID` (each with its manifest `.v-ID.manifest` beside it). A rotation builds the new
//! version under `.building-ID`, renames it to `.v-ID`, writes generation `.gen-(G+1)`, and
//! then swaps `.current` with one `rename`: whenever the process is killed, every reader sees
//! the old set of versions or the new one, never a mix. Whatever the current generation does
//! not reference is a leftover of an interrupted rotation and is removed at the next pass.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sync_core::model::Kind;
use sync_core::tree::{LocalTree, Tree};

use crate::manifest::{Manifest, ManifestError};

const CURRENT: &str = ".current";
const GEN_PREFIX: &str = ".gen-";
const VERSION_PREFIX: &str = ".v-";
const BUILD_PREFIX: &str = ".building-";
const MANIFEST_SUFFIX: &str = ".manifest";

/// A fault of the version store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file of the store could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A name we would manage is taken by something we did not make.
    #[error(
        "{path} exists and is not a version link made by oneway; move it away before keeping versions in {vdir}"
    )]
    Foreign {
        /// The foreign entry.
        path: PathBuf,
        /// The version directory.
        vdir: PathBuf,
    },
    /// A manifest is missing or damaged.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One stored version.
#[derive(Debug, Clone)]
pub struct Version {
    /// Its public name in VDIR, `_k`.
    pub name: String,
    /// The directory holding its tree (`VDIR/.v-ID`).
    pub dir: PathBuf,
}

impl Version {
    /// The manifest file beside the version's tree.
    pub fn manifest_path(&self) -> PathBuf {
        let mut p = self.dir.clone().into_os_string();
        p.push(MANIFEST_SUFFIX);
        PathBuf::from(p)
    }

    /// Reads the version's manifest.
    ///
    /// Fails if it is missing or damaged.
    pub fn manifest(&self) -> Result<Manifest, ManifestError> {
        Manifest::read(&self.manifest_path())
    }
}

/// The versions kept in one directory, reached through the tree interface.
#[derive(Debug)]
pub struct Store {
    vdir: PathBuf,
    tree: LocalTree,
    generation: u64,
    /// Store ids (`.v-ID` names), oldest first.
    ids: Vec<String>,
}

impl Store {
    /// Opens the versions in `vdir` (none if it holds no `.current` yet).
    ///
    /// Fails if the current generation cannot be read.
    pub fn open(vdir: &Path) -> Result<Store, StoreError> {
        Store::held(LocalTree::open(vdir).map_err(io_err(vdir))?)
    }

    /// Opens the versions in the directory `tree` holds (none if it holds no `.current` yet).
    ///
    /// Fails if the current generation cannot be read.
    pub fn held(tree: LocalTree) -> Result<Store, StoreError> {
        let vdir = tree.root().to_path_buf();
        let vdir = vdir.as_path();
        let current = vdir.join(CURRENT);
        let target = match tree.read_link(Path::new(CURRENT)) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Store {
                    vdir: vdir.to_path_buf(),
                    tree,
                    generation: 0,
                    ids: Vec::new(),
                });
            }
            Err(e) => return Err(io_err(&current)(e)),
        };
        let generation = target
            .to_str()
            .and_then(|t| t.strip_prefix(GEN_PREFIX))
            .and_then(|g| g.parse().ok())
            .ok_or_else(|| {
                io_err(&current)(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "does not point to a generation",
                ))
            })?;
        let gen_dir = vdir.join(&target);
        let mut named: Vec<(u32, String)> = Vec::new();
        let listing = tree.list(&target, &|_| false).map_err(io_err(&gen_dir))?;
        for (name, entry) in listing {
            let Some(k) = version_index(&name) else {
                continue;
            };
            let path = gen_dir.join(&name);
            let Kind::Symlink(link) = entry.kind else {
                return Err(io_err(&path)(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "is not a link to a version",
                )));
            };
            let id = link
                .strip_prefix("..")
                .ok()
                .and_then(|p| p.to_str())
                .filter(|id| id.starts_with(VERSION_PREFIX) && !id.contains('/'))
                .ok_or_else(|| {
                    io_err(&path)(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "does not point to a version",
                    ))
                })?;
            named.push((k, id.to_string()));
        }
        named.sort();
        Ok(Store {
            vdir: vdir.to_path_buf(),
            tree,
            generation,
            ids: named.into_iter().map(|(_, id)| id).collect(),
        })
    }

    /// The versions, oldest first, named as `keep` versions are named (the newest is
    /// `_{keep-1}`).
    pub fn versions(&self, keep: usize) -> Vec<Version> {
        let skip = self.ids.len().saturating_sub(keep);
        let kept = &self.ids[skip..];
        let first = keep - kept.len();
        kept.iter()
            .enumerate()
            .map(|(i, id)| Version {
                name: format!("_{}", first + i),
                dir: self.vdir.join(id),
            })
            .collect()
    }

    /// The newest version, if any.
    pub fn latest(&self) -> Option<Version> {
        self.ids.last().map(|id| Version {
            name: String::new(),
            dir: self.vdir.join(id),
        })
    }

    /// Checks that the public names `_0` … `_{keep-1}` are free or ours.
    ///
    /// Fails with [`StoreError::Foreign`] if one is a real directory or file, or a link that
    /// we did not make.
    pub fn check_names(&self, keep: usize) -> Result<(), StoreError> {
        for k in 0..keep {
            let name = format!("_{k}");
            let path = self.vdir.join(&name);
            match self.tree.read_link(Path::new(&name)) {
                Ok(t) if t == Path::new(CURRENT).join(&name) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                _ => {
                    return Err(StoreError::Foreign {
                        path,
                        vdir: self.vdir.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// A fresh directory to build the next version in, and the id it will have.
    ///
    /// Fails if it cannot be created.
    pub fn start_build(&self) -> Result<Build, StoreError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let id = format!("{VERSION_PREFIX}{nanos:x}-{:x}", std::process::id());
        let name = format!("{BUILD_PREFIX}{}", &id[VERSION_PREFIX.len()..]);
        let dir = self.vdir.join(&name);
        self.tree
            .make_store_dir(Path::new(&name))
            .map_err(io_err(&dir))?;
        Ok(Build {
            id,
            name: name.into(),
            dir,
            tree: self.tree.clone(),
        })
    }

    /// Makes `build` (complete, with `manifest`) the newest version, keeping `keep`
    /// versions in all; the switch is one atomic rename. Then removes what no longer belongs.
    ///
    /// Fails if a step before the switch fails (the old versions then stay as they were).
    pub fn commit(
        &mut self,
        build: Build,
        manifest: &Manifest,
        keep: usize,
    ) -> Result<Version, StoreError> {
        let vdir = self.vdir.clone();
        let final_dir = vdir.join(&build.id);
        let version = Version {
            name: format!("_{}", keep - 1),
            dir: final_dir.clone(),
        };
        let tree = &self.tree;
        // The version's data reaches the disk before any name points to it.
        tree.flush().map_err(io_err(&build.dir))?;
        manifest.write(&version.manifest_path())?;
        tree.rename_over(&build.name, Path::new(&build.id))
            .map_err(io_err(&final_dir))?;

        let mut ids = self.ids.clone();
        ids.push(build.id);
        let skip = ids.len().saturating_sub(keep);
        let ids: Vec<String> = ids[skip..].to_vec();
        let generation = self.generation + 1;
        let gen_name = format!("{GEN_PREFIX}{generation}");
        let gen_dir = vdir.join(&gen_name);
        let gen_rel = Path::new(&gen_name);
        // A leftover of a killed rotation may hold this name already.
        tree.remove_all(gen_rel).map_err(io_err(&gen_dir))?;
        tree.make_store_dir(gen_rel).map_err(io_err(&gen_dir))?;
        let first = keep - ids.len();
        for (i, id) in ids.iter().enumerate() {
            let link = gen_rel.join(format!("_{}", first + i));
            tree.make_link(&link, &Path::new("..").join(id))
                .map_err(io_err(&vdir.join(&link)))?;
        }
        tree.sync_dir(gen_rel).map_err(io_err(&gen_dir))?;
        // Public names for the versions the new generation holds; until the switch below
        // they resolve to nothing, as they did before.
        for k in first..keep {
            let name = format!("_{k}");
            if tree.stat(Path::new(&name)).is_err() {
                tree.make_link(Path::new(&name), &Path::new(CURRENT).join(&name))
                    .map_err(io_err(&vdir.join(&name)))?;
            }
        }
        let tmp_link = PathBuf::from(format!("{CURRENT}.tmp"));
        tree.remove_all(&tmp_link)
            .map_err(io_err(&vdir.join(&tmp_link)))?;
        tree.make_link(&tmp_link, gen_rel)
            .map_err(io_err(&vdir.join(&tmp_link)))?;
        let current = vdir.join(CURRENT);
        // The one step that changes what every reader sees.
        tree.rename_over(&tmp_link, Path::new(CURRENT))
            .map_err(io_err(&current))?;
        tree.sync_dir(Path::new("")).map_err(io_err(&vdir))?;
        self.generation = generation;
        self.ids = ids;
        self.clean();
        Ok(version)
    }

    /// Removes leftovers: generations other than the current one, version trees and
    /// manifests it does not reference, half-built versions, and public names `_k` that name
    /// no current version.
    /// Failures are logged, never fatal: they are retried at the next pass.
    pub fn clean(&self) {
        let current_gen = format!("{GEN_PREFIX}{}", self.generation);
        let live: HashSet<&str> = self.ids.iter().map(String::as_str).collect();
        let Ok(listing) = self.tree.list(Path::new(""), &|_| false) else {
            return;
        };
        for (name, entry) in listing {
            let Some(name) = name.to_str() else { continue };
            let stale = if let Some(rest) = name.strip_prefix(VERSION_PREFIX) {
                let id = rest.strip_suffix(MANIFEST_SUFFIX).unwrap_or(rest);
                !live.contains(format!("{VERSION_PREFIX}{id}").as_str())
            } else if name.starts_with(GEN_PREFIX) {
                name != current_gen
            } else if name.starts_with(BUILD_PREFIX)
                || name.starts_with(sync_core::state::text::TEMP_PREFIX)
                || name == ".current.tmp"
            {
                true
            } else if version_index(OsStr::new(name)).is_some() {
                // Ours, and naming no version of the current generation.
                entry.kind == Kind::Symlink(Path::new(CURRENT).join(name))
                    && !self.tree.resolves(Path::new(name))
            } else {
                false
            };
            if stale && let Err(err) = self.tree.remove_all(Path::new(name)) {
                log::warn!(
                    "cannot remove leftover {}: {err}",
                    self.vdir.join(name).display()
                );
            }
        }
    }
}

/// A version being built.
#[derive(Debug)]
pub struct Build {
    id: String,
    /// Its name in the store.
    name: PathBuf,
    /// The directory to fill.
    pub dir: PathBuf,
    tree: LocalTree,
}

impl Build {
    /// Throws the half-built version away (after a stop or a failure).
    pub fn abandon(self) {
        if let Err(err) = self.tree.remove_all(&self.name) {
            log::warn!(
                "cannot remove {}: {err}; removed at the next pass",
                self.dir.display()
            );
        }
    }
}

/// `_k` → k.
fn version_index(name: &OsStr) -> Option<u32> {
    let digits = name.as_bytes().strip_prefix(b"_")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}
