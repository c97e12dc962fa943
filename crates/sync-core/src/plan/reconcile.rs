//! Two-way reconciliation (SPEC §4): for every path, compare each side with the archive of
//! the last completed pass and decide what both sides must hold, and which steps get there.
//!
//! Pure: no I/O, so the decisions are tested directly, property by property.
//!
//! The rules, per path: a side "changed" if its content (kind, SHA-256, link target, node)
//! differs from the archive's, or its metadata does (mode, owner and group, extended
//! attributes, and a file's time; a directory's time moves with every change inside it and is
//! no change of its own). One side changed: its state wins, deletion included. Both changed
//! alike: nothing to do. Both changed differently: a deletion loses to a modification (a change
//! of metadata alone is one); a change of metadata on one side and of content (of the same
//! kind) on the other are both kept; two changes of content are a conflict, won by the policy,
//! and the loser is kept under a conflict name on both sides. A directory keeps its name against
//! a file, and a directory comes back if anything beneath it survives: a new or edited file
//! inside a directory deleted on the other side is never lost.
//!
//! Metadata is merged field group by field group (mode; owner and group; extended attributes;
//! time) against the archive: a group changed on one side only takes that side's value; a group
//! both sides changed to different values is a conflict over metadata, won by the policy, and
//! logged with the losing values (the content is the same, so there is no copy to keep). A
//! time is never a conflict: a file's time follows its content (the side whose content changed
//! gives it), and otherwise the later of two changed times wins. Metadata alone travels
//! without copying content; where content travels and metadata comes from the other side, the
//! side holding the content is given the merged metadata first (the pass applies every
//! [`Step::SetMeta`] before the copies, see [`Plan::steps`]), so that its copy carries it.
//!
//! A directory whose entries change on a side is given its final metadata again once they are
//! done ([`Step::Dir`] with `changes_inside`), so that both sides end with the same times.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::display::Escaped;
use crate::model::{Item, ItemList, Items, Meta, Side, Timestamp};
use crate::plan::step::{Step, arrive, finish};
use crate::subtrees::Subtrees;

/// Who wins a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The later modification time (SOURCE on a tie).
    Newer,
    /// SOURCE always.
    Source,
    /// BACKUP always.
    Backup,
}

/// Why a conflict went the way it did, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// By `--conflict`.
    Policy(Policy),
    /// A directory keeps its name against a file or link.
    Directory,
}

/// The groups of metadata that change independently of each other, each merged on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fields {
    /// Permission bits.
    pub mode: bool,
    /// Owner and group.
    pub owner: bool,
    /// Extended attributes and ACLs.
    pub xattrs: bool,
}

impl Fields {
    /// Whether any group is named.
    pub fn any(self) -> bool {
        self.mode || self.owner || self.xattrs
    }
}

impl fmt::Display for Fields {
    /// `mode`, `owner`, `extended attributes`, joined with `and`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (self.mode, "mode"),
            (self.owner, "owner"),
            (self.xattrs, "extended attributes"),
        ];
        let named: Vec<&str> = names.iter().filter(|n| n.0).map(|n| n.1).collect();
        f.write_str(&named.join(" and "))
    }
}

/// What a conflict was over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contest {
    /// The content: the loser's version is kept under `saved_as` on both sides.
    Content {
        /// Where the loser's version is kept, on both sides.
        saved_as: PathBuf,
    },
    /// Only metadata: both sides changed `fields` differently. The loser's values, `lost`,
    /// are replaced on both sides (the content is the same on both, or changed on one side
    /// only, so no copy keeps them: the log names them).
    Metadata {
        /// The groups both sides changed differently.
        fields: Fields,
        /// The losing side's metadata.
        lost: Meta,
    },
}

/// A conflict and how it was settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The contested path.
    pub rel: PathBuf,
    /// The side whose version keeps the name (or whose values the contested fields take).
    pub winner: Side,
    /// Why.
    pub verdict: Verdict,
    /// Over what.
    pub contest: Contest,
}

/// What a pass must do.
#[derive(Debug, Default)]
pub struct Plan {
    /// Every path whose archive entry changes, and what both sides hold once the pass is
    /// done (`None`: nothing). Paths not in here hold what the archive says (or are under a
    /// directory that could not be read) and keep their archive entry.
    pub finals: BTreeMap<PathBuf, Option<Item>>,
    /// The steps, in no particular order (the applier orders them), with the items they
    /// expect to find. Every [`Step::SetMeta`] must be applied before the copies: the copy of
    /// a file whose other side changed its metadata reads the file once it has the merged
    /// metadata.
    pub steps: Vec<Step<Item>>,
    /// The conflicts.
    pub conflicts: Vec<Conflict>,
}

/// Same content: same kind, and same digest, link target or node. Absent equals absent.
pub fn same_content(a: Option<&Item>, b: Option<&Item>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same_content(b),
        _ => false,
    }
}

/// Same kind of entry (file, directory, link, node), whatever its content.
fn same_kind(a: &Item, b: &Item) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// The metadata that travels is all the same: everything but a link's mode (it has none of
/// its own).
fn same_meta(a: &Item, b: &Item) -> bool {
    !a.meta()
        .differs(b.meta(), matches!(a, Item::Symlink { .. }))
}

/// Whether `x`, with the same content as the archive's `a`, was changed by a user since: its
/// mode, owner, attributes, or (but for a directory, whose time moves with what it holds) its
/// time differ.
fn meta_modified(a: Option<&Item>, x: Option<&Item>) -> bool {
    let (Some(a), Some(x)) = (a, x) else {
        return false;
    };
    if !a.same_content(x) {
        return false;
    }
    let (am, xm) = (a.meta(), x.meta());
    let symlink = matches!(x, Item::Symlink { .. });
    (!symlink && am.mode != xm.mode)
        || (am.uid, am.gid) != (xm.uid, xm.gid)
        || am.xattrs != xm.xattrs
        || (!matches!(x, Item::Dir { .. }) && am.mtime != xm.mtime)
}

fn mtime(item: &Item) -> Timestamp {
    item.meta().mtime
}

fn is_dir(item: Option<&Item>) -> bool {
    matches!(item, Some(Item::Dir { .. }))
}

/// How one field group changed on the two sides, against the archive.
enum Pick<T> {
    /// Both sides end with this value (one changed it, or both alike, or neither).
    Agreed(T),
    /// Both changed it, to different values.
    Collision,
}

/// The three-way merge of one field group: `base` in the archive, `s` and `d` on the sides.
fn pick<T: PartialEq + Copy>(base: T, s: T, d: T) -> Pick<T> {
    if s == d || d == base {
        Pick::Agreed(s)
    } else if s == base {
        Pick::Agreed(d)
    } else {
        Pick::Collision
    }
}

/// A conflict over metadata, before it is given its path.
struct MetaConflict {
    winner: Side,
    fields: Fields,
    lost: Meta,
}

/// The metadata both sides end with, where both hold an entry of the kind they end with: each
/// field group merged against the archive's `a` (see the module's doc). `content_from` is the
/// side whose content changed where only one did; a file's time is that side's.
fn merge_meta(
    a: Option<&Item>,
    (s, d): (&Item, &Item),
    content_from: Option<Side>,
    policy: Policy,
) -> (Meta, Option<MetaConflict>) {
    let (sm, dm) = (*s.meta(), *d.meta());
    let newer_is_source = mtime(s) >= mtime(d);
    let Some(base) = a.filter(|a| same_kind(a, s)) else {
        // Nothing to tell what changed (a first pass, or both sides made the path anew): the
        // side whose content is kept, else the later.
        let source = match content_from {
            Some(side) => side == Side::Source,
            None => newer_is_source,
        };
        return (if source { sm } else { dm }, None);
    };
    let am = *base.meta();
    let symlink = matches!(s, Item::Symlink { .. });
    let mut merged = sm;
    let mut fields = Fields::default();
    match pick(am.mode, sm.mode, dm.mode) {
        _ if symlink => {}
        Pick::Agreed(mode) => merged.mode = mode,
        Pick::Collision => fields.mode = true,
    }
    match pick((am.uid, am.gid), (sm.uid, sm.gid), (dm.uid, dm.gid)) {
        Pick::Agreed((uid, gid)) => (merged.uid, merged.gid) = (uid, gid),
        Pick::Collision => fields.owner = true,
    }
    match pick(am.xattrs, sm.xattrs, dm.xattrs) {
        Pick::Agreed(xattrs) => merged.xattrs = xattrs,
        Pick::Collision => fields.xattrs = true,
    }
    merged.mtime = match (content_from, pick(am.mtime, sm.mtime, dm.mtime)) {
        (Some(Side::Source), _) => sm.mtime,
        (Some(Side::Backup), _) => dm.mtime,
        (None, Pick::Agreed(t)) => t,
        (None, Pick::Collision) => sm.mtime.max(dm.mtime),
    };
    if !fields.any() {
        return (merged, None);
    }
    let source_wins = match policy {
        Policy::Source => true,
        Policy::Backup => false,
        Policy::Newer => newer_is_source,
    };
    let (won, lost, winner) = if source_wins {
        (sm, dm, Side::Source)
    } else {
        (dm, sm, Side::Backup)
    };
    if fields.mode {
        merged.mode = won.mode;
    }
    if fields.owner {
        (merged.uid, merged.gid) = (won.uid, won.gid);
    }
    if fields.xattrs {
        merged.xattrs = won.xattrs;
    }
    let conflict = MetaConflict {
        winner,
        fields,
        lost,
    };
    (merged, Some(conflict))
}

/// The conflict name of `rel`: `NAME.conflict-STAMP.EXT`, or with `-2`, `-3` … before the
/// extension when the name is taken.
pub fn conflict_name(rel: &Path, stamp: &str, taken: impl Fn(&Path) -> bool) -> PathBuf {
    let name = rel
        .file_name()
        .map(|n| n.as_encoded_bytes())
        .unwrap_or_default();
    // The extension starts at the last dot, unless that dot begins the name (".bashrc").
    let (stem, ext) = match name.iter().rposition(|&b| b == b'.') {
        Some(i) if i > 0 => (&name[..i], Some(&name[i..])),
        _ => (name, None),
    };
    let mut n = 1u32;
    loop {
        let mut candidate = stem.to_vec();
        candidate.extend_from_slice(format!(".conflict-{stamp}").as_bytes());
        if n > 1 {
            candidate.extend_from_slice(format!("-{n}").as_bytes());
        }
        if let Some(ext) = ext {
            candidate.extend_from_slice(ext);
        }
        let path = rel.with_file_name(std::ffi::OsStr::from_bytes(&candidate));
        if !taken(&path) {
            return path;
        }
        n += 1;
    }
}

/// Decides every path that is not under `protected`. `stamp` (`YYYYMMDD-HHMMSS`) names
/// conflict copies. The root, if the lists hold it (as the empty path, a directory on both
/// sides), is decided as any directory.
pub fn reconcile(
    archive: &Items,
    source: &ItemList,
    backup: &ItemList,
    protected: &HashSet<PathBuf>,
    policy: Policy,
    stamp: &str,
) -> Plan {
    let protected_trees: Subtrees = protected.iter().collect();
    let covered = |rel: &Path| protected_trees.contains(rel);
    let rows = join3(archive, source, backup);
    // Conflict names already handed out this pass; names on disk or in the archive are
    // looked up in the three maps.
    let mut planned: HashSet<PathBuf> = HashSet::new();

    let mut plan = Plan::default();
    // Parents of paths that hold something at the end of the pass.
    // (Keyed by raw bytes: hashing a `Path` walks its components.)
    let mut alive_parents: rustc_hash::FxHashSet<&[u8]> = Default::default();
    // Directories, by side, whose entries this pass adds, replaces or removes.
    let mut touched: rustc_hash::FxHashSet<(u8, &[u8])> = Default::default();
    // Deepest first: a directory is decided after everything beneath it.
    for (rel, a, s, d) in rows.into_iter().rev() {
        if covered(rel) {
            continue;
        }
        let s_content = !same_content(a, s);
        let d_content = !same_content(a, d);
        let s_changed = s_content || meta_modified(a, s);
        let d_changed = d_content || meta_modified(a, d);

        // The final content, the side whose version loses a conflict over content, and the
        // rule that decided (for a `-v` line).
        let (mut fin, mut loser, rule): (Option<&Item>, Option<(Side, Verdict)>, &str) = match (
            s_changed, d_changed,
        ) {
            (false, false) => (d, None, ""),
            (false, true) => (
                d,
                None,
                "new or changed in BACKUP only: BACKUP's version travels",
            ),
            (true, false) => (
                s,
                None,
                "new or changed in SOURCE only: SOURCE's version travels",
            ),
            (true, true) if same_content(s, d) => {
                (s, None, "changed alike on both sides: metadata merged")
            }
            (true, true) => match (s, d) {
                // A modification beats a deletion.
                (None, _) => (
                    d,
                    None,
                    "deleted in SOURCE, changed in BACKUP: a change beats a deletion",
                ),
                (_, None) => (
                    s,
                    None,
                    "deleted in BACKUP, changed in SOURCE: a change beats a deletion",
                ),
                // Metadata changed on one side, content (of the same kind) on the other:
                // the content travels, the metadata is merged below.
                (Some(si), Some(di)) if !s_content && same_kind(si, di) => (
                    d,
                    None,
                    "content changed in BACKUP, metadata in SOURCE: the content travels, the metadata is merged",
                ),
                (Some(si), Some(di)) if !d_content && same_kind(si, di) => (
                    s,
                    None,
                    "content changed in SOURCE, metadata in BACKUP: the content travels, the metadata is merged",
                ),
                (Some(Item::Dir { .. }), Some(_)) => (
                    s,
                    Some((Side::Backup, Verdict::Directory)),
                    "conflict: SOURCE's directory keeps the name against BACKUP's file or link",
                ),
                (Some(_), Some(Item::Dir { .. })) => (
                    d,
                    Some((Side::Source, Verdict::Directory)),
                    "conflict: BACKUP's directory keeps the name against SOURCE's file or link",
                ),
                (Some(si), Some(di)) => {
                    let source_wins = match policy {
                        Policy::Source => true,
                        Policy::Backup => false,
                        Policy::Newer => mtime(si) >= mtime(di),
                    };
                    if source_wins {
                        (
                            s,
                            Some((Side::Backup, Verdict::Policy(policy))),
                            "changed on both sides: conflict, SOURCE's version wins by --conflict",
                        )
                    } else {
                        (
                            d,
                            Some((Side::Source, Verdict::Policy(policy))),
                            "changed on both sides: conflict, BACKUP's version wins by --conflict",
                        )
                    }
                }
            },
        };
        if !rule.is_empty() {
            log::debug!("{}: {rule}", Escaped(rel));
        }

        // Something beneath survives (it is new or edited on the side that holds it): the
        // directory stays whatever happened to it, and a file or link that replaced it on the
        // other side is kept as a conflict copy.
        if alive_parents.contains(rel.as_os_str().as_bytes()) && !is_dir(fin) {
            let (dir_side, dir_item) = if is_dir(d) {
                (Side::Backup, d)
            } else {
                (Side::Source, s)
            };
            let other = other_side(dir_side);
            let other_item = if other == Side::Source { s } else { d };
            loser = other_item
                .filter(|i| !is_dir(Some(i)))
                .map(|_| (other, Verdict::Directory));
            fin = dir_item;
            log::debug!(
                "{}: something beneath it survives: the directory in {} stays",
                Escaped(rel),
                dir_side.name()
            );
        }

        // Metadata: merged where both sides hold an entry of the final kind and no conflict
        // over content decided the path.
        let mut fin_item = fin.cloned();
        if let (Some(f), Some(si), Some(di), None) = (fin, s, d, loser)
            && same_kind(si, f)
            && same_kind(di, f)
        {
            let content_from = match (s_content, d_content) {
                (true, false) => Some(Side::Source),
                (false, true) => Some(Side::Backup),
                _ => None,
            };
            let (meta, conflict) = merge_meta(a, (si, di), content_from, policy);
            fin_item = Some(f.with_meta(meta));
            if let Some(MetaConflict {
                winner,
                fields,
                lost,
            }) = conflict
            {
                plan.conflicts.push(Conflict {
                    rel: rel.to_path_buf(),
                    winner,
                    verdict: Verdict::Policy(policy),
                    contest: Contest::Metadata { fields, lost },
                });
            }
        }

        if fin_item.is_some()
            && let Some(parent) = rel.parent()
        {
            alive_parents.insert(parent.as_os_str().as_bytes());
        }

        let first_step = plan.steps.len();
        // The loser, kept under a conflict name on both sides.
        let mut vacated = None;
        if let Some((lside, verdict)) = loser {
            let lost = match lside {
                Side::Source => s,
                Side::Backup => d,
            }
            .cloned();
            if let Some(lost) = lost {
                let to = conflict_name(rel, stamp, |p| {
                    archive.contains_key(p)
                        || source.contains(p)
                        || backup.contains(p)
                        || planned.contains(p)
                });
                planned.insert(to.clone());
                plan.steps.push(Step::SaveAside {
                    side: lside,
                    rel: rel.to_path_buf(),
                    to: to.clone(),
                    seen: lost.clone(),
                });
                // The loser's side holds it under the new name once saved: the copy reads it
                // there (no scan saw it under that name).
                plan.steps.push(arrive(
                    other_side(lside),
                    to.clone(),
                    &lost,
                    None,
                    true,
                    None,
                ));
                plan.finals.insert(to.clone(), Some(lost));
                plan.conflicts.push(Conflict {
                    rel: rel.to_path_buf(),
                    winner: other_side(lside),
                    verdict,
                    contest: Contest::Content { saved_as: to },
                });
                vacated = Some(lside);
            }
        }

        for side in [Side::Source, Side::Backup] {
            let here = if vacated == Some(side) {
                None
            } else {
                match side {
                    Side::Source => s,
                    Side::Backup => d,
                }
            };
            let there = match side {
                Side::Source => d,
                Side::Backup => s,
            };
            steps_for_side(&mut plan.steps, side, rel, (here, there), fin_item.as_ref());
            // A directory whose entries changed on this side gets its final metadata again
            // once they are done: adding or removing an entry moved its time.
            if let (Some(here @ Item::Dir { .. }), Some(Item::Dir { meta })) =
                (here, fin_item.as_ref())
                && touched.contains(&(side as u8, rel.as_os_str().as_bytes()))
            {
                let own = plan.steps[first_step..]
                    .iter_mut()
                    .find_map(|step| match step {
                        Step::Dir {
                            side: z,
                            changes_inside,
                            ..
                        } if *z == side => Some(changes_inside),
                        _ => None,
                    });
                match own {
                    Some(changes_inside) => *changes_inside = true,
                    None => plan.steps.push(Step::Dir {
                        side,
                        rel: rel.to_path_buf(),
                        seen: Some(here.clone()),
                        want: Some(*meta),
                        changes_inside: true,
                    }),
                }
            }
        }
        // Every step of the row acts on `rel`, or on its conflict name beside it.
        if let Some(parent) = rel.parent() {
            for step in &plan.steps[first_step..] {
                if !matches!(step, Step::SetMeta { .. } | Step::Dir { .. }) {
                    touched.insert((step.side() as u8, parent.as_os_str().as_bytes()));
                }
            }
        }
        if fin_item.as_ref() != a {
            plan.finals.insert(rel.to_path_buf(), fin_item);
        }
    }
    plan
}

/// One row per path of the three sorted lists, in order, with what each holds: a merge join,
/// so no path is looked up (each lookup would compare paths component by component).
type Row<'a> = (
    &'a Path,
    Option<&'a Item>,
    Option<&'a Item>,
    Option<&'a Item>,
);

fn join3<'a>(a: &'a Items, s: &'a ItemList, d: &'a ItemList) -> Vec<Row<'a>> {
    let mut out = Vec::with_capacity(a.len().max(s.len()).max(d.len()));
    let (mut ia, mut is, mut id) = (
        a.iter().map(|(k, v)| (k.as_path(), v)).peekable(),
        s.iter().peekable(),
        d.iter().peekable(),
    );
    loop {
        let next = [ia.peek(), is.peek(), id.peek()]
            .into_iter()
            .flatten()
            .map(|(k, _)| *k)
            .min_by(|x, y| crate::model::path_order(x, y));
        let Some(key) = next else { break };
        // Keys come from scans and from listings, which accept only canonical paths, so equal
        // paths have equal bytes.
        fn take<'a>(
            it: &mut std::iter::Peekable<impl Iterator<Item = (&'a Path, &'a Item)>>,
            key: &Path,
        ) -> Option<&'a Item> {
            it.next_if(|(k, _)| k.as_os_str() == key.as_os_str())
                .map(|(_, v)| v)
        }
        let row = (
            key,
            take(&mut ia, key),
            take(&mut is, key),
            take(&mut id, key),
        );
        out.push(row);
    }
    out
}

fn other_side(side: Side) -> Side {
    match side {
        Side::Source => Side::Backup,
        Side::Backup => Side::Source,
    }
}

/// The steps that turn `here` (what `side` holds at `rel`) into `fin`; content comes from the
/// other side, which holds `fin`'s content already (`there`, as scanned) and is given `fin`'s
/// metadata before it is copied.
fn steps_for_side(
    steps: &mut Vec<Step<Item>>,
    side: Side,
    rel: &Path,
    (here, there): (Option<&Item>, Option<&Item>),
    fin: Option<&Item>,
) {
    let rel = rel.to_path_buf();
    match (here, fin) {
        (None, None) => {}
        (Some(h), None) => steps.push(Step::Remove {
            side,
            rel,
            seen: h.clone(),
        }),
        (Some(h), Some(f)) if same_content(Some(h), Some(f)) => {
            if !same_meta(h, f) {
                steps.push(match f {
                    Item::Dir { meta } => Step::Dir {
                        side,
                        rel,
                        seen: Some(h.clone()),
                        want: Some(*meta),
                        changes_inside: false,
                    },
                    Item::File { digest, meta, .. } => Step::SetMeta {
                        side,
                        rel,
                        seen: h.clone(),
                        meta: *meta,
                        digest: Some(*digest),
                    },
                    Item::Symlink { meta, .. } | Item::Special { meta, .. } => Step::SetMeta {
                        side,
                        rel,
                        seen: h.clone(),
                        meta: *meta,
                        digest: None,
                    },
                });
            }
        }
        (here, Some(f)) => {
            // A directory in the way goes first (its content is removed by its own steps); a
            // file or link in the way is replaced atomically.
            let replace = match here {
                Some(h @ Item::Dir { .. }) => {
                    steps.push(Step::Remove {
                        side,
                        rel: rel.clone(),
                        seen: h.clone(),
                    });
                    None
                }
                Some(h @ (Item::File { .. } | Item::Symlink { .. } | Item::Special { .. }))
                    if matches!(f, Item::Dir { .. }) =>
                {
                    steps.push(Step::Remove {
                        side,
                        rel: rel.clone(),
                        seen: h.clone(),
                    });
                    None
                }
                other => other.cloned(),
            };
            steps.extend(finish(side, rel.clone(), f));
            let source = there
                .filter(|t| same_content(Some(t), Some(f)))
                .unwrap_or(f);
            steps.push(arrive(side, rel, f, Some(source.clone()), true, replace));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Meta, Node, Timestamp};
    use crate::plan::step::Known;
    use proptest::prelude::*;

    fn file(content: u8, t: i64) -> Item {
        Item::File {
            digest: [content; 32],
            size: 1,
            meta: Meta::plain(0o644, Timestamp { secs: t, nanos: 0 }),
        }
    }

    fn dir() -> Item {
        Item::Dir {
            meta: Meta::plain(0o755, Timestamp::default()),
        }
    }

    /// `item` with `change` made to its metadata.
    fn with(item: &Item, change: impl FnOnce(&mut Meta)) -> Item {
        let mut meta = *item.meta();
        change(&mut meta);
        item.with_meta(meta)
    }

    /// Reconciles maps of items, as the tests build them, with nothing protected.
    fn plan_of(archive: &Items, src: &Items, dst: &Items, policy: Policy, stamp: &str) -> Plan {
        reconcile(
            archive,
            &src.into(),
            &dst.into(),
            &HashSet::new(),
            policy,
            stamp,
        )
    }

    fn parent_ok(tree: &Items, rel: &Path) -> bool {
        match rel.parent() {
            Some(p) if !p.as_os_str().is_empty() => is_dir(tree.get(p)),
            _ => true,
        }
    }

    fn subtree(tree: &Items, rel: &Path) -> Vec<PathBuf> {
        tree.keys()
            .filter(|k| k.starts_with(rel))
            .cloned()
            .collect()
    }

    /// The time a pass's own changes give the directories they change: the real file system
    /// moves a directory's time when an entry is added, replaced or removed; unless a
    /// `changes_inside` step gives it back, both sides end with different times.
    const PASS_TIME: Timestamp = Timestamp { secs: -1, nanos: 0 };

    /// Moves the time of the directory holding `rel` (the root's too, if the tree holds it).
    fn touch_parent(tree: &mut Items, rel: &Path, t: Timestamp) {
        let Some(parent) = rel.parent() else { return };
        if let Some(item @ Item::Dir { .. }) = tree.get(parent).cloned() {
            tree.insert(parent.to_path_buf(), with(&item, |m| m.mtime = t));
        }
    }

    /// Applies a plan to in-memory sides in the order the real apply step uses (metadata
    /// before copies, as the two-way pass does), checking that every step is legal at its
    /// turn, and moving the time of every directory an entry is added to or removed from.
    fn apply(plan: &Plan, src: &mut Items, dst: &mut Items) {
        fn side<'a>(
            s: Side,
            src: &'a mut Items,
            dst: &'a mut Items,
        ) -> (&'a mut Items, &'a mut Items) {
            match s {
                Side::Source => (src, dst),
                Side::Backup => (dst, src),
            }
        }
        // A directory a step makes gets the mode and time its `Dir` step gives it.
        let made_as = |s: Side, rel: &Path| -> Item {
            plan.steps
                .iter()
                .find_map(|step| match step {
                    Step::Dir {
                        side,
                        rel: r,
                        seen: None,
                        want: Some(meta),
                        ..
                    } if *side == s && r == rel => Some(Item::Dir { meta: *meta }),
                    _ => None,
                })
                .expect("a made directory is finished")
        };
        for step in &plan.steps {
            if let Step::SaveAside {
                side: s,
                rel,
                to,
                seen,
            } = step
            {
                let (here, _) = side(*s, src, dst);
                assert_eq!(here.get(rel), Some(seen), "loser {rel:?} as seen");
                assert!(!here.contains_key(to), "conflict name {to:?} free");
                let item = here.remove(rel).unwrap();
                here.insert(to.clone(), item);
                touch_parent(here, rel, PASS_TIME);
            }
        }
        let mut removals: Vec<&Step<Item>> = plan
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Remove { .. }))
            .collect();
        removals.sort_by(|a, b| b.rel().cmp(a.rel()));
        for step in removals {
            let Step::Remove { side: s, rel, seen } = step else {
                unreachable!()
            };
            let (here, _) = side(*s, src, dst);
            if let Some(Item::Dir { .. }) = here.get(rel) {
                // Its time moved as its entries went.
                assert!(is_dir(Some(seen)), "removing {rel:?} as seen");
            } else {
                assert_eq!(here.get(rel), Some(seen), "removing {rel:?} as seen");
            }
            assert_eq!(subtree(here, rel).len(), 1, "{rel:?} empty when removed");
            here.remove(rel);
            touch_parent(here, rel, PASS_TIME);
        }
        let mut dirs: Vec<&Step<Item>> = plan
            .steps
            .iter()
            .filter(|s| matches!(s, Step::MakeDir { .. }))
            .collect();
        dirs.sort_by(|a, b| a.rel().cmp(b.rel()));
        for step in dirs {
            let Step::MakeDir { side: s, rel } = step else {
                unreachable!()
            };
            let item = made_as(*s, rel);
            let (here, _) = side(*s, src, dst);
            assert!(
                parent_ok(here, rel) && !here.contains_key(rel),
                "mkdir {rel:?}"
            );
            here.insert(rel.clone(), item);
            touch_parent(here, rel, PASS_TIME);
        }
        // Metadata first: the copies that follow read what it gives.
        for step in &plan.steps {
            if let Step::SetMeta {
                side: s,
                rel,
                seen,
                meta,
                ..
            } = step
            {
                let (here, _) = side(*s, src, dst);
                assert_eq!(here.get(rel), Some(seen));
                assert!(
                    !matches!(seen, Item::Dir { .. }),
                    "directories are finished apart"
                );
                here.insert(rel.clone(), seen.with_meta(*meta));
            }
        }
        for step in &plan.steps {
            match step {
                Step::Copy {
                    side: s,
                    rel,
                    source,
                    known,
                    replace,
                    link: None,
                } => {
                    let (here, there) = side(*s, src, dst);
                    // A conflict copy reads the name its file was just saved as.
                    let expected = source
                        .clone()
                        .or_else(|| plan.finals.get(rel).cloned().flatten())
                        .expect("a copy knows what it copies");
                    let item = there.get(rel).cloned().expect("copy source exists");
                    assert!(
                        matches!(known, Known::Digest { exact: true, .. })
                            && same_content(Some(&item), Some(&expected)),
                        "copy source {rel:?} holds the content"
                    );
                    assert!(parent_ok(here, rel), "parent of {rel:?}");
                    assert_eq!(
                        here.get(rel),
                        replace.as_deref(),
                        "replacing {rel:?} as seen"
                    );
                    here.insert(rel.clone(), item);
                    touch_parent(here, rel, PASS_TIME);
                }
                Step::Symlink {
                    side: s,
                    rel,
                    target,
                    meta,
                    replace,
                } => {
                    let (here, _) = side(*s, src, dst);
                    assert!(parent_ok(here, rel), "parent of {rel:?}");
                    assert_eq!(here.get(rel), replace.as_ref(), "replacing {rel:?} as seen");
                    let item = Item::Symlink {
                        target: target.clone(),
                        meta: *meta,
                    };
                    here.insert(rel.clone(), item);
                    touch_parent(here, rel, PASS_TIME);
                }
                Step::Node {
                    side: s,
                    rel,
                    node,
                    meta,
                    replace,
                } => {
                    let (here, _) = side(*s, src, dst);
                    assert!(parent_ok(here, rel), "parent of {rel:?}");
                    assert_eq!(here.get(rel), replace.as_ref(), "replacing {rel:?} as seen");
                    let item = Item::Special {
                        node: *node,
                        meta: *meta,
                    };
                    here.insert(rel.clone(), item);
                    touch_parent(here, rel, PASS_TIME);
                }
                Step::Link { .. } => panic!("reconcile plans no hard link"),
                _ => {}
            }
        }
        // Directories last, whatever their entries did to their times.
        for step in &plan.steps {
            if let Step::Dir {
                side: s,
                rel,
                seen,
                want: Some(meta),
                ..
            } = step
            {
                let (here, _) = side(*s, src, dst);
                assert!(is_dir(here.get(rel)), "{rel:?} is a directory");
                if seen.is_some() {
                    assert!(is_dir(seen.as_ref()), "{rel:?} was seen as a directory");
                }
                here.insert(rel.clone(), Item::Dir { meta: *meta });
            }
        }
    }

    const NAMES: [&str; 3] = ["a", "b", "c"];

    /// What both sides hold at `rel` after the plan: its change, or the archive's entry.
    fn final_of(plan: &Plan, archive: &Items, rel: &str) -> Option<Item> {
        match plan.finals.get(Path::new(rel)) {
            Some(change) => change.clone(),
            None => archive.get(Path::new(rel)).cloned(),
        }
    }

    fn path(i: u8) -> PathBuf {
        // 39 paths: depth 1 to 3 over three names.
        let i = usize::from(i) % 39;
        let (depth, mut n) = if i < 3 {
            (1, i)
        } else if i < 12 {
            (2, i - 3)
        } else {
            (3, i - 12)
        };
        let mut parts = Vec::new();
        for _ in 0..depth {
            parts.push(NAMES[n % 3]);
            n /= 3;
        }
        parts.iter().collect()
    }

    /// Content for a change at time `t`: one of two shared values (so both sides sometimes
    /// hold the same thing), else unique to the change (so a lost edit cannot hide behind a
    /// copy of the same bytes elsewhere).
    fn content_at(content: u8, t: i64) -> Item {
        if content <= 2 {
            return file(content, t);
        }
        let mut digest = [0xAA; 32];
        digest[..8].copy_from_slice(&t.to_le_bytes());
        Item::File {
            digest,
            size: 1,
            meta: Meta::plain(0o644, Timestamp { secs: t, nanos: 0 }),
        }
    }

    /// A tree holding only its root, as a pass lists it (under the empty path).
    fn rooted() -> Items {
        [(PathBuf::new(), dir())].into()
    }

    /// A user's change to one side; impossible ones are skipped. A change of entries moves
    /// the time of their directory, as on a real file system.
    fn mutate(tree: &mut Items, op: u8, p: u8, q: u8, content: u8, t: i64) {
        let p = path(p);
        let q = path(q);
        let now = Timestamp { secs: t, nanos: 0 };
        match op % 11 {
            // create a file (and missing parent directories)
            0 => {
                if tree.contains_key(&p) {
                    return;
                }
                for anc in p.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()) {
                    match tree.get(anc) {
                        Some(Item::Dir { .. }) => {}
                        Some(_) => return,
                        None => {}
                    }
                }
                let ancestors: Vec<PathBuf> = p
                    .ancestors()
                    .skip(1)
                    .filter(|a| !a.as_os_str().is_empty())
                    .map(Path::to_path_buf)
                    .collect();
                for anc in ancestors.iter().rev() {
                    if !tree.contains_key(anc) {
                        tree.insert(anc.clone(), dir());
                        touch_parent(tree, anc, now);
                    }
                }
                tree.insert(p.clone(), content_at(content, t));
                touch_parent(tree, &p, now);
            }
            // edit a file
            1 => {
                let new = content_at(content, t);
                if let Some(old @ Item::File { .. }) = tree.get(&p)
                    && !same_content(Some(old), Some(&new))
                {
                    // An edit keeps the file's mode, owner and attributes.
                    let new = with(&new, |m| {
                        *m = Meta {
                            mtime: m.mtime,
                            ..*old.meta()
                        }
                    });
                    tree.insert(p, new);
                }
            }
            // delete, recursively
            2 => {
                for k in subtree(tree, &p) {
                    tree.remove(&k);
                }
                touch_parent(tree, &p, now);
            }
            // rename a subtree
            3 => {
                if tree.contains_key(&p)
                    && !tree.contains_key(&q)
                    && !q.starts_with(&p)
                    && parent_ok(tree, &q)
                {
                    for k in subtree(tree, &p) {
                        let item = tree.remove(&k).unwrap();
                        let rest = k.strip_prefix(&p).unwrap();
                        let to = if rest.as_os_str().is_empty() {
                            q.clone()
                        } else {
                            q.join(rest)
                        };
                        tree.insert(to, item);
                    }
                    touch_parent(tree, &p, now);
                    touch_parent(tree, &q, now);
                }
            }
            // type change: file -> empty directory, directory -> file
            4 => match tree.get(&p) {
                Some(Item::File { .. }) => {
                    tree.insert(p.clone(), dir());
                    touch_parent(tree, &p, now);
                }
                Some(Item::Dir { .. }) => {
                    for k in subtree(tree, &p) {
                        tree.remove(&k);
                    }
                    tree.insert(p.clone(), content_at(content, t));
                    touch_parent(tree, &p, now);
                }
                _ => {}
            },
            // a symlink, created or retargeted
            5 => {
                if parent_ok(tree, &p) && !is_dir(tree.get(&p)) {
                    tree.insert(
                        p.clone(),
                        Item::Symlink {
                            target: PathBuf::from(NAMES[usize::from(content) % 3]),
                            meta: Meta::plain(0o777, now),
                        },
                    );
                    touch_parent(tree, &p, now);
                }
            }
            // a time-only change
            6 => {
                if let Some(item @ Item::File { .. }) = tree.get(&p).cloned() {
                    let t = Timestamp { secs: t, nanos: 1 };
                    tree.insert(p, with(&item, |m| m.mtime = t));
                }
            }
            // chmod, of anything but a link (the root's too)
            7 => {
                let p = if q.as_os_str().len() == 1 {
                    PathBuf::new()
                } else {
                    p
                };
                let mode = match tree.get(&p) {
                    Some(Item::Dir { .. }) => [0o700, 0o750, 0o755, 0o711],
                    _ => [0o600, 0o640, 0o644, 0o755],
                }[usize::from(content) % 4];
                if let Some(item) = tree.get(&p).filter(|i| !matches!(i, Item::Symlink { .. })) {
                    tree.insert(p.clone(), with(item, |m| m.mode = mode));
                }
            }
            // chown (owner and group)
            8 => {
                if let Some(item) = tree.get(&p) {
                    let id = u32::from(content % 3);
                    tree.insert(p.clone(), with(item, |m| (m.uid, m.gid) = (id, id)));
                }
            }
            // extended attributes set or removed
            9 => {
                if let Some(item) = tree.get(&p) {
                    let xattrs = u64::from(content % 3);
                    tree.insert(p.clone(), with(item, |m| m.xattrs = xattrs));
                }
            }
            // a FIFO made where nothing is
            _ => {
                if parent_ok(tree, &p) && !tree.contains_key(&p) {
                    let meta = Meta::plain(0o644, now);
                    tree.insert(
                        p.clone(),
                        Item::Special {
                            node: Node::Fifo,
                            meta,
                        },
                    );
                    touch_parent(tree, &p, now);
                }
            }
        }
    }

    /// The file contents a tree holds.
    fn contents<'a>(items: impl IntoIterator<Item = &'a Item>) -> HashSet<checksum::Digest> {
        items
            .into_iter()
            .filter_map(|i| match i {
                Item::File { digest, .. } => Some(*digest),
                _ => None,
            })
            .collect()
    }

    /// The value of each field group of a metadata, in [`Fields`]' order.
    fn groups(meta: &Meta) -> [(u32, u32, u64); 3] {
        [
            (meta.mode, 0, 0),
            (meta.uid, meta.gid, 0),
            (0, 0, meta.xattrs),
        ]
    }

    fn field(fields: Fields, group: usize) -> bool {
        [fields.mode, fields.owner, fields.xattrs][group]
    }

    /// Fails unless every change of a field group that `before` (one side, before the pass)
    /// made since `archive` is on both sides after the pass (`after`), unless the other side
    /// (`other`) changed the same group differently and won the conflict counted for it, or
    /// the change lost a conflict over content and is kept whole under the conflict name.
    /// A file's time changed alone is kept unless the other side changed it too (the later
    /// then wins) or changed the content.
    fn check_metadata_kept(
        plan: &Plan,
        archive: &Items,
        (side, before, other): (Side, &Items, &Items),
        after: &Items,
    ) -> Result<(), TestCaseError> {
        for (rel, x) in before {
            let Some(a) = archive.get(rel).filter(|a| same_kind(a, x)) else {
                continue;
            };
            let conflict = plan.conflicts.iter().find(|c| &c.rel == rel);
            if let Some(Conflict {
                winner,
                contest: Contest::Content { saved_as },
                ..
            }) = conflict
                && *winner != side
            {
                prop_assert_eq!(after.get(saved_as), Some(x), "{:?} kept whole", saved_as);
                continue;
            }
            let symlink = matches!(x, Item::Symlink { .. });
            for g in 0..3 {
                let (want, was) = (groups(x.meta())[g], groups(a.meta())[g]);
                if want == was || (g == 0 && symlink) {
                    continue;
                }
                let lost_to_other = matches!(conflict, Some(Conflict {
                    winner,
                    contest: Contest::Metadata { fields, .. },
                    ..
                }) if *winner != side && field(*fields, g));
                if lost_to_other {
                    continue;
                }
                let end = after.get(rel);
                prop_assert!(
                    end.is_some_and(|e| same_kind(e, x) && groups(e.meta())[g] == want),
                    "{:?}'s change of field group {} on {:?} lost: {:?} -> {:?}, now {:?}",
                    rel,
                    g,
                    side,
                    a,
                    x,
                    end
                );
            }
            // A time changed alone, on a file whose content the other side left as it was.
            let y = other.get(rel);
            if !is_dir(Some(x))
                && a.same_content(x)
                && mtime(a) != mtime(x)
                && let Some(y) = y.filter(|y| a.same_content(y))
            {
                let end = after.get(rel).map(mtime);
                let later = (mtime(y) != mtime(a)).then(|| mtime(x).max(mtime(y)));
                prop_assert!(
                    end == Some(mtime(x)) || end == later,
                    "{:?}'s time change on {:?} lost: now {:?}",
                    rel,
                    side,
                    end
                );
            }
        }
        Ok(())
    }

    type Ops = Vec<(bool, u8, u8, u8, u8)>;

    /// Mostly the three top-level names, so that both sides often touch the same path.
    fn path_index() -> impl Strategy<Value = u8> {
        prop_oneof![3 => 0u8..3, 1 => 3u8..12, 1 => 12u8..39]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Random edits (of content and of metadata) on both sides between passes: after every
        /// pass both sides are equal (directory times included) and equal to the new archive,
        /// every step was legal when applied, every file content either side held survives
        /// somewhere, unless it was the synced state of its path and the other side has since
        /// changed or deleted that path, and every change of metadata is on both sides, unless
        /// the other side changed the same field differently and won the conflict counted.
        #[test]
        fn passes_converge_and_lose_nothing(
            passes in prop::collection::vec(prop::collection::vec((any::<bool>(), 0u8..11, path_index(), path_index(), 1u8..5), 0..12), 1..6),
            policy in prop_oneof![Just(Policy::Newer), Just(Policy::Source), Just(Policy::Backup)],
        ) {
            let (mut archive, mut src, mut dst) = (rooted(), rooted(), rooted());
            let mut t = 1;
            for (n, ops) in passes.iter().enumerate() {
                let ops: &Ops = ops;
                for &(on_source, op, p, q, c) in ops {
                    t += 1;
                    mutate(if on_source { &mut src } else { &mut dst }, op, p, q, c, t);
                }
                // Contents that may legitimately vanish: a side's synced state at a path the
                // other side changed.
                let mut before = contents(src.values());
                before.extend(contents(dst.values()));
                let mut expendable = HashSet::new();
                for (z, other) in [(&src, &dst), (&dst, &src)] {
                    for (rel, item) in z.iter() {
                        if same_content(archive.get(rel), Some(item)) && !same_content(archive.get(rel), other.get(rel)) {
                            expendable.extend(contents([item]));
                        }
                    }
                }
                let (src_before, dst_before) = (src.clone(), dst.clone());
                // One stamp for every pass: passes within one second must not reuse a name.
                let plan = plan_of(&archive, &src, &dst, policy, "20260101-000000");
                apply(&plan, &mut src, &mut dst);
                prop_assert_eq!(&src, &dst, "both sides equal after pass {}", n);
                let mut next = archive.clone();
                for (k, v) in &plan.finals {
                    match v {
                        Some(v) => next.insert(k.clone(), v.clone()),
                        None => next.remove(k),
                    };
                }
                prop_assert_eq!(&next, &src, "the archive records what both sides hold");
                let mut after = contents(src.values());
                after.extend(contents(dst.values()));
                for c in before.difference(&after) {
                    prop_assert!(expendable.contains(c), "content {:?} lost in pass {}", c, n);
                }
                check_metadata_kept(&plan, &archive, (Side::Source, &src_before, &dst_before), &src)?;
                check_metadata_kept(&plan, &archive, (Side::Backup, &dst_before, &src_before), &src)?;
                archive = next;
            }
        }
    }

    #[test]
    fn conflict_names_keep_the_extension_and_count_up() {
        let taken: HashSet<PathBuf> = [PathBuf::from("d/a.conflict-20260101-000000.txt")].into();
        assert_eq!(
            conflict_name(Path::new("d/a.txt"), "20260101-000000", |p| taken
                .contains(p)),
            Path::new("d/a.conflict-20260101-000000-2.txt")
        );
        assert_eq!(
            conflict_name(Path::new(".bashrc"), "S", |_| false),
            Path::new(".bashrc.conflict-S")
        );
        assert_eq!(
            conflict_name(Path::new("Makefile"), "S", |_| false),
            Path::new("Makefile.conflict-S")
        );
    }

    #[test]
    fn edit_beats_delete_and_new_file_keeps_deleted_directory() {
        let mut archive = Items::new();
        archive.insert("d".into(), dir());
        archive.insert("d/old".into(), file(1, 1));
        archive.insert("f".into(), file(2, 1));
        // SOURCE deleted d and f; BACKUP added d/new and edited f.
        let src = Items::new();
        let mut dst = archive.clone();
        dst.insert("d/new".into(), file(3, 2));
        dst.insert("f".into(), file(4, 2));
        let plan = plan_of(&archive, &src, &dst, Policy::Newer, "S");
        assert_eq!(final_of(&plan, &archive, "d"), Some(dir()));
        assert_eq!(final_of(&plan, &archive, "d/new"), Some(file(3, 2)));
        assert_eq!(
            final_of(&plan, &archive, "d/old"),
            None,
            "the unchanged sibling stays deleted"
        );
        assert_eq!(final_of(&plan, &archive, "f"), Some(file(4, 2)));
        assert!(plan.conflicts.is_empty());
    }

    #[test]
    fn conflict_goes_to_the_policy_and_keeps_the_loser_on_both_sides() {
        let mut archive = Items::new();
        archive.insert("f.txt".into(), file(1, 1));
        let mut src = archive.clone();
        let mut dst = archive.clone();
        src.insert("f.txt".into(), file(2, 5));
        dst.insert("f.txt".into(), file(3, 9));
        for (policy, winner, kept) in [
            (Policy::Newer, Side::Backup, file(2, 5)),
            (Policy::Source, Side::Source, file(3, 9)),
            (Policy::Backup, Side::Backup, file(2, 5)),
        ] {
            let plan = plan_of(&archive, &src, &dst, policy, "S");
            assert_eq!(plan.conflicts.len(), 1);
            assert_eq!(plan.conflicts[0].winner, winner, "{policy:?}");
            let saved_as = PathBuf::from("f.conflict-S.txt");
            assert_eq!(plan.conflicts[0].contest, Contest::Content { saved_as });
            assert_eq!(final_of(&plan, &archive, "f.conflict-S.txt"), Some(kept));
        }
    }

    #[test]
    fn file_against_directory_lets_the_directory_keep_the_name() {
        let archive = Items::new();
        let mut src = Items::new();
        src.insert("x".into(), file(1, 99));
        let mut dst = Items::new();
        dst.insert("x".into(), dir());
        dst.insert("x/in".into(), file(2, 1));
        let plan = plan_of(&archive, &src, &dst, Policy::Source, "S");
        assert_eq!(final_of(&plan, &archive, "x"), Some(dir()));
        assert_eq!(plan.conflicts[0].verdict, Verdict::Directory);
        assert_eq!(final_of(&plan, &archive, "x.conflict-S"), Some(file(1, 99)));
    }

    /// `chmod 600` on one side and a content edit on the other: the edit travels with the new
    /// mode, and the side that changed the mode gets it too; no conflict.
    #[test]
    fn a_mode_change_and_an_edit_on_the_other_side_are_both_kept() {
        let mut archive = Items::new();
        archive.insert("f".into(), file(1, 1));
        let mut src = archive.clone();
        let mut dst = archive.clone();
        src.insert("f".into(), with(&file(1, 1), |m| m.mode = 0o600));
        dst.insert("f".into(), file(2, 7));
        let plan = plan_of(&archive, &src, &dst, Policy::Newer, "S");
        let want = with(&file(2, 7), |m| m.mode = 0o600);
        assert_eq!(final_of(&plan, &archive, "f"), Some(want.clone()));
        assert!(plan.conflicts.is_empty());
        // BACKUP's file takes the mode before SOURCE copies it.
        assert!(plan.steps.iter().any(|s| matches!(s,
            Step::SetMeta { side: Side::Backup, meta, .. } if meta == want.meta())));
        assert!(plan.steps.iter().any(|s| matches!(
            s,
            Step::Copy {
                side: Side::Source,
                ..
            }
        )));
    }

    /// Different modes on both sides: one conflict over metadata, the policy's mode on both.
    #[test]
    fn different_modes_on_both_sides_are_a_conflict_the_policy_settles() {
        let mut archive = Items::new();
        archive.insert("f".into(), file(1, 1));
        let src: Items = [("f".into(), with(&file(1, 1), |m| m.mode = 0o600))].into();
        let dst: Items = [("f".into(), with(&file(1, 1), |m| m.mode = 0o640))].into();
        for (policy, winner, mode) in [
            (Policy::Source, Side::Source, 0o600),
            (Policy::Backup, Side::Backup, 0o640),
            (Policy::Newer, Side::Source, 0o600),
        ] {
            let plan = plan_of(&archive, &src, &dst, policy, "S");
            assert_eq!(plan.conflicts.len(), 1, "{policy:?}");
            let c = &plan.conflicts[0];
            assert_eq!(c.winner, winner);
            let Contest::Metadata { fields, lost } = &c.contest else {
                panic!("a conflict over metadata: {c:?}");
            };
            assert_eq!(fields.to_string(), "mode");
            assert_eq!(lost.mode, 0o600 + 0o640 - mode);
            let fin = final_of(&plan, &archive, "f").expect("kept");
            assert_eq!(fin.meta().mode, mode);
        }
    }

    /// A change of metadata is a modification: it beats a deletion on the other side.
    #[test]
    fn a_metadata_change_beats_a_deletion() {
        let mut archive = Items::new();
        archive.insert("f".into(), file(1, 1));
        let changed = with(&file(1, 1), |m| m.uid = 7);
        let src: Items = [("f".into(), changed.clone())].into();
        let dst = Items::new();
        let plan = plan_of(&archive, &src, &dst, Policy::Newer, "S");
        assert_eq!(final_of(&plan, &archive, "f"), Some(changed));
        assert!(plan.conflicts.is_empty());
        // A directory's time alone is no change: it stays deleted.
        let mut archive = Items::new();
        archive.insert("d".into(), dir());
        let src: Items = [("d".into(), with(&dir(), |m| m.mtime.secs = 50))].into();
        let plan = plan_of(&archive, &src, &Items::new(), Policy::Newer, "S");
        assert_eq!(final_of(&plan, &archive, "d"), None);
    }

    /// A directory whose entries a pass changes on a side is given its final time after them.
    #[test]
    fn a_directory_whose_entries_change_gets_its_time_back() {
        let mut archive = rooted();
        archive.insert("d".into(), dir());
        let mut src = archive.clone();
        let dst = archive.clone();
        src.insert("d/new".into(), file(1, 5));
        let d_moved = with(&dir(), |m| m.mtime.secs = 5);
        src.insert("d".into(), d_moved.clone());
        let plan = plan_of(&archive, &src, &dst, Policy::Newer, "S");
        assert_eq!(final_of(&plan, &archive, "d"), Some(d_moved.clone()));
        assert!(plan.steps.iter().any(|s| matches!(s,
            Step::Dir { side: Side::Backup, rel, want: Some(meta), changes_inside: true, .. }
                if rel == Path::new("d") && meta == d_moved.meta())));
        // The root's entries did not change: it is left alone.
        assert!(!plan.steps.iter().any(|s| s.rel() == Path::new("")));
    }
}
