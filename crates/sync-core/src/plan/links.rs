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
//! - A change of link structure alone (names linked or unlinked with no change of content or
//!   metadata: `ln -f a b`, or a name split into a copy of its own) is carried by
//!   [`carry_structure`]. The archive records the groups both sides held ([`record_links`]);
//!   a side changed the structure of a name if the names its inode has there differ from the
//!   name's recorded group. What one side changed, the other is made to match: a name is
//!   linked to its group's first name there ([`Step::Link`]: both hold the same content and
//!   metadata), or split by a fresh copy from the side that split it. Where both sides changed
//!   the same names differently, the structure of the side `--conflict` names (SOURCE for
//!   `newer`) is kept on both, and a warning says so: no content is lost, the names hold the
//!   same bytes and metadata. Only names that both sides hold alike, on inodes no step of the
//!   pass touches, are looked at; the rest waits for a pass that leaves them so.
//!
//! Not handled: where a split cannot be made (the other side is being written at that name
//! too), a metadata change reaches the inode's other names here, and the next pass carries it
//! as their own change. FIFOs, sockets and devices with several names are made as separate
//! nodes. An archive that records no groups (none yet, or written before they were recorded)
//! counts no change of structure: each side keeps its own that pass, and the groups recorded
//! then are those both sides hold, so that a link made on one side only before groups were
//! recorded is carried to the other on the next pass (nothing is lost either way: the names
//! hold the same bytes and metadata).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use checksum::Digest;

use crate::display::Escaped;
use crate::model::{Entry, Kind, Meta, Side, path_order};
use crate::plan::step::{Known, Step};
use crate::state::archive::LinkRecord;

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
    reopen_parents(steps, &splits, &sides.entry);
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

/// Makes the directories that hold `splits` (copies or links where reconcile planned no
/// such step, which leaves a directory's time alone) get their time back once the
/// copies are done, as every directory whose entries a pass changes does.
fn reopen_parents<'a>(
    steps: &mut Vec<Step>,
    splits: &HashSet<(Side, PathBuf)>,
    entry: impl Fn(Side, &Path) -> Option<&'a Entry>,
) {
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
        if let Some(seen) = entry(side, parent) {
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

/// Both sides, in the order their groups are kept by index.
const SIDES: [Side; 2] = [Side::Source, Side::Backup];

/// Adds to `steps` (a two-way pass's, bound to the scan's entries, after [`keep_links`]) the
/// links and splits that carry a change of link structure alone (see the module's doc).
/// `recorded` is what the archive records (`None`: nothing, and nothing is carried); `winner`
/// keeps its structure where both sides changed it; `alike` gives the digest of a file both
/// sides hold alike (same content and metadata, readable), `None` for any other path.
pub fn carry_structure<'s>(
    steps: &mut Vec<Step>,
    linked: [&Linked<'s>; 2],
    recorded: Option<&'s LinkRecord>,
    winner: Side,
    alike: impl Fn(&Path) -> Option<Digest>,
    entry: impl Fn(Side, &Path) -> Option<&'s Entry>,
) {
    let Some(recorded) = recorded else {
        return;
    };
    if recorded.is_empty() && linked.iter().all(|names| names.is_empty()) {
        return;
    }
    let (added, parents) = {
        let touched: HashSet<&Path> = steps
            .iter()
            .filter(|step| !matches!(step, Step::Dir { .. }))
            .map(Step::rel)
            .collect();
        let quiet = |rel: &Path| !touched.contains(rel) && alike(rel).is_some();
        // The names of each inode with several, by side, in path order.
        let mut names: [HashMap<Inode, Vec<&'s Path>>; 2] = Default::default();
        for (side, list) in linked.iter().enumerate() {
            for (rel, e) in list.iter() {
                names[side].entry((e.dev, e.ino)).or_default().push(rel);
            }
        }
        let mut candidates: Vec<&'s Path> = linked
            .iter()
            .flat_map(|list| list.iter().map(|(rel, _)| *rel))
            .chain(
                recorded
                    .iter()
                    .flat_map(|(further, first)| [further.as_path(), first.as_path()]),
            )
            .collect();
        candidates.sort_by(|a, b| path_order(a, b));
        candidates.dedup();
        // The names looked at (held alike, each of their inodes untouched on both sides), in
        // path order, and the inode of each by side.
        let mut inode: [HashMap<&'s Path, Inode>; 2] = Default::default();
        let eligible: Vec<&'s Path> = candidates
            .into_iter()
            .filter(|&rel| {
                quiet(rel)
                    && SIDES.iter().all(|&side| match entry(side, rel) {
                        Some(e) if e.kind == Kind::File => {
                            inode[side as usize].insert(rel, (e.dev, e.ino));
                            !e.is_linked()
                                || names[side as usize]
                                    .get(&(e.dev, e.ino))
                                    .is_some_and(|all| all.iter().all(|n| quiet(n)))
                        }
                        _ => false,
                    })
            })
            .collect();
        let in_q: HashSet<&Path> = eligible.iter().copied().collect();
        // The names looked at that share `rel`'s inode on `side`, `rel` among them.
        let group = |side: Side, rel: &'s Path| -> Vec<&'s Path> {
            match names[side as usize].get(&inode[side as usize][rel]) {
                Some(all) => all.iter().copied().filter(|n| in_q.contains(n)).collect(),
                None => vec![rel],
            }
        };
        let mut recorded_groups: HashMap<&Path, Vec<&'s Path>> = HashMap::new();
        for (further, first) in recorded {
            if in_q.contains(further.as_path()) {
                recorded_groups.entry(first).or_default().push(further);
            }
        }
        // The names looked at of `rel`'s recorded group, `rel` among them, in path order.
        let archived = |rel: &'s Path| -> Vec<&'s Path> {
            let first: &'s Path = recorded.get(rel).map_or(rel, PathBuf::as_path);
            let mut all: Vec<&'s Path> = recorded_groups.get(first).cloned().unwrap_or_default();
            if in_q.contains(first) {
                all.push(first);
            }
            all.sort_by(|a, b| path_order(a, b));
            all
        };
        // The names whose structure each side changed.
        let changed: [HashSet<&'s Path>; 2] = SIDES.map(|side| {
            eligible
                .iter()
                .copied()
                .filter(|&rel| group(side, rel) != archived(rel))
                .collect()
        });
        if changed.iter().all(HashSet::is_empty) {
            return;
        }
        let loser = winner.other();
        let (won, lost) = (&changed[winner as usize], &changed[loser as usize]);
        // The group each name is to end in, on both sides.
        let target: HashMap<&'s Path, Vec<&'s Path>> = eligible
            .iter()
            .map(|&rel| {
                let want = if won.contains(rel) {
                    if lost.contains(rel) && group(winner, rel) != group(loser, rel) {
                        log::warn!(
                            "hard links of {} changed on both sides: kept the {} ones (no content \
                             differs)",
                            Escaped(rel),
                            winner.name()
                        );
                    }
                    group(winner, rel)
                } else if lost.contains(rel) {
                    let mut g = group(loser, rel);
                    g.retain(|n| !won.contains(n));
                    g
                } else {
                    archived(rel)
                };
                (rel, want)
            })
            .collect();
        let blocks: Vec<&Vec<&'s Path>> = eligible
            .iter()
            .filter_map(|rel| target.get(rel).filter(|want| want[0] == *rel))
            .collect();
        let mut added: Vec<Step> = Vec::new();
        let mut parents: HashSet<(Side, PathBuf)> = HashSet::new();
        for side in SIDES {
            let other = side.other();
            let at = &inode[side as usize];
            // The inode each group keeps here: of those no earlier group keeps, the one that
            // holds most of its names (the others move to it).
            let mut claimed: HashSet<Inode> = HashSet::new();
            let keeps: Vec<Option<Inode>> = blocks
                .iter()
                .map(|block| {
                    let mut best: Option<(Inode, usize)> = None;
                    for rel in block.iter() {
                        let here = at[rel];
                        let held = block.iter().filter(|n| at[*n] == here).count();
                        if !claimed.contains(&here) && best.is_none_or(|(_, most)| held > most) {
                            best = Some((here, held));
                        }
                    }
                    let (kept, _) = best?;
                    claimed.insert(kept);
                    Some(kept)
                })
                .collect();
            // A step re-checks the name it replaces, whose inode's change time moves with any
            // name given to it or taken from it: each inode here loses at most one name this
            // pass (by a copy, or by a link `true`), and one that loses a name by a link is
            // given none. The rest is left for the next pass, which finds it still to do.
            let mut replaced: HashMap<Inode, bool> = HashMap::new();
            let mut joined: HashSet<Inode> = HashSet::new();
            let defer = |rel: &Path| {
                log::info!(
                    "hard links of {} in {} are changed by the next pass (another name of its \
                     inode changes in this one)",
                    Escaped(rel),
                    side.name()
                )
            };
            for (block, keep) in blocks.iter().zip(keeps) {
                if block.iter().all(|&rel| group(side, rel) == **block) {
                    continue;
                }
                let seen = |rel: &Path| entry(side, rel).cloned();
                let from = |rel: &Path| entry(other, rel).cloned();
                let anchor = keep.and_then(|kept| block.iter().find(|rel| at[**rel] == kept));
                let (existing, kept, joining): (&Path, Option<Inode>, Vec<&Path>) = match anchor {
                    Some(&anchor) => (
                        anchor,
                        Some(at[anchor]),
                        block
                            .iter()
                            .copied()
                            .filter(|rel| at[rel] != at[anchor])
                            .collect(),
                    ),
                    None => {
                        // Every inode holding the group keeps another: the first name gets
                        // one of its own, a copy of the other side's file (the same bytes).
                        let first = block[0];
                        if replaced.contains_key(&at[first]) {
                            block.iter().for_each(|rel| defer(rel));
                            continue;
                        }
                        let (Some(source), Some(here), Some(digest)) =
                            (from(first), seen(first), alike(first))
                        else {
                            continue;
                        };
                        added.push(Step::Copy {
                            side,
                            rel: first.to_path_buf(),
                            source: Some(source),
                            known: Known::Digest {
                                digest,
                                exact: true,
                            },
                            replace: Some(Box::new(here)),
                            link: None,
                        });
                        replaced.insert(at[first], false);
                        parents.insert((side, first.to_path_buf()));
                        (first, None, block[1..].to_vec())
                    }
                };
                for rel in joining {
                    let clash = replaced.contains_key(&at[rel])
                        || joined.contains(&at[rel])
                        || kept.is_some_and(|kept| replaced.get(&kept) == Some(&true));
                    if clash {
                        defer(rel);
                        continue;
                    }
                    let (Some(source), Some(here)) = (from(rel), seen(rel)) else {
                        continue;
                    };
                    added.push(Step::Link {
                        side,
                        rel: rel.to_path_buf(),
                        existing: existing.to_path_buf(),
                        source,
                        replace: Some(here),
                    });
                    replaced.insert(at[rel], true);
                    joined.extend(kept);
                    parents.insert((side, rel.to_path_buf()));
                }
            }
        }
        (added, parents)
    };
    steps.extend(added);
    reopen_parents(steps, &parents, entry);
}

/// What a step does to the inode of its name, for [`record_links`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relink {
    /// The name leaves its inode (for a new one, or for nothing).
    Leaves,
    /// The inode moves, with the name, to this name.
    MovesTo(PathBuf),
    /// The name joins the inode of this one.
    Joins(PathBuf),
}

/// What each of `steps` does to the inode of its name (the steps that keep it are left out).
pub fn relinks(steps: &[Step]) -> Vec<(Side, PathBuf, Relink)> {
    steps
        .iter()
        .filter_map(|step| {
            let change = match step {
                Step::Copy { .. }
                | Step::Symlink { .. }
                | Step::Node { .. }
                | Step::Remove { .. } => Relink::Leaves,
                Step::SaveAside { to, .. } => Relink::MovesTo(to.clone()),
                Step::Link { existing, .. } => Relink::Joins(existing.clone()),
                Step::MakeDir { .. } | Step::Dir { .. } | Step::SetMeta { .. } => return None,
            };
            Some((step.side(), step.rel().to_path_buf(), change))
        })
        .collect()
}

/// The link groups an archive records after a pass: each side's groups as scanned (`linked`),
/// changed by what the pass did (`relinks`, but those at a path where `failed` holds: a failed
/// step leaves its name as it was), among the names that are files once it is done (`is_file`).
/// Where both sides then hold the same group, it is recorded; the names where they differ keep
/// their groups of `recorded` (none where it has none), so that the next pass sees a change
/// where one side made it and the other did not follow (yet).
pub fn record_links(
    linked: [&Linked<'_>; 2],
    relinks: &[(Side, PathBuf, Relink)],
    failed: impl Fn(&Path) -> bool,
    is_file: impl Fn(&Path) -> bool,
    recorded: Option<&LinkRecord>,
) -> LinkRecord {
    /// An inode, or one a link makes of a name alone (numbered from the top).
    type Key = (u64, u64);
    let sides = SIDES.map(|side| {
        let mut key: HashMap<PathBuf, Key> = linked[side as usize]
            .iter()
            .map(|(rel, e)| (rel.to_path_buf(), (e.dev, e.ino)))
            .collect();
        let failed = &failed;
        let mine = || {
            relinks
                .iter()
                .filter(move |(z, rel, _)| *z == side && !failed(rel))
        };
        for (_, rel, change) in mine() {
            match change {
                Relink::Leaves => {
                    key.remove(rel);
                }
                Relink::MovesTo(to) => {
                    if let Some(k) = key.remove(rel) {
                        key.insert(to.clone(), k);
                    }
                }
                Relink::Joins(_) => {}
            }
        }
        let mut fresh = u64::MAX;
        for (_, rel, change) in mine() {
            if let Relink::Joins(existing) = change {
                let k = *key.entry(existing.clone()).or_insert_with(|| {
                    fresh -= 1;
                    (u64::MAX, fresh)
                });
                key.insert(rel.clone(), k);
            }
        }
        key.retain(|rel, _| is_file(rel));
        let mut groups: HashMap<Key, Vec<PathBuf>> = HashMap::new();
        for (rel, k) in &key {
            groups.entry(*k).or_default().push(rel.clone());
        }
        for names in groups.values_mut() {
            names.sort_by(|a, b| path_order(a, b));
        }
        (key, groups)
    });
    let group_of = |side: Side, rel: &Path| -> Vec<PathBuf> {
        let (key, groups) = &sides[side as usize];
        match key.get(rel) {
            Some(k) => groups[k].clone(),
            None => vec![rel.to_path_buf()],
        }
    };
    let mut record = LinkRecord::new();
    // The names where the sides differ, by the first name of their recorded group.
    let mut differ: HashMap<PathBuf, Vec<PathBuf>> = HashMap::new();
    let names: HashSet<&PathBuf> = sides.iter().flat_map(|(key, _)| key.keys()).collect();
    for rel in names {
        let group = group_of(Side::Source, rel);
        if group != group_of(Side::Backup, rel) {
            let first = recorded.and_then(|r| r.get(rel)).unwrap_or(rel);
            differ.entry(first.clone()).or_default().push(rel.clone());
        } else if group[0] != *rel {
            record.insert(rel.clone(), group[0].clone());
        }
    }
    for mut group in differ.into_values() {
        group.sort_by(|a, b| path_order(a, b));
        for further in &group[1..] {
            record.insert(further.clone(), group[0].clone());
        }
    }
    record
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

    /// A side's files with several names, as the pass gives them.
    fn linked(side: &Scanned) -> Vec<(&Path, &Entry)> {
        side.iter()
            .filter(|(_, e)| e.is_linked())
            .map(|(rel, e)| (rel.as_path(), e))
            .collect()
    }

    /// The entry at `rel` of `side` (of `source` or `backup`); the roots are `root`.
    fn entry_in<'a>(
        [source, backup]: [&'a Scanned; 2],
        root: &'a Entry,
        side: Side,
        rel: &Path,
    ) -> Option<&'a Entry> {
        let tree = if side == Side::Source { source } else { backup };
        match rel.as_os_str().is_empty() {
            true => Some(root),
            false => tree.iter().find(|(r, _)| r == rel).map(|(_, e)| e),
        }
    }

    /// Runs [`keep_links`] over two scanned sides.
    fn kept(mut steps: Vec<Step>, source: &Scanned, backup: &Scanned) -> Vec<Step> {
        let (ls, lb) = (linked(source), linked(backup));
        // The roots, as the pass gives them (an entry, whatever its kind, will do).
        let root = file(7, 1);
        let entry = |side, rel: &Path| entry_in([source, backup], &root, side, rel);
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

    /// The record of further name → first name, from pairs.
    fn record(pairs: &[(&str, &str)]) -> LinkRecord {
        pairs
            .iter()
            .map(|(further, first)| (PathBuf::from(further), PathBuf::from(first)))
            .collect()
    }

    /// Runs [`carry_structure`] over two scanned sides that hold every file alike.
    fn carried(
        source: &Scanned,
        backup: &Scanned,
        recorded: &LinkRecord,
        winner: Side,
    ) -> Vec<String> {
        let (ls, lb) = (linked(source), linked(backup));
        let root = file(7, 1);
        let entry = |side, rel: &Path| entry_in([source, backup], &root, side, rel);
        let mut steps = Vec::new();
        carry_structure(
            &mut steps,
            [&ls, &lb],
            Some(recorded),
            winner,
            |_| Some([2; 32]),
            entry,
        );
        let mut lines: Vec<String> = steps
            .iter()
            .map(|step| {
                format!(
                    "{} {}",
                    step.side().name(),
                    summary(std::slice::from_ref(step))[0]
                )
            })
            .collect();
        lines.sort();
        lines
    }

    /// A side of files `names`, each on the inode its number gives.
    fn side(names: &[(&str, u64)]) -> Scanned {
        names
            .iter()
            .map(|&(rel, ino)| {
                let nlink = names.iter().filter(|(_, i)| *i == ino).count() as u64;
                (PathBuf::from(rel), file(ino, nlink))
            })
            .collect()
    }

    /// A link made on one side is made on the other; a split on one side is a copy on the
    /// other; what matches the record is left alone.
    #[test]
    fn a_change_of_structure_alone_is_carried_to_the_side_that_kept_the_record() {
        let apart = side(&[("a", 1), ("b", 2)]);
        let linked = side(&[("a", 3), ("b", 3)]);
        let time_back = "BACKUP time back to \"\"";
        assert_eq!(
            carried(&linked, &apart, &record(&[]), Side::Source),
            ["BACKUP link b -> a", time_back]
        );
        assert_eq!(
            carried(&apart, &linked, &record(&[("b", "a")]), Side::Source),
            ["BACKUP copy b", time_back]
        );
        assert!(carried(&linked, &linked, &record(&[("b", "a")]), Side::Source).is_empty());
        assert!(carried(&apart, &apart, &record(&[]), Side::Source).is_empty());
        // Two names leave one inode: one this pass (the other's step would find the inode
        // changed since the scan), the other the next.
        let three_apart = side(&[("a", 1), ("b", 2), ("c", 3)]);
        let three_linked = side(&[("a", 5), ("b", 5), ("c", 5)]);
        assert_eq!(
            carried(
                &three_apart,
                &three_linked,
                &record(&[("b", "a"), ("c", "a")]),
                Side::Source
            ),
            ["BACKUP copy b", time_back]
        );
        // Both changed, differently: the winner's structure on both.
        let three_source = side(&[("a", 1), ("b", 1), ("c", 2)]);
        let three_backup = side(&[("a", 4), ("b", 5), ("c", 5)]);
        assert_eq!(
            carried(&three_source, &three_backup, &record(&[]), Side::Backup),
            ["SOURCE link b -> c", "SOURCE time back to \"\""]
        );
    }

    /// The record after a pass: groups both sides hold; where they differ (a step failed), the
    /// old record.
    #[test]
    fn the_record_keeps_what_both_sides_hold_and_the_old_groups_where_they_differ() {
        let linked = side(&[("a", 3), ("b", 3)]);
        let apart = side(&[("a", 1), ("b", 2)]);
        let list = |s: &Scanned| -> Vec<(PathBuf, Entry)> {
            s.iter().filter(|(_, e)| e.is_linked()).cloned().collect()
        };
        let (ls, la) = (list(&linked), list(&apart));
        fn borrowed(l: &[(PathBuf, Entry)]) -> Vec<(&Path, &Entry)> {
            l.iter().map(|(r, e)| (r.as_path(), e)).collect()
        }
        let (ls, la) = (borrowed(&ls), borrowed(&la));
        let link = vec![(Side::Backup, PathBuf::from("b"), Relink::Joins("a".into()))];
        assert_eq!(
            record_links([&ls, &la], &link, |_| false, |_| true, Some(&record(&[]))),
            record(&[("b", "a")])
        );
        // The link failed: BACKUP still holds them apart, and the record stays as it was.
        assert_eq!(
            record_links([&ls, &la], &link, |_| true, |_| true, Some(&record(&[]))),
            record(&[])
        );
        let split = vec![(Side::Backup, PathBuf::from("b"), Relink::Leaves)];
        assert_eq!(
            record_links(
                [&ls, &ls],
                &split,
                |_| true,
                |_| true,
                Some(&record(&[("b", "a")]))
            ),
            record(&[("b", "a")])
        );
        assert_eq!(
            record_links(
                [&la, &ls],
                &split,
                |_| false,
                |_| true,
                Some(&record(&[("b", "a")]))
            ),
            record(&[])
        );
    }
}
