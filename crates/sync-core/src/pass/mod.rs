//! One pass of each kind, from the scan to the state it leaves: a mirror ([`mirror`]) and a
//! two-way sync ([`twoway`]). (The versioned pass lives in the `versioning` crate.)

pub mod mirror;
pub mod twoway;

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::model::Side;
use crate::scan::Filter;
use crate::tree::meta::{self, Dropped, Refused};
use crate::tree::mounts::{self, Recorded};
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
    /// Leave alone what is below a mount point inside a root (`--one-file-system`).
    pub one_file_system: bool,
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

/// Warns, once per pass, of what copies could not keep: setuid and setgid bits and owners
/// of what `trees` listed, and the owners, attributes and nodes the destination refused.
pub fn warn_dropped(trees: &[&dyn Tree]) {
    for tree in trees {
        let Dropped { setid, owners } = tree.take_dropped();
        let name = tree.name();
        let name = crate::display::Escaped(Path::new(&name));
        if owners > 0 {
            log::warn!(
                "{owners} entries of {name} belong to another user: only root can give their \
                 copies that owner, so they are this user's"
            );
        }
        if setid > 0 {
            log::warn!(
                "{setid} setuid or setgid entries of {name} belong to another user: their \
                 copies are this user's and do not keep those bits"
            );
        }
    }
    let Refused {
        owners,
        xattrs,
        nodes,
    } = meta::take_refused();
    if owners > 0 {
        log::warn!("{owners} copies could not be given their owner or group");
    }
    if xattrs > 0 {
        log::warn!(
            "{xattrs} copies could not be given all their extended attributes or ACLs (the \
             file system or this user's rights refuse them)"
        );
    }
    if nodes > 0 {
        log::warn!("{nodes} devices, sockets or FIFOs could not be created (only root may)");
    }
}

/// Sets a pass up for the file systems mounted inside the roots of `sides`: with
/// `--one-file-system`, what is below a mount point is left alone on both sides; a directory
/// that was a mount point at the last pass (as `record` says) and is not one now is fenced
/// (nothing below it is changed, as below a directory that cannot be read: an unmounted drive
/// must not read as its content deleted) until it is mounted again, or a pass with `--force`
/// takes it as it is. Writes the record for the next pass at once (not on a dry run).
pub fn prepare_mounts(opts: &PassOptions, sides: &[Side], record: Option<&Path>) {
    let last = record.map(Recorded::load).unwrap_or_default();
    let mut next = Recorded::default();
    let mut uncrossed = Vec::new();
    for &side in sides {
        let now = mounts::mounted_under(opts.root(side)).unwrap_or_else(|err| {
            log::warn!("cannot read the list of mounted file systems: {err}");
            Vec::new()
        });
        let tree = opts.tree(side);
        let mut fenced = Vec::new();
        for rel in &last.sides[side as usize] {
            let unmounted = !now.contains(rel) && tree.stat(rel).is_ok_and(|e| e.is_dir());
            if !unmounted || opts.force {
                continue;
            }
            log::warn!(
                "{} {} was a mount point at the last pass and is not one now: nothing under it \
                 is changed until it is mounted again (or a pass with --force takes it as it is)",
                side.name(),
                crate::display::Escaped(&opts.root(side).join(rel))
            );
            fenced.push((
                rel.clone(),
                "it was a mount point at the last pass and is not one now".to_string(),
            ));
        }
        next.sides[side as usize] = now
            .iter()
            .cloned()
            .chain(fenced.iter().map(|(rel, _)| rel.clone()))
            .collect();
        if opts.one_file_system {
            uncrossed.extend(now);
        }
        tree.fence(fenced);
    }
    opts.filter.leave_contents_of(uncrossed);
    if let Some(path) = record
        && !opts.dry_run
        && next != last
        && let Err(err) = next.save(path)
    {
        log::warn!(
            "cannot record the mount points for the next pass in {}: {err}",
            path.display()
        );
    }
}
