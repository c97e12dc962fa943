//! Where versions live, which are kept, and how they rotate, atomically.
//!
//! In VDIR, every kept version has a public name, a link `NAME -> .current/NAME`: the newest
//! `N` (the retention's `last`) are `_0` … `_{N-1}`, the latest last, and older ones kept by
//! the retention's calendar rules are named by their date, `YYYY-MM-DD_HH-MM-SS` in local time.
//! `.current` is a link to a generation directory `.gen-G`, whose links `NAME -> ../.v-ID` name
//! the version trees `.v-ID` (each with its manifest `.v-ID.manifest` beside it); `ID` starts
//! with the time of the pass that made the version, in nanoseconds (hex), which is how a
//! version records its date. A rotation builds the new version under `.building-ID`, renames
//! it to `.v-ID`, writes generation `.gen-(G+1)`, and then swaps `.current` with one `rename`:
//! whenever the process is killed, every reader sees the old set of versions or the new one,
//! never a mix. Whatever the current generation does not reference is a leftover of an
//! interrupted rotation or a version the retention let go, and is removed at the next pass.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use sync_core::model::Kind;
use sync_core::tree::{LocalTree, Tree};

use crate::manifest::{Manifest, ManifestError};
use crate::retention::Retention;

const CURRENT: &str = ".current";
const GEN_PREFIX: &str = ".gen-";
const VERSION_PREFIX: &str = ".v-";
const BUILD_PREFIX: &str = ".building-";
const MANIFEST_SUFFIX: &str = ".manifest";
/// What a restore replaced is kept in `before-restore-YYYYMMDD-HHMMSS` (`-2` … if taken).
pub const KEPT_BY_RESTORE: &str = "before-restore-";
/// What a restore of some paths (`--path`) replaced: those paths only.
pub const KEPT_BY_PATH_RESTORE: &str = "before-path-restore-";

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
    /// Its public name in VDIR: `_k`, or its date.
    pub name: String,
    /// The directory holding its tree (`VDIR/.v-ID`).
    pub dir: PathBuf,
    /// When the pass that made it ran.
    pub time: Timestamp,
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
    /// The kept versions, oldest first.
    kept: Vec<Kept>,
}

/// A kept version: its store id (`.v-ID`) and its public name.
#[derive(Debug, Clone)]
struct Kept {
    id: String,
    name: String,
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
                    kept: Vec::new(),
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
        let mut kept: Vec<Kept> = Vec::new();
        let listing = tree.list(&target, &|_| false).map_err(io_err(&gen_dir))?;
        for (name, entry) in listing {
            let Some(name) = name.to_str().filter(|n| public_name(n)) else {
                continue;
            };
            let path = gen_dir.join(name);
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
                .filter(|id| time_of(id).is_some() && !id.contains('/'))
                .ok_or_else(|| {
                    io_err(&path)(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "does not point to a version",
                    ))
                })?;
            kept.push(Kept {
                id: id.to_string(),
                name: name.to_string(),
            });
        }
        // The numbered ones are the newest, in their order, whatever their dates say (a
        // clock set back); the dated ones come before them, by date.
        kept.sort_by_key(|k| {
            let index = version_index(OsStr::new(&k.name));
            (index.is_some(), index, time_of(&k.id), k.id.clone())
        });
        kept.dedup_by(|a, b| a.id == b.id);
        Ok(Store {
            vdir: vdir.to_path_buf(),
            tree,
            generation,
            kept,
        })
    }

    /// The kept versions, oldest first, under their public names.
    pub fn versions(&self) -> Vec<Version> {
        self.kept.iter().map(|k| self.version(k)).collect()
    }

    fn version(&self, kept: &Kept) -> Version {
        Version {
            name: kept.name.clone(),
            dir: self.vdir.join(&kept.id),
            time: time_of(&kept.id).unwrap_or_default(),
        }
    }

    /// The newest version, if any.
    pub fn latest(&self) -> Option<Version> {
        self.kept.last().map(|k| self.version(k))
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

    /// A fresh directory to build the next version in, and the id it will have: the version
    /// is dated `time`, when its pass ran.
    ///
    /// Fails if it cannot be created.
    pub fn start_build(&self, time: Timestamp) -> Result<Build, StoreError> {
        // The real clock and the process make the id unique whatever `time` says.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dated = u128::try_from(time.as_nanosecond()).unwrap_or_default();
        let id = format!("{VERSION_PREFIX}{dated:x}-{now:x}-{:x}", std::process::id());
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

    /// Makes `build` (complete, with `manifest`) the newest version, and keeps of the others
    /// those `retention` keeps; the switch is one atomic rename. Then removes what no longer
    /// belongs. Returns the new version and how many older ones were let go.
    ///
    /// Fails if a step before the switch fails (the old versions then stay as they were).
    pub fn commit(
        &mut self,
        build: Build,
        manifest: &Manifest,
        retention: &Retention,
    ) -> Result<(Version, usize), StoreError> {
        let vdir = self.vdir.clone();
        let final_dir = vdir.join(&build.id);
        let tree = &self.tree;
        // The version's data reaches the disk before any name points to it.
        tree.flush().map_err(io_err(&build.dir))?;
        let mut manifest_path = final_dir.clone().into_os_string();
        manifest_path.push(MANIFEST_SUFFIX);
        manifest.write(Path::new(&manifest_path))?;
        tree.rename_over(&build.name, Path::new(&build.id))
            .map_err(io_err(&final_dir))?;

        let mut ids: Vec<String> = self.kept.iter().map(|k| k.id.clone()).collect();
        ids.push(build.id);
        let times: Vec<Timestamp> = ids
            .iter()
            .map(|id| time_of(id).unwrap_or_default())
            .collect();
        let keep = retention.keep(&times, sync_core::display::local_zone());
        let dropped = keep.iter().filter(|k| !**k).count();
        let ids: Vec<(String, Timestamp)> = ids
            .into_iter()
            .zip(times)
            .zip(keep)
            .filter_map(|(it, k)| k.then_some(it))
            .collect();
        let kept = name_versions(ids, retention.last.max(1) as usize);
        let generation = self.generation + 1;
        let gen_name = format!("{GEN_PREFIX}{generation}");
        let gen_dir = vdir.join(&gen_name);
        let gen_rel = Path::new(&gen_name);
        // A leftover of a killed rotation may hold this name already.
        tree.remove_all(gen_rel).map_err(io_err(&gen_dir))?;
        tree.make_store_dir(gen_rel).map_err(io_err(&gen_dir))?;
        for k in &kept {
            let link = gen_rel.join(&k.name);
            tree.make_link(&link, &Path::new("..").join(&k.id))
                .map_err(io_err(&vdir.join(&link)))?;
        }
        tree.sync_dir(gen_rel).map_err(io_err(&gen_dir))?;
        // Public names for the versions the new generation holds; until the switch below
        // they resolve to nothing, as they did before. A dated name someone else took is
        // left to them: the version stays reachable through `.current`.
        for k in &kept {
            let public = Path::new(&k.name);
            match tree.read_link(public) {
                Ok(t) if t == Path::new(CURRENT).join(&k.name) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    tree.make_link(public, &Path::new(CURRENT).join(&k.name))
                        .map_err(io_err(&vdir.join(public)))?;
                }
                _ => log::warn!(
                    "{} is not a version link made by oneway; the version dated so is reached as {}",
                    vdir.join(public).display(),
                    vdir.join(CURRENT).join(public).display()
                ),
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
        self.kept = kept;
        self.clean();
        let version = self.latest().expect("the new version is kept");
        Ok((version, dropped))
    }

    /// The directories in which restores kept what they replaced, oldest first, dated by
    /// their names.
    pub fn kept_by_restores(&self) -> Vec<Version> {
        let Ok(listing) = self.tree.list(Path::new(""), &|_| false) else {
            return Vec::new();
        };
        let mut kept: Vec<Version> = listing
            .into_iter()
            .filter(|(_, entry)| entry.is_dir())
            .filter_map(|(name, _)| {
                let name = name.to_str()?.to_string();
                let time = restore_time(&name)?;
                Some(Version {
                    dir: self.vdir.join(&name),
                    name,
                    time,
                })
            })
            .collect();
        kept.sort_by(|a, b| (a.time, &a.name).cmp(&(b.time, &b.name)));
        kept
    }

    /// Removes the directories kept by restores that `retention` no longer keeps (the newest
    /// always stays). Failures are logged and retried at the next pass.
    pub fn prune_kept_by_restores(&self, retention: &Retention) {
        let kept = self.kept_by_restores();
        let times: Vec<Timestamp> = kept.iter().map(|k| k.time).collect();
        let keep = retention.keep(&times, sync_core::display::local_zone());
        for (k, _) in kept.iter().zip(keep).filter(|(_, keep)| !keep) {
            match self.tree.remove_all(Path::new(&k.name)) {
                Ok(()) => log::info!(
                    "let go of {}, kept by a restore, that the retention no longer keeps",
                    k.dir.display()
                ),
                Err(err) => log::warn!("cannot remove {}: {err}", k.dir.display()),
            }
        }
    }

    /// Removes leftovers: generations other than the current one, version trees and
    /// manifests it does not reference, half-built versions, and public names `_k` that name
    /// no current version.
    /// Failures are logged, never fatal: they are retried at the next pass.
    pub fn clean(&self) {
        let current_gen = format!("{GEN_PREFIX}{}", self.generation);
        let live: HashSet<&str> = self.kept.iter().map(|k| k.id.as_str()).collect();
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
            } else if public_name(name) {
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

/// The date a version's id records (the time of the pass that made it).
fn time_of(id: &str) -> Option<Timestamp> {
    let hex = id.strip_prefix(VERSION_PREFIX)?.split('-').next()?;
    let nanos = i128::from_str_radix(hex, 16).ok()?;
    Timestamp::from_nanosecond(nanos).ok()
}

/// The local time in the name of a directory kept by a restore.
fn restore_time(name: &str) -> Option<Timestamp> {
    let stamp = name
        .strip_prefix(KEPT_BY_RESTORE)
        .or_else(|| name.strip_prefix(KEPT_BY_PATH_RESTORE))?
        .get(..15)?;
    let civil = jiff::civil::DateTime::strptime("%Y%m%d-%H%M%S", stamp).ok()?;
    civil
        .to_zoned_datetime(sync_core::display::local_zone().clone())
        .ok()
        .map(|z| z.timestamp())
}

/// Whether `name` is one a generation may give a version: `_k`, or a date.
pub(crate) fn public_name(name: &str) -> bool {
    version_index(OsStr::new(name)).is_some() || dated_name(name)
}

/// `YYYY-MM-DD_HH-MM-SS`, with `_N` added where two versions share a second.
fn dated_name(name: &str) -> bool {
    let (stamp, more) = name.split_at_checked(19).unwrap_or((name, ""));
    let shape = stamp.len() == 19
        && stamp.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 | 13 | 16 => b == b'-',
            10 => b == b'_',
            _ => b.is_ascii_digit(),
        });
    shape
        && (more.is_empty()
            || more
                .strip_prefix('_')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
}

/// Public names for kept versions (oldest first): the newest `last` are `_0` … `_{last-1}`
/// (the latest last; with fewer, the numbers end at `_{last-1}`), the others their local
/// date, made unique with `_2`, `_3` … where two share a second.
fn name_versions(ids: Vec<(String, Timestamp)>, last: usize) -> Vec<Kept> {
    let numbered = ids.len().min(last);
    let dated = ids.len() - numbered;
    let mut taken: HashSet<String> = HashSet::new();
    ids.into_iter()
        .enumerate()
        .map(|(i, (id, time))| {
            let name = if i < dated {
                let stamp = time
                    .to_zoned_datetime(sync_core::display::local_zone().clone())
                    .strftime("%Y-%m-%d_%H-%M-%S")
                    .to_string();
                let mut name = stamp.clone();
                let mut n = 2;
                while !taken.insert(name.clone()) {
                    name = format!("{stamp}_{n}");
                    n += 1;
                }
                name
            } else {
                format!("_{}", last - numbered + (i - dated))
            };
            Kept { id, name }
        })
        .collect()
}

/// `_k` → k.
fn version_index(name: &OsStr) -> Option<u32> {
    let digits = name.as_bytes().strip_prefix(b"_")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}
