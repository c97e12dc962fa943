//! The one plan vocabulary. Every kind of pass says what it wants done as [`Step`]s, each
//! carrying what the scan saw where it acts, so that the one applier ([`crate::apply`]) can
//! check, right before acting, that nothing changed since. A step names the side it changes;
//! content is read from the other side.
//!
//! A step is generic over what the planner saw at a path: passes that scan plan with the
//! scan's [`Entry`] (the default); the two-way reconcile, which is pure, plans with the
//! [`Item`]s it compares, and its pass binds them to the scan's entries before applying.

use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use checksum::Digest;

use crate::display::Escaped;
use crate::model::{Entry, Item, Kind, LinkFrom, Meta, Node, Side, path_order};
use crate::tree::temp;

/// What a copy knows of its source's content before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Hashed or taken from the cache this pass. With `exact`, only these bytes may be
    /// installed (a two-way pass records them in its archive).
    Digest {
        /// The digest.
        digest: Digest,
        /// Only these bytes may be installed.
        exact: bool,
    },
    /// Not known, and the file being replaced holds these bytes: a copy whose bytes hash to
    /// them installs nothing (the source was only touched).
    Unless(Digest),
    /// Not read before the plan: the copy hashes what it copies.
    Unread,
}

/// One thing a pass does to one path of one side. `S` is what the planner saw there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<S = Entry> {
    /// Move what the scan saw at `rel` to `to` beside it, never over anything (a conflict's
    /// losing version, kept under a conflict name).
    SaveAside {
        /// The side.
        side: Side,
        /// Where it is.
        rel: PathBuf,
        /// Its new name.
        to: PathBuf,
        /// What the scan saw at `rel`.
        seen: S,
    },
    /// Remove what the scan saw (a directory once its content is gone).
    Remove {
        /// The side.
        side: Side,
        /// The path.
        rel: PathBuf,
        /// What the scan saw.
        seen: S,
    },
    /// Create a directory (private until [`Step::Dir`] gives it its mode, last).
    MakeDir {
        /// The side.
        side: Side,
        /// The path.
        rel: PathBuf,
    },
    /// Copy the other side's file at `rel` to `rel`, over `replace` if set.
    Copy {
        /// The side written.
        side: Side,
        /// The path read on the other side and written on this one.
        rel: PathBuf,
        /// The file read, as the scan saw it; `None` where it was not scanned under this name
        /// (a conflict copy reads the name its file was saved as this pass).
        source: Option<S>,
        /// What is known of its content.
        known: Known,
        /// What the scan saw at `rel`, to be replaced; `None` for a new name. (Boxed: a first
        /// copy holds one step per file, and most copies replace nothing.)
        replace: Option<Box<S>>,
        /// A file with the same content and metadata that this side holds already (in an
        /// earlier version): hard-linked instead of copied while it is as recorded.
        link: Option<Box<LinkFrom>>,
    },
    /// Create a symbolic link, over `replace` if set.
    Symlink {
        /// The side written.
        side: Side,
        /// The path.
        rel: PathBuf,
        /// Where it points (never followed).
        target: PathBuf,
        /// Its time, owner and attributes.
        meta: Meta,
        /// What the scan saw at `rel`, to be replaced.
        replace: Option<S>,
    },
    /// Create a FIFO, socket or device node (never opened), over `replace` if set.
    Node {
        /// The side written.
        side: Side,
        /// The path.
        rel: PathBuf,
        /// Which node.
        node: Node,
        /// Its mode, time, owner and attributes.
        meta: Meta,
        /// What the scan saw at `rel`, to be replaced.
        replace: Option<S>,
    },
    /// Give `rel` the inode of the file at `existing` on the same side, over `replace` if set:
    /// names that share an inode on the other side share one here. Runs once every copy is
    /// done, so that `existing` holds its content.
    Link {
        /// The side written.
        side: Side,
        /// The path.
        rel: PathBuf,
        /// The name it shares an inode with.
        existing: PathBuf,
        /// The other side's file at `rel`, as the scan saw it: `existing` must have its size
        /// and time.
        source: S,
        /// What the scan saw at `rel`, to be replaced.
        replace: Option<S>,
    },
    /// Same content: give what the scan saw at `rel` the metadata of the other side's.
    SetMeta {
        /// The side.
        side: Side,
        /// The path.
        rel: PathBuf,
        /// What the scan saw.
        seen: S,
        /// Mode (ignored for a link), time, owner and attributes.
        meta: Meta,
        /// The file's digest, for the hash cache to learn under its new stamp.
        digest: Option<Digest>,
    },
    /// A directory whose entries change or whose own mode (and time) must be set: opened for
    /// writing before the other steps if its mode forbids that, and given its final mode last,
    /// deepest first (adding or removing entries moves a directory's time).
    Dir {
        /// The side.
        side: Side,
        /// The path.
        rel: PathBuf,
        /// The directory as the scan saw it; `None` for one this pass makes.
        seen: Option<S>,
        /// Its final metadata; `None` to leave it.
        want: Option<Meta>,
        /// Entries are added to, replaced in or removed from it.
        changes_inside: bool,
    },
}

impl<S> Step<S> {
    /// The path the step changes.
    pub fn rel(&self) -> &Path {
        match self {
            Step::SaveAside { rel, .. }
            | Step::Remove { rel, .. }
            | Step::MakeDir { rel, .. }
            | Step::Copy { rel, .. }
            | Step::Symlink { rel, .. }
            | Step::Node { rel, .. }
            | Step::Link { rel, .. }
            | Step::SetMeta { rel, .. }
            | Step::Dir { rel, .. } => rel,
        }
    }

    /// The side the step changes.
    pub fn side(&self) -> Side {
        match self {
            Step::SaveAside { side, .. }
            | Step::Remove { side, .. }
            | Step::MakeDir { side, .. }
            | Step::Copy { side, .. }
            | Step::Symlink { side, .. }
            | Step::Node { side, .. }
            | Step::Link { side, .. }
            | Step::SetMeta { side, .. }
            | Step::Dir { side, .. } => *side,
        }
    }

    /// The same step with what was seen replaced by `bind(side, path, seen)` (the side and path
    /// where it was seen); `None` if any of it is no longer found.
    pub fn bind<T>(self, mut bind: impl FnMut(Side, &Path, S) -> Option<T>) -> Option<Step<T>> {
        Some(match self {
            Step::SaveAside {
                side,
                rel,
                to,
                seen,
            } => Step::SaveAside {
                seen: bind(side, &rel, seen)?,
                side,
                rel,
                to,
            },
            Step::Remove { side, rel, seen } => Step::Remove {
                seen: bind(side, &rel, seen)?,
                side,
                rel,
            },
            Step::MakeDir { side, rel } => Step::MakeDir { side, rel },
            Step::Copy {
                side,
                rel,
                source,
                known,
                replace,
                link,
            } => Step::Copy {
                source: match source {
                    Some(s) => Some(bind(side.other(), &rel, s)?),
                    None => None,
                },
                replace: match replace {
                    Some(r) => Some(Box::new(bind(side, &rel, *r)?)),
                    None => None,
                },
                side,
                rel,
                known,
                link,
            },
            Step::Symlink {
                side,
                rel,
                target,
                meta,
                replace,
            } => Step::Symlink {
                replace: match replace {
                    Some(r) => Some(bind(side, &rel, r)?),
                    None => None,
                },
                side,
                rel,
                target,
                meta,
            },
            Step::Node {
                side,
                rel,
                node,
                meta,
                replace,
            } => Step::Node {
                replace: match replace {
                    Some(r) => Some(bind(side, &rel, r)?),
                    None => None,
                },
                side,
                rel,
                node,
                meta,
            },
            Step::Link {
                side,
                rel,
                existing,
                source,
                replace,
            } => Step::Link {
                source: bind(side.other(), &rel, source)?,
                replace: match replace {
                    Some(r) => Some(bind(side, &rel, r)?),
                    None => None,
                },
                side,
                rel,
                existing,
            },
            Step::SetMeta {
                side,
                rel,
                seen,
                meta,
                digest,
            } => Step::SetMeta {
                seen: bind(side, &rel, seen)?,
                side,
                rel,
                meta,
                digest,
            },
            Step::Dir {
                side,
                rel,
                seen,
                want,
                changes_inside,
            } => Step::Dir {
                seen: match seen {
                    Some(s) => Some(bind(side, &rel, s)?),
                    None => None,
                },
                side,
                rel,
                want,
                changes_inside,
            },
        })
    }
}

/// The step that makes `item` appear at `rel` on `side`, its content read from the other side,
/// over `replace`; `source` is the other side's file as scanned, if it was. A file's digest is
/// known; with `exact`, only those bytes may be installed. (A directory appears private: its
/// mode and time come with its [`Step::Dir`], see [`finish`].)
pub fn arrive<S>(
    side: Side,
    rel: PathBuf,
    item: &Item,
    source: Option<S>,
    exact: bool,
    replace: Option<S>,
) -> Step<S> {
    match item {
        Item::Dir { .. } => Step::MakeDir { side, rel },
        Item::File { digest, .. } => Step::Copy {
            side,
            rel,
            source,
            known: Known::Digest {
                digest: *digest,
                exact,
            },
            replace: replace.map(Box::new),
            link: None,
        },
        Item::Symlink { target, meta } => Step::Symlink {
            side,
            rel,
            target: target.clone(),
            meta: *meta,
            replace,
        },
        Item::Special { node, meta } => Step::Node {
            side,
            rel,
            node: *node,
            meta: *meta,
            replace,
        },
    }
}

/// The step that gives the directory at `rel` on `side`, made this pass, the mode and time of
/// `item` once its content is in place.
pub fn finish<S>(side: Side, rel: PathBuf, item: &Item) -> Option<Step<S>> {
    match item {
        Item::Dir { meta } => Some(Step::Dir {
            side,
            rel,
            seen: None,
            want: Some(*meta),
            changes_inside: false,
        }),
        _ => None,
    }
}

/// What a step is about, for its log line: a directory, a symbolic link, or anything else.
pub trait Seen {
    /// True for a directory.
    fn is_dir(&self) -> bool;
    /// True for a symbolic link.
    fn is_symlink(&self) -> bool;
}

impl Seen for Entry {
    fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }
    fn is_symlink(&self) -> bool {
        matches!(self.kind, Kind::Symlink(_))
    }
}

impl Seen for Item {
    fn is_dir(&self) -> bool {
        matches!(self, Item::Dir { .. })
    }
    fn is_symlink(&self) -> bool {
        matches!(self, Item::Symlink { .. })
    }
}

/// Whether `rel` is, or is inside, something named like one of our temporary files or hidden
/// directories: a leftover of a killed pass, not the user's.
pub fn in_temp(rel: &Path) -> bool {
    rel.iter()
        .any(|n| n.as_bytes().starts_with(temp::TEMP_PREFIX.as_bytes()))
}

impl<S: Seen> Step<S> {
    /// The log line of the step as planned. With `sides`, the side it changes is named (a
    /// two-way pass changes both).
    pub fn describe(&self, sides: bool) -> String {
        let mut s = String::new();
        // The root has no name of its own; `.` is how a shell names it.
        let rel = match self.rel() {
            root if root.as_os_str().is_empty() => Path::new("."),
            rel => rel,
        };
        let (rel, side) = (Escaped(rel), self.side().name());
        let _ = match self {
            Step::SaveAside { to, .. } => write!(s, "saved {rel} as {}", Escaped(to)),
            Step::Remove { seen, .. } => {
                let what = match (seen.is_dir(), !sides && in_temp(self.rel())) {
                    (true, true) => "leftover temporary directory ",
                    (true, false) => "directory ",
                    (false, true) => "leftover temporary file ",
                    (false, false) => "",
                };
                write!(s, "removed {what}{rel}")
            }
            Step::MakeDir { .. } => write!(s, "created directory {rel}"),
            Step::Copy { replace: None, .. } => write!(s, "copied {rel}"),
            Step::Copy {
                replace: Some(_), ..
            } => write!(s, "replaced {rel}"),
            Step::Symlink {
                target, replace, ..
            } => write!(
                s,
                // A changed link is replaced; a link where a file was is created.
                "{} symlink {rel} -> {}",
                if replace.as_ref().is_some_and(Seen::is_symlink) {
                    "replaced"
                } else {
                    "created"
                },
                Escaped(target)
            ),
            Step::Node { node, .. } => write!(
                s,
                "created {} {rel}",
                match node {
                    Node::Fifo => "fifo",
                    Node::Socket => "socket",
                    Node::Char(_) => "character device",
                    Node::Block(_) => "block device",
                }
            ),
            Step::Link { existing, .. } => {
                write!(s, "hard-linked {rel} to {}", Escaped(existing))
            }
            Step::SetMeta { .. } | Step::Dir { .. } => write!(s, "updated metadata of {rel}"),
        };
        if sides {
            let preposition = match self {
                Step::Remove { .. } => "from",
                Step::Copy { replace: None, .. } => "to",
                _ => "in",
            };
            let _ = write!(s, " {preposition} {side}");
        }
        s
    }
}

/// A plan's steps, grouped by when the applier runs them.
#[derive(Debug)]
pub struct Steps<S = Entry> {
    /// Conflict losers moved aside, first, before anything could overwrite them.
    pub saves: Vec<Step<S>>,
    /// Removals, children before parents.
    pub removals: Vec<Step<S>>,
    /// New directories, parents before children.
    pub creates: Vec<Step<S>>,
    /// Copies, links and metadata, in parallel.
    pub transfers: Vec<Step<S>>,
    /// Further names of files copied, once every copy is done.
    pub links: Vec<Step<S>>,
    /// Directories opened before and finished after everything else.
    pub dirs: Vec<Step<S>>,
}

impl<S> Steps<S> {
    /// Adds `step` to its group.
    pub fn push(&mut self, step: Step<S>) {
        match step {
            Step::SaveAside { .. } => self.saves.push(step),
            Step::Remove { .. } => self.removals.push(step),
            Step::MakeDir { .. } => self.creates.push(step),
            Step::Dir { .. } => self.dirs.push(step),
            Step::Link { .. } => self.links.push(step),
            Step::Copy { .. } | Step::Symlink { .. } | Step::Node { .. } | Step::SetMeta { .. } => {
                self.transfers.push(step)
            }
        }
    }

    /// Adds `other`'s steps to these, whose order does not matter (see [`Steps::sort`]): the
    /// shorter list of each pair is moved into the longer, so that a directory holding most of
    /// a first copy's files is not copied into an empty list.
    pub fn append(&mut self, other: Steps<S>) {
        fn join<T>(into: &mut Vec<T>, mut other: Vec<T>) {
            if into.len() < other.len() {
                std::mem::swap(into, &mut other);
            }
            into.append(&mut other);
        }
        join(&mut self.saves, other.saves);
        join(&mut self.removals, other.removals);
        join(&mut self.creates, other.creates);
        join(&mut self.transfers, other.transfers);
        join(&mut self.links, other.links);
        join(&mut self.dirs, other.dirs);
    }

    /// Every step.
    pub fn iter(&self) -> impl Iterator<Item = &Step<S>> {
        self.saves
            .iter()
            .chain(&self.removals)
            .chain(&self.creates)
            .chain(&self.transfers)
            .chain(&self.links)
            .chain(&self.dirs)
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.saves.len()
            + self.removals.len()
            + self.creates.len()
            + self.transfers.len()
            + self.links.len()
            + self.dirs.len()
    }

    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts each group in path order (logs read in path order; removals run it backwards).
    pub fn sort(&mut self)
    where
        S: Send,
    {
        use rayon::prelude::*;
        let by_path = |a: &Step<S>, b: &Step<S>| path_order(a.rel(), b.rel());
        self.saves.sort_unstable_by(by_path);
        self.removals.sort_unstable_by(by_path);
        self.creates.sort_unstable_by(by_path);
        self.transfers.par_sort_unstable_by(by_path);
        self.links.sort_unstable_by(by_path);
        self.dirs.sort_unstable_by(by_path);
    }

    /// Gives back what the lists grew by and no longer need: a first copy holds them, one step
    /// per file, until its end.
    pub fn shrink_to_fit(&mut self) {
        self.saves.shrink_to_fit();
        self.removals.shrink_to_fit();
        self.creates.shrink_to_fit();
        self.transfers.shrink_to_fit();
        self.links.shrink_to_fit();
        self.dirs.shrink_to_fit();
    }
}

impl<S> Default for Steps<S> {
    fn default() -> Self {
        Steps::from_iter([])
    }
}

impl<S> Extend<Step<S>> for Steps<S> {
    fn extend<I: IntoIterator<Item = Step<S>>>(&mut self, iter: I) {
        for step in iter {
            self.push(step);
        }
    }
}

impl<S> FromIterator<Step<S>> for Steps<S> {
    fn from_iter<I: IntoIterator<Item = Step<S>>>(iter: I) -> Self {
        let mut steps = Steps {
            saves: Vec::new(),
            removals: Vec::new(),
            creates: Vec::new(),
            transfers: Vec::new(),
            links: Vec::new(),
            dirs: Vec::new(),
        };
        for step in iter {
            steps.push(step);
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Timestamp;

    fn entry(kind: Kind) -> Entry {
        Entry {
            kind,
            mode: 0o644,
            size: 1,
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            ino: 1,
            dev: 1,
            uid: 0,
            gid: 0,
            xattrs: 0,
            nlink: 1,
        }
    }

    /// One line per kind of step, with and without the side: what the logs and the tests read.
    #[test]
    fn steps_describe_themselves_as_the_logs_say() {
        let rel = PathBuf::from("d/a.txt");
        let side = Side::Backup;
        let cases: [(Step, &str); 8] = [
            (
                Step::Remove {
                    side,
                    rel: rel.clone(),
                    seen: entry(Kind::File),
                },
                "removed d/a.txt",
            ),
            (
                Step::Remove {
                    side,
                    rel: PathBuf::from(".oneway-tmp-abcdef/x"),
                    seen: entry(Kind::Dir),
                },
                "removed leftover temporary directory .oneway-tmp-abcdef/x",
            ),
            (
                Step::MakeDir {
                    side,
                    rel: rel.clone(),
                },
                "created directory d/a.txt",
            ),
            (
                Step::Copy {
                    side,
                    rel: rel.clone(),
                    source: Some(entry(Kind::File)),
                    known: Known::Unread,
                    replace: None,
                    link: None,
                },
                "copied d/a.txt",
            ),
            (
                Step::Copy {
                    side,
                    rel: rel.clone(),
                    source: Some(entry(Kind::File)),
                    known: Known::Unread,
                    replace: Some(Box::new(entry(Kind::File))),
                    link: None,
                },
                "replaced d/a.txt",
            ),
            (
                Step::Symlink {
                    side,
                    rel: rel.clone(),
                    target: PathBuf::from("t"),
                    meta: Meta::plain(0o777, Timestamp::default()),
                    replace: Some(entry(Kind::Symlink("u".into()))),
                },
                "replaced symlink d/a.txt -> t",
            ),
            (
                Step::SetMeta {
                    side,
                    rel: rel.clone(),
                    seen: entry(Kind::File),
                    meta: Meta::plain(0o600, Timestamp::default()),
                    digest: None,
                },
                "updated metadata of d/a.txt",
            ),
            (
                Step::SaveAside {
                    side,
                    rel: rel.clone(),
                    to: PathBuf::from("d/a.conflict.txt"),
                    seen: entry(Kind::File),
                },
                "saved d/a.txt as d/a.conflict.txt",
            ),
        ];
        for (step, line) in &cases {
            assert_eq!(step.describe(false), *line);
        }
        assert_eq!(cases[0].0.describe(true), "removed d/a.txt from BACKUP");
        assert_eq!(cases[3].0.describe(true), "copied d/a.txt to BACKUP");
        assert_eq!(cases[4].0.describe(true), "replaced d/a.txt in BACKUP");
        // A two-way pass never calls a user's look-alike name a leftover of ours.
        assert_eq!(
            cases[1].0.describe(true),
            "removed directory .oneway-tmp-abcdef/x from BACKUP"
        );
    }
}
