//! Hard links in a two-way pass: names that share an inode on the side a file comes from share
//! one where it arrives, and a metadata change never reaches, through a shared inode, a name
//! that must not get it.
//!
//! Reconcile decides per path and knows nothing of inodes; this pass over its steps (bound to
//! the scan's entries) knows both sides' inodes:
//!
//! - Copies into a side whose sources share an inode on the other side: the first (in path
//!   order) is copied, the others are hard-linked to it ([`Step::Link`], made once every copy
//!   is done), whatever order the scan met them in. Where that inode has a further name that
//!   both sides already hold alike, and whose inode here holds no name the other side's does
//!   not, every copy is linked to that name instead (`ln old new` on one side arrives as a
//!   link on the other).
//! - A copy always makes a new inode: a name that arrives is split from whatever names its old
//!   inode had here.
//! - Names of one inode given metadata: one [`Step::SetMeta`] gives it to all; where the
//!   names are to end with different metadata, those that differ from what the inode keeps are
//!   copied afresh from the other side (split), where the other side holds them as they are to
//!   be.
//!
//! Not handled: a change of link structure alone (names linked or unlinked with no change of
//! content or metadata on either side) is not carried, so two sides whose structure differs
//! with equal contents stay as they are; where a split cannot be made (the other side is
//! being written at that name too), a metadata change reaches the inode's other names here,
//! and the next pass carries it as their own change. FIFOs, sockets and devices with several
//! names are made as separate nodes.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::model::{Entry, Kind, Meta, Side};
use crate::plan::step::{Known, Step};

/// An inode, by device and number.
type Inode = (u64, u64);

/// The files of one side that have several names, as scanned: `(path, entry)` in path order.
pub type Linked<'a> = [(&'a Path, &'a Entry)];

/// Rewrites `steps` (a two-way pass's, bound to the scan's entries) so that hard links are
/// kept as the module's doc says. `linked` holds, by [`Side`], the files of each side that have
/// several names; `entry` gives what the scan saw at a path of a side.
pub fn keep_links<'a>(
    steps: &mut Vec<Step>,
    linked: [&Linked<'a>; 2],
    entry: impl Fn(Side, &Path) -> Option<&'a Entry>,
) {
    if linked.iter().all(|names| names.is_empty()) {
        return;
    }
    let groups = linked.map(|names| {
        let mut by_inode: HashMap<Inode, Vec<&Path>> = HashMap::new();
        for (rel, e) in names {
            by_inode.entry((e.dev, e.ino)).or_default().push(rel);
        }
        by_inode
    });
    let sides = Sides {
        names: linked
            .iter()
            .flat_map(|names| names.iter().map(|n| n.0))
            .collect(),
        groups,
        entry,
    };
    let mut dropped = HashSet::new();
    let splits = sides.split_metadata(steps, &mut dropped);
    sides.link_copies(steps, &dropped, &splits);
    let mut i = 0;
    steps.retain(|_| {
        i += 1;
        !dropped.contains(&(i - 1))
    });
    sides.reopen_parents(steps, &splits);
}

/// What [`keep_links`] knows of both sides.
struct Sides<'a, F> {
    /// Every name of a file with several names, on either side.
    names: HashSet<&'a Path>,
    /// The names of each inode with several, by side.
    groups: [HashMap<Inode, Vec<&'a Path>>; 2],
    /// What the scan saw at a path of a side.
    entry: F,
}

/// Where the steps that change one of [`Sides::names`] are, by side and path: those of a
/// name's own (a directory's step is not), and not dropped.
type Index<'s> = HashMap<(Side, &'s Path), usize>;

impl<'a, F: Fn(Side, &Path) -> Option<&'a Entry>> Sides<'a, F> {
    /// Where the steps that change a name with several names are (a path has at most one
    /// metadata step per side, and then no other step).
    fn index<'s>(&self, steps: &'s [Step], dropped: &HashSet<usize>) -> Index<'s> {
        steps
            .iter()
            .enumerate()
            .filter(|(i, step)| {
                !matches!(step, Step::Dir { .. })
                    && !dropped.contains(i)
                    && self.names.contains(step.rel())
            })
            .map(|(i, step)| ((step.side(), step.rel()), i))
            .collect()
    }

    /// Makes each inode given metadata get it once (the other steps go to `dropped`), and
    /// splits from it, by a fresh copy from the other side, the names that are to end with
    /// other metadata than the inode keeps. Gives the (side, path) of those copies.
    fn split_metadata(
        &self,
        steps: &mut [Step],
        dropped: &mut HashSet<usize>,
    ) -> HashSet<(Side, PathBuf)> {
        let at = self.index(steps, dropped);
        let mut splits = HashSet::new();
        let mut rewrites: Vec<(usize, Step)> = Vec::new();
        for side in [Side::Source, Side::Backup] {
            for names in self.groups[side as usize].values() {
                // The names that keep the inode, and the metadata step of each (`None`: it
                // ends with the metadata it has).
                let mut keeping: Vec<(&Path, Option<(usize, Meta)>)> = Vec::new();
                for &rel in names {
                    match at.get(&(side, rel)).map(|&i| (i, &steps[i])) {
                        None => keeping.push((rel, None)),
                        Some((i, Step::SetMeta { meta, .. })) => {
                            keeping.push((rel, Some((i, *meta))))
                        }
                        // Replaced or removed: the name leaves the inode.
                        Some(_) => {}
                    }
                }
                if keeping.iter().all(|(_, set)| set.is_none()) {
                    continue;
                }
                // The inode keeps its metadata if a name does; else it takes the first change.
                let kept: Option<Meta> = if keeping.iter().any(|(_, set)| set.is_none()) {
                    None
                } else {
                    keeping.iter().find_map(|(_, set)| set.map(|(_, m)| m))
                };
                let mut given = false;
                for (rel, set) in keeping {
                    let Some((i, meta)) = set else { continue };
                    if Some(meta) == kept {
                        // One step gives the inode its metadata, for all its names.
                        if given {
                            dropped.insert(i);
                        }
                        given = true;
                        continue;
                    }
                    if let Some(copy) = self.split(&steps[i], &at, steps) {
                        rewrites.push((i, copy));
                        splits.insert((side, rel.to_path_buf()));
                    }
                }
            }
        }
        for (i, step) in rewrites {
            steps[i] = step;
        }
        splits
    }

    /// Makes the directories that hold `splits` (copies where reconcile planned only a
    /// metadata step, which leaves a directory's time alone) get their time back once the
    /// copies are done, as every directory whose entries a pass changes does.
    fn reopen_parents(&self, steps: &mut Vec<Step>, splits: &HashSet<(Side, PathBuf)>) {
        let parents: HashSet<(Side, &Path)> = splits
            .iter()
            .filter_map(|(side, rel)| Some((*side, rel.parent()?)))
            .collect();
        let mut found = HashSet::new();
        for step in steps.iter_mut() {
            if let Step::Dir {
                side,
                rel,
                want: Some(_),
                changes_inside,
                ..
            } = step
                && parents.contains(&(*side, rel.as_path()))
            {
                *changes_inside = true;
                found.insert((*side, rel.clone()));
            }
        }
        for (side, parent) in parents {
            if found.contains(&(side, parent.to_path_buf())) {
                continue;
            }
            // No step of its own: it holds its final metadata already.
            if let Some(seen) = (self.entry)(side, parent) {
                steps.push(Step::Dir {
                    side,
                    rel: parent.to_path_buf(),
                    seen: Some(seen.clone()),
                    want: Some(seen.meta()),
                    changes_inside: true,
                });
            }
        }
    }

    /// The copy that gives the file of `set_meta` an inode of its own, from the other side;
    /// `None` where the other side is written at that path this pass (its content is not yet
    /// what this side is to hold) or holds no file there.
    fn split(&self, set_meta: &Step, at: &Index<'_>, steps: &[Step]) -> Option<Step> {
        let Step::SetMeta {
            side,
            rel,
            seen,
            digest: Some(digest),
            ..
        } = set_meta
        else {
            return None;
        };
        let other = side.other();
        // A metadata step of its own there is fine: it runs before the copies, and the copy
        // carries what it gives.
        if at
            .get(&(other, rel.as_path()))
            .is_some_and(|&j| !matches!(steps[j], Step::SetMeta { .. }))
        {
            return None;
        }
        let source = (self.entry)(other, rel).filter(|e| e.kind == Kind::File)?;
        Some(Step::Copy {
            side: *side,
            rel: rel.clone(),
            source: Some(source.clone()),
            known: Known::Digest {
                digest: *digest,
                exact: true,
            },
            replace: Some(Box::new(seen.clone())),
            link: None,
        })
    }

    /// Turns copies into a side whose sources share an inode into one copy and links to it,
    /// or into links to a name of that inode that this side holds already (see the module's
    /// doc). Copies in `splits` are left alone: they are there to make an inode of their own.
    fn link_copies(
        &self,
        steps: &mut [Step],
        dropped: &HashSet<usize>,
        splits: &HashSet<(Side, PathBuf)>,
    ) {
        // Copies by the side written and the inode read.
        let mut copies: HashMap<(Side, Inode), Vec<usize>> = HashMap::new();
        for (i, step) in steps.iter().enumerate() {
            if let Step::Copy {
                side,
                rel,
                source: Some(source),
                ..
            } = step
                && source.is_linked()
                && !splits.contains(&(*side, rel.clone()))
            {
                copies
                    .entry((*side, (source.dev, source.ino)))
                    .or_default()
                    .push(i);
            }
        }
        let at = self.index(steps, dropped);
        let mut rewrites: Vec<(usize, Step)> = Vec::new();
        for ((side, inode), mut copied) in copies {
            copied.sort_by(|&a, &b| crate::model::path_order(steps[a].rel(), steps[b].rel()));
            let other = side.other();
            let names: &[&Path] = self.groups[other as usize]
                .get(&inode)
                .map_or(&[], Vec::as_slice);
            // No step changes the inode on the side read (a metadata step given to the name a
            // copy reads reaches all its names): what its other names hold here is what the
            // copies read.
            let untouched_there = names.iter().all(|rel| !at.contains_key(&(other, *rel)));
            let in_group: HashSet<&Path> = names.iter().copied().collect();
            // Whether each inode here holds only names of the group, asked once per inode.
            let mut within: HashMap<Inode, bool> = HashMap::new();
            let anchor = names.iter().copied().find(|&name| {
                untouched_there && self.kept_alike(side, name, (&in_group, &mut within), &at, steps)
            });
            let (existing, linked) = match anchor {
                Some(anchor) => (anchor.to_path_buf(), &copied[..]),
                None => (steps[copied[0]].rel().to_path_buf(), &copied[1..]),
            };
            for &i in linked {
                let Step::Copy {
                    side,
                    rel,
                    source: Some(source),
                    replace,
                    ..
                } = &steps[i]
                else {
                    unreachable!("grouped as a copy");
                };
                let link = Step::Link {
                    side: *side,
                    rel: rel.clone(),
                    existing: existing.clone(),
                    source: source.clone(),
                    replace: replace.as_deref().cloned(),
                };
                rewrites.push((i, link));
            }
        }
        for (i, step) in rewrites {
            steps[i] = step;
        }
    }

    /// Whether `side` holds at `name` a file that ends as the other side's (nothing replaces
    /// it: at most a metadata step), on an inode whose names here are all in `in_group`, the
    /// names of the other side's inode: a copy of that inode may be linked to it. (`within`
    /// remembers the answer for each inode here.)
    fn kept_alike(
        &self,
        side: Side,
        name: &Path,
        (in_group, within): (&HashSet<&Path>, &mut HashMap<Inode, bool>),
        at: &Index<'_>,
        steps: &[Step],
    ) -> bool {
        let Some(here) = (self.entry)(side, name).filter(|e| e.kind == Kind::File) else {
            return false;
        };
        if at
            .get(&(side, name))
            .is_some_and(|&i| !matches!(steps[i], Step::SetMeta { .. }))
        {
            return false;
        }
        if !here.is_linked() {
            return true;
        }
        let inode = (here.dev, here.ino);
        *within.entry(inode).or_insert_with(|| {
            self.groups[side as usize]
                .get(&inode)
                .is_none_or(|own| own.iter().all(|n| in_group.contains(n)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Timestamp;

    /// A file with `nlink` names on inode `ino`.
    fn file(ino: u64, nlink: u64) -> Entry {
        Entry {
            kind: Kind::File,
            mode: 0o644,
            size: 3,
            mtime: Timestamp { secs: 9, nanos: 0 },
            ctime: Timestamp::default(),
            ino,
            dev: 1,
            uid: 0,
            gid: 0,
            xattrs: 0,
            nlink,
        }
    }

    /// A scanned side: entries by path.
    type Scanned = Vec<(PathBuf, Entry)>;

    fn copy(to: Side, rel: &str, source: &Entry) -> Step {
        Step::Copy {
            side: to,
            rel: rel.into(),
            source: Some(source.clone()),
            known: Known::Unread,
            replace: None,
            link: None,
        }
    }

    fn set_meta(side: Side, rel: &str, seen: &Entry, mode: u32) -> Step {
        Step::SetMeta {
            side,
            rel: rel.into(),
            seen: seen.clone(),
            meta: Meta {
                mode,
                ..seen.meta()
            },
            digest: Some([1; 32]),
        }
    }

    /// Runs [`keep_links`] over two scanned sides.
    fn kept(mut steps: Vec<Step>, source: &Scanned, backup: &Scanned) -> Vec<Step> {
        fn linked(side: &Scanned) -> Vec<(&Path, &Entry)> {
            side.iter()
                .filter(|(_, e)| e.is_linked())
                .map(|(rel, e)| (rel.as_path(), e))
                .collect()
        }
        let (ls, lb) = (linked(source), linked(backup));
        // The roots, as the pass gives them (an entry, whatever its kind, will do).
        let root = file(7, 1);
        let entry = |side: Side, rel: &Path| {
            let tree = if side == Side::Source { source } else { backup };
            match rel.as_os_str().is_empty() {
                true => Some(&root),
                false => tree.iter().find(|(r, _)| r == rel).map(|(_, e)| e),
            }
        };
        keep_links(&mut steps, [&ls, &lb], entry);
        steps
    }

    /// What each step does, in short (`copy a`, `link b -> a`, `meta a`), sorted.
    fn summary(steps: &[Step]) -> Vec<String> {
        let mut lines: Vec<String> = steps
            .iter()
            .map(|step| match step {
                Step::Copy { rel, .. } => format!("copy {}", rel.display()),
                Step::Link { rel, existing, .. } => {
                    format!("link {} -> {}", rel.display(), existing.display())
                }
                Step::SetMeta { rel, .. } => format!("meta {}", rel.display()),
                Step::Dir {
                    rel,
                    seen: Some(seen),
                    want: Some(want),
                    changes_inside: true,
                    ..
                } if seen.meta() == *want => format!("time back to {:?}", rel),
                other => format!("{other:?}"),
            })
            .collect();
        lines.sort();
        lines
    }

    /// Three names of one SOURCE inode, planned in any order: one copy, two links to it.
    #[test]
    fn copies_of_one_inode_become_one_copy_and_links_to_it() {
        let shared = file(5, 3);
        let source: Scanned = ["c", "a", "b"]
            .map(|n| (PathBuf::from(n), shared.clone()))
            .to_vec();
        let steps = ["c", "b", "a"]
            .map(|n| copy(Side::Backup, n, &shared))
            .to_vec();
        assert_eq!(
            summary(&kept(steps, &source, &Vec::new())),
            ["copy a", "link b -> a", "link c -> a"]
        );
    }

    /// A new name of a file both sides hold alike (`ln old new`) is linked to it.
    #[test]
    fn a_new_name_of_a_file_both_sides_hold_is_linked_to_it() {
        let shared = file(5, 2);
        let backup: Scanned = vec![
            ("new".into(), shared.clone()),
            ("old".into(), shared.clone()),
        ];
        let source: Scanned = vec![("old".into(), file(8, 1))];
        let steps = vec![copy(Side::Source, "new", &shared)];
        assert_eq!(
            summary(&kept(steps.clone(), &source, &backup)),
            ["link new -> old"]
        );
        // Unless SOURCE's `old` shares its inode with a name BACKUP's does not: it is copied.
        let source: Scanned = vec![("old".into(), file(8, 2)), ("other".into(), file(8, 2))];
        assert_eq!(summary(&kept(steps, &source, &backup)), ["copy new"]);
    }

    /// One inode given the same metadata under all its names: one step gives it.
    #[test]
    fn one_inode_is_given_its_metadata_once() {
        let shared = file(5, 2);
        let backup: Scanned = vec![("a".into(), shared.clone()), ("b".into(), shared.clone())];
        let source: Scanned = vec![("a".into(), file(1, 1)), ("b".into(), file(2, 1))];
        let steps = vec![
            set_meta(Side::Backup, "a", &shared, 0o600),
            set_meta(Side::Backup, "b", &shared, 0o600),
        ];
        assert_eq!(summary(&kept(steps, &source, &backup)), ["meta a"]);
    }

    /// A name whose inode keeps other names as they are, and that is to get metadata of its
    /// own, gets an inode of its own: a copy from the other side.
    #[test]
    fn a_name_to_end_unlike_its_inode_is_split_by_a_copy() {
        let shared = file(5, 2);
        let backup: Scanned = vec![("a".into(), shared.clone()), ("b".into(), shared.clone())];
        let source: Scanned = vec![("a".into(), file(1, 1)), ("b".into(), file(2, 1))];
        let steps = vec![set_meta(Side::Backup, "b", &shared, 0o600)];
        let steps = kept(steps, &source, &backup);
        // The copy moves its directory's time, which is then given back.
        assert_eq!(summary(&steps), ["copy b", "time back to \"\""]);
        let Some(Step::Copy {
            side,
            replace,
            known,
            ..
        }) = steps.iter().find(|s| matches!(s, Step::Copy { .. }))
        else {
            unreachable!()
        };
        assert_eq!(*side, Side::Backup);
        assert_eq!(replace.as_deref(), Some(&shared));
        assert!(matches!(known, Known::Digest { exact: true, .. }));
        // Where the other side is itself written at that name, the step is left as it was.
        let steps = vec![
            set_meta(Side::Backup, "b", &shared, 0o600),
            copy(Side::Source, "b", &shared),
        ];
        assert_eq!(
            summary(&kept(steps, &source, &backup)),
            ["copy b", "meta b"]
        );
    }
}
