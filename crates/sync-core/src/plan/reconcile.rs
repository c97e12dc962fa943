//! Two-way reconciliation (SPEC §4): for every path, compare each side with the archive of
//! the last completed pass and decide what both sides must hold, and which steps get there.
//!
//! Pure: no I/O, so the decisions are tested directly, property by property.
//!
//! The rules, per path: a side "changed" if its content (kind, SHA-256, link target) differs
//! from the archive's. One side changed: its state wins, deletion included. Both changed
//! alike: nothing to do. Both changed differently: a deletion loses to a modification; two
//! modifications are a conflict, won by the policy, and the loser is kept under a conflict name
//! on both sides. A directory keeps its name against a file, and a directory comes back if
//! anything beneath it survives: a new or edited file inside a directory deleted on the other
//! side is never lost. Mode and mtime changes alone travel without copying content.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::model::Side;
use crate::model::{Item, ItemList, Items};
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

/// A conflict and how it was settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The contested path.
    pub rel: PathBuf,
    /// The side whose version keeps the name.
    pub winner: Side,
    /// Why.
    pub verdict: Verdict,
    /// Where the loser's version is kept, on both sides.
    pub saved_as: PathBuf,
}

/// What a pass must do.
#[derive(Debug, Default)]
pub struct Plan {
    /// Every path whose archive entry changes, and what both sides hold once the pass is
    /// done (`None`: nothing). Paths not in here hold what the archive says (or are under a
    /// directory that could not be read) and keep their archive entry.
    pub finals: BTreeMap<PathBuf, Option<Item>>,
    /// The steps, in no particular order (the applier orders them), with the items they
    /// expect to find.
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

/// The metadata that travels: all of it, but a link's mode (it has none of its own) and a
/// directory's time (which moves with every change inside and is not carried).
fn same_meta(a: &Item, b: &Item) -> bool {
    let (x, y) = (a.meta(), b.meta());
    let owner = x.uid == y.uid && x.gid == y.gid && x.xattrs == y.xattrs;
    owner
        && match (a, b) {
            (Item::Dir { .. }, Item::Dir { .. }) => x.mode == y.mode,
            (Item::Symlink { .. }, Item::Symlink { .. }) => x.mtime == y.mtime,
            _ => x.mode == y.mode && x.mtime == y.mtime,
        }
}

fn mtime(item: &Item) -> crate::model::Timestamp {
    item.meta().mtime
}

fn is_dir(item: Option<&Item>) -> bool {
    matches!(item, Some(Item::Dir { .. }))
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
/// conflict copies.
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
    // Deepest first: a directory is decided after everything beneath it.
    for (rel, a, s, d) in rows.into_iter().rev() {
        if covered(rel) {
            continue;
        }
        let s_changed = !same_content(a, s);
        let d_changed = !same_content(a, d);

        // The final content, and the side whose version loses a conflict.
        let (mut fin, mut loser): (Option<&Item>, Option<(Side, Verdict)>) =
            match (s_changed, d_changed) {
                (false, _) => (d, None),
                (true, false) => (s, None),
                (true, true) if same_content(s, d) => (s, None),
                (true, true) => match (s, d) {
                    // A modification beats a deletion.
                    (None, _) => (d, None),
                    (_, None) => (s, None),
                    (Some(Item::Dir { .. }), Some(_)) => {
                        (s, Some((Side::Backup, Verdict::Directory)))
                    }
                    (Some(_), Some(Item::Dir { .. })) => {
                        (d, Some((Side::Source, Verdict::Directory)))
                    }
                    (Some(si), Some(di)) => {
                        let source_wins = match policy {
                            Policy::Source => true,
                            Policy::Backup => false,
                            Policy::Newer => mtime(si) >= mtime(di),
                        };
                        if source_wins {
                            (s, Some((Side::Backup, Verdict::Policy(policy))))
                        } else {
                            (d, Some((Side::Source, Verdict::Policy(policy))))
                        }
                    }
                },
            };

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
        }

        // Metadata: when both sides already hold the final content, the newest change of mode
        // or mtime travels.
        let mut fin_item = fin.cloned();
        if let (Some(f), Some(si), Some(di)) = (fin, s, d)
            && same_content(Some(si), Some(f))
            && same_content(Some(di), Some(f))
            && !same_meta(si, di)
        {
            let s_meta = a.is_none_or(|ai| !same_meta(ai, si));
            let d_meta = a.is_none_or(|ai| !same_meta(ai, di));
            let take_source = match (s_meta, d_meta) {
                (true, false) => true,
                (false, true) => false,
                _ => mtime(si) >= mtime(di),
            };
            fin_item = Some(if take_source { si.clone() } else { di.clone() });
        }

        if fin_item.is_some()
            && let Some(parent) = rel.parent()
        {
            alive_parents.insert(parent.as_os_str().as_bytes());
        }

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
                    saved_as: to,
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
            steps_for_side(&mut plan.steps, side, rel, here, fin_item.as_ref());
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
/// other side, which holds `fin` already.
fn steps_for_side(
    steps: &mut Vec<Step<Item>>,
    side: Side,
    rel: &Path,
    here: Option<&Item>,
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
            steps.push(arrive(side, rel, f, Some(f.clone()), true, replace));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Meta, Timestamp};
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

    /// Applies a plan to in-memory sides in the order the real apply step uses, checking that
    /// every step is legal at its turn.
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
            assert_eq!(here.get(rel), Some(seen), "removing {rel:?} as seen");
            assert_eq!(subtree(here, rel).len(), 1, "{rel:?} empty when removed");
            here.remove(rel);
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
                    let item = source
                        .clone()
                        .or_else(|| plan.finals.get(rel).cloned().flatten())
                        .expect("a copy knows what it copies");
                    assert!(
                        matches!(known, Known::Digest { exact: true, .. })
                            && same_content(there.get(rel), Some(&item)),
                        "copy source {rel:?} holds the content"
                    );
                    assert_eq!(
                        there.get(rel),
                        Some(&item),
                        "copy source {rel:?} has the metadata too"
                    );
                    assert!(parent_ok(here, rel), "parent of {rel:?}");
                    assert_eq!(
                        here.get(rel),
                        replace.as_deref(),
                        "replacing {rel:?} as seen"
                    );
                    here.insert(rel.clone(), item);
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
                }
                Step::SetMeta {
                    side: s,
                    rel,
                    seen,
                    meta,
                    ..
                } => {
                    let (here, _) = side(*s, src, dst);
                    assert_eq!(here.get(rel), Some(seen));
                    assert!(
                        !matches!(seen, Item::Dir { .. }),
                        "directories are finished apart"
                    );
                    here.insert(rel.clone(), seen.with_meta(*meta));
                }
                _ => {}
            }
        }
        for step in &plan.steps {
            if let Step::Dir {
                side: s,
                rel,
                seen: Some(seen),
                want: Some(meta),
                ..
            } = step
            {
                let (here, _) = side(*s, src, dst);
                assert_eq!(here.get(rel), Some(seen));
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

    /// A user's change to one side; impossible ones are skipped.
    fn mutate(tree: &mut Items, op: u8, p: u8, q: u8, content: u8, t: i64) {
        let p = path(p);
        let q = path(q);
        match op % 7 {
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
                for anc in ancestors {
                    tree.entry(anc).or_insert_with(dir);
                }
                tree.insert(p, content_at(content, t));
            }
            // edit a file
            1 => {
                let new = content_at(content, t);
                if let Some(old @ Item::File { .. }) = tree.get(&p)
                    && !same_content(Some(old), Some(&new))
                {
                    tree.insert(p, new);
                }
            }
            // delete, recursively
            2 => {
                for k in subtree(tree, &p) {
                    tree.remove(&k);
                }
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
                }
            }
            // type change: file -> empty directory, directory -> file
            4 => match tree.get(&p) {
                Some(Item::File { .. }) => {
                    tree.insert(p, dir());
                }
                Some(Item::Dir { .. }) => {
                    for k in subtree(tree, &p) {
                        tree.remove(&k);
                    }
                    tree.insert(p, content_at(content, t));
                }
                _ => {}
            },
            // a symlink, created or retargeted
            5 => {
                if parent_ok(tree, &p) && !is_dir(tree.get(&p)) {
                    tree.insert(
                        p,
                        Item::Symlink {
                            target: PathBuf::from(NAMES[usize::from(content) % 3]),
                            meta: Meta::plain(0o777, Timestamp { secs: t, nanos: 0 }),
                        },
                    );
                }
            }
            // a time-only change
            _ => {
                if let Some(item @ Item::File { .. }) = tree.get(&p).cloned() {
                    let meta = Meta {
                        mtime: Timestamp { secs: t, nanos: 1 },
                        ..*item.meta()
                    };
                    tree.insert(p, item.with_meta(meta));
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

    type Ops = Vec<(bool, u8, u8, u8, u8)>;

    /// Mostly the three top-level names, so that both sides often touch the same path.
    fn path_index() -> impl Strategy<Value = u8> {
        prop_oneof![3 => 0u8..3, 1 => 3u8..12, 1 => 12u8..39]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Random edits on both sides between passes: after every pass both sides are equal
        /// and equal to the new archive, every step was legal when applied, and every file
        /// content either side held survives somewhere, unless it was the synced state of its
        /// path and the other side has since changed or deleted that path.
        #[test]
        fn passes_converge_and_lose_nothing(
            passes in prop::collection::vec(prop::collection::vec((any::<bool>(), 0u8..7, path_index(), path_index(), 1u8..5), 0..12), 1..6),
            policy in prop_oneof![Just(Policy::Newer), Just(Policy::Source), Just(Policy::Backup)],
        ) {
            let (mut archive, mut src, mut dst) = (Items::new(), Items::new(), Items::new());
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
            assert_eq!(plan.conflicts[0].saved_as, Path::new("f.conflict-S.txt"));
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
}
