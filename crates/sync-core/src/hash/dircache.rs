//! The hash cache of mirror and two-way passes, stored one block per directory: a pass reads
//! the block of each directory as it reaches it and keeps in memory only the blocks it
//! changes, so the cache costs a pass no memory per file. Also what a pass learns while it
//! copies ([`Learner`]), and the digests of whole scanned trees ([`tree_digests`]).
//!
//! File layout: a header (magic, the pair's tag), the blocks, an index (directory → offset,
//! length and a SHA-256 prefix of the block), the index's offset, and a SHA-256 of header and
//! index. A damaged index drops the whole cache, a damaged block only its directory; being a
//! cache, neither ever decides anything on its own.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use checksum::Digest;
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use sha2::{Digest as _, Sha256};

use crate::hash::read_files;
use crate::hash::stamp::{Reader, Stamp, Timestamps, encode_stamp, is_racy};
use crate::model::{Entry, Kind, Side};
use crate::scan::Scanned;
use crate::tree::{Tree, meta};

/// Version 2: a stamp also records the digest of the file's extended attributes, and a
/// record of both sides of a file says that the pass left their attributes alike (passes read
/// attributes only of files whose stamps moved).
const MAGIC: &[u8; 8] = b"DSYNCDC2";
/// What version 1 began with: its records say nothing of attributes.
const MAGIC_V1: &[u8; 8] = b"DSYNCDC1";
/// Bytes of SHA-256 kept per block: enough to catch damage, which is all they are for.
const CHECK_LEN: usize = 16;
const STAMP_LEN: usize = 48;
const SRC: u8 = 1;
const DST: u8 = 2;
/// The BACKUP digest equals the SOURCE one and is not stored twice (the usual case).
const SAME: u8 = 4;

/// A file's stamp when it was hashed, and its digest.
pub type Known = (Stamp, Digest);

/// What is known of one file name in a directory, per side (SOURCE, BACKUP). The name is
/// owned (`Box<[u8]>`, the default) or borrowed from a block just read (`&[u8]`): a pass
/// that finds a directory unchanged allocates nothing for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<N = Box<[u8]>> {
    /// The file's name (raw bytes).
    pub name: N,
    /// SOURCE and BACKUP.
    pub sides: [Option<Known>; 2],
}

/// The records of a block's bytes (from [`DirCache::block_bytes`]), borrowing their names;
/// none if the bytes do not decode.
pub fn records(bytes: &[u8]) -> Vec<Record<&[u8]>> {
    decode_block(bytes).unwrap_or_default()
}

/// The record named `name` in `records` (sorted by name), looked for from `*cursor` on and
/// leaving the cursor there: names asked for in order cost one pass over the block, where a
/// binary search per name cost a directory of 100,000 files a tenth of a pass. A name before
/// the cursor is found by binary search.
pub fn seek_record<'r, N: std::ops::Deref<Target = [u8]>>(
    records: &'r [Record<N>],
    cursor: &mut usize,
    name: &[u8],
) -> Option<&'r Record<N>> {
    if records
        .get(cursor.wrapping_sub(1))
        .is_some_and(|r| *r.name >= *name)
    {
        *cursor = records.partition_point(|r| *r.name < *name);
    }
    while records.get(*cursor).is_some_and(|r| *r.name < *name) {
        *cursor += 1;
    }
    records.get(*cursor).filter(|r| *r.name == *name)
}

/// True if `new` holds exactly the records `old` does.
pub fn same_records(new: &[Record], old: &[Record<&[u8]>]) -> bool {
    new.len() == old.len()
        && new
            .iter()
            .zip(old)
            .all(|(a, b)| *a.name == *b.name && a.sides == b.sides)
}

#[derive(Debug, Clone, Copy)]
struct BlockRef {
    offset: u64,
    len: u32,
    check: [u8; CHECK_LEN],
}

/// How a directory's block ends a pass.
#[derive(Debug)]
pub enum BlockOut {
    /// Exactly as stored.
    Keep,
    /// Replaced by these records, sorted by name.
    New(Vec<Record>),
    /// Replaced by these records, already in their stored form (see [`BlockOut::compact`]).
    Encoded(Vec<u8>),
    /// Replaced by what was written to the pass's [`BlockWriter`] already.
    Written,
}

impl BlockOut {
    /// Puts new records in their stored form, a third of their size in memory: a first copy
    /// holds the block of every directory it made until its end.
    pub fn compact(&mut self) {
        if let BlockOut::New(records) = self
            && !records.is_empty()
        {
            *self = BlockOut::Encoded(encode_block(records));
        }
    }
}

/// The per-directory cache of one pair of roots.
#[derive(Debug, Default)]
pub struct DirCache {
    /// `None`: kept in memory only.
    location: Option<PathBuf>,
    tag: Vec<u8>,
    file: Option<File>,
    index: FxHashMap<Box<[u8]>, BlockRef>,
    /// Blocks of an in-memory cache.
    memory: FxHashMap<Box<[u8]>, Vec<u8>>,
    /// The stored file cannot be trusted (or is missing blocks): write a new one.
    damaged: bool,
}

impl DirCache {
    /// An empty cache kept in memory only.
    pub fn in_memory() -> DirCache {
        DirCache::default()
    }

    /// A file of the pair's own beside the cache's, named as the cache with `extension` added;
    /// `None` for a cache kept in memory only.
    pub fn beside(&self, extension: &str) -> Option<PathBuf> {
        let location = self.location.as_deref()?;
        let mut name = location.file_name()?.to_os_string();
        name.push(".");
        name.push(extension);
        Some(location.with_file_name(name))
    }

    /// Opens the cache of the pair `tag` at `location`, reading only its index. A missing file
    /// gives an empty cache; a damaged or foreign one too, with a warning.
    pub fn open(location: PathBuf, tag: Vec<u8>) -> DirCache {
        let mut cache = DirCache {
            location: Some(location),
            tag,
            ..DirCache::default()
        };
        cache.reopen();
        cache
    }

    fn reopen(&mut self) {
        self.file = None;
        self.index.clear();
        let Some(path) = self.location.as_deref() else {
            return;
        };
        let file = match File::open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return,
            Err(err) => {
                log::warn!(
                    "cannot read hash cache {}: {err}; rebuilding it",
                    path.display()
                );
                self.damaged = true;
                return;
            }
        };
        let mut head = [0u8; 8];
        if file.read_exact_at(&mut head, 0).is_ok() && &head == MAGIC_V1 {
            log::warn!(
                "hash cache {} was written by an earlier version, which did not compare \
                 owners and extended attributes; rebuilding it (this pass reads every file)",
                path.display()
            );
            return;
        }
        match read_index(&file, &self.tag) {
            Some(index) => {
                self.index = index;
                self.file = Some(file);
            }
            None => {
                log::warn!(
                    "hash cache {} is damaged or belongs to other roots; rebuilding it",
                    path.display()
                );
                self.damaged = true;
            }
        }
    }

    /// True if the cache holds a block for `dir`.
    pub fn has(&self, dir: &[u8]) -> bool {
        self.index.contains_key(dir) || self.memory.contains_key(dir)
    }

    /// The records of directory `dir` (relative path bytes), sorted by name; none if it has
    /// no block or its block is damaged.
    pub fn block(&self, dir: &[u8]) -> Vec<Record> {
        self.block_bytes(dir)
            .and_then(|b| decode_block(&b))
            .unwrap_or_default()
    }

    /// The stored bytes of directory `dir`'s block, checked; see [`records`].
    pub fn block_bytes(&self, dir: &[u8]) -> Option<Vec<u8>> {
        if self.location.is_none() {
            return self.memory.get(dir).cloned();
        }
        let (Some(file), Some(at)) = (&self.file, self.index.get(dir)) else {
            return None;
        };
        let mut bytes = vec![0; at.len as usize];
        if file.read_exact_at(&mut bytes, at.offset).is_err() || check_of(&bytes) != at.check {
            return None;
        }
        Some(bytes)
    }

    /// Starts the file a pass's [`DirCache::save`] will finish, so that blocks can be written
    /// while the pass goes on (a first copy then holds none of them); `None` for a cache kept in
    /// memory, or one whose file cannot be made (the blocks are then kept until the end).
    pub fn writer(&self) -> Option<BlockWriter> {
        let path = self.location.as_deref()?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let start = || -> io::Result<BlockWriter> {
            fs::create_dir_all(dir)?;
            let tmp = tempfile::Builder::new()
                .prefix(".hashcache-")
                .tempfile_in(dir)?;
            let mut header = Vec::new();
            header.extend_from_slice(MAGIC);
            header.extend_from_slice(&(self.tag.len() as u64).to_le_bytes());
            header.extend_from_slice(&self.tag);
            let mut out = BufWriter::new(tmp);
            out.write_all(&header)?;
            Ok(BlockWriter {
                open: Mutex::new(Open {
                    offset: header.len() as u64,
                    out,
                    index: FxHashMap::default(),
                    failed: None,
                }),
                header,
            })
        };
        match start() {
            Ok(writer) => Some(writer),
            Err(err) => {
                log::warn!("cannot write the hash cache in {}: {err}", dir.display());
                None
            }
        }
    }

    /// Ends a pass: `blocks` holds every directory the pass saw and how its block ends (those
    /// marked [`BlockOut::Written`] are in `writer` already); blocks of directories it did not
    /// see are dropped, except those at or under one of `unlistable` (parts of the tree the
    /// pass could not see into, kept for a later pass). Writes a new file, atomically, only if
    /// something changed.
    ///
    /// Fails if the cache directory cannot be created or written.
    pub fn save(
        &mut self,
        blocks: Vec<(Box<[u8]>, BlockOut)>,
        unlistable: &[&Path],
        writer: Option<BlockWriter>,
    ) -> io::Result<()> {
        let keep_unseen = |dir: &[u8]| {
            unlistable.iter().any(|u| {
                dir.strip_prefix(u.as_os_str().as_bytes())
                    .is_some_and(|rest| rest.is_empty() || rest[0] == b'/')
            })
        };
        let kept = blocks
            .iter()
            .filter(|(_, b)| matches!(b, BlockOut::Keep))
            .count();
        let stored = match self.location {
            Some(_) => self.index.len(),
            None => self.memory.len(),
        };
        let changed = self.damaged
            || kept != stored
            || blocks.iter().any(|(_, b)| !matches!(b, BlockOut::Keep));
        if !changed {
            return Ok(());
        }
        let mut seen: rustc_hash::FxHashSet<&[u8]> = Default::default();
        let mut order: Vec<(&[u8], Option<&BlockOut>)> = Vec::new();
        for (dir, out) in &blocks {
            seen.insert(dir);
            match out {
                BlockOut::Keep => order.push((dir, None)),
                BlockOut::New(records) if records.is_empty() => {}
                BlockOut::Written => {}
                BlockOut::New(_) | BlockOut::Encoded(_) => order.push((dir, Some(out))),
            }
        }
        let unseen: Vec<Box<[u8]>> = self
            .index
            .keys()
            .chain(self.memory.keys())
            .filter(|d| !seen.contains(&***d) && keep_unseen(d))
            .cloned()
            .collect();
        order.extend(unseen.iter().map(|d| (&**d, None)));

        if self.location.is_none() {
            let mut memory = FxHashMap::default();
            for (dir, out) in order {
                let bytes = match out {
                    Some(BlockOut::New(records)) => encode_block(records),
                    Some(BlockOut::Encoded(bytes)) => bytes.clone(),
                    _ => self.memory.get(dir).cloned().unwrap_or_default(),
                };
                memory.insert(dir.into(), bytes);
            }
            self.memory = memory;
            return Ok(());
        }
        let writer = match writer {
            Some(writer) => writer,
            None => self
                .writer()
                .ok_or_else(|| io::Error::other("the hash cache file cannot be made"))?,
        };
        let mut buf = Vec::new();
        for (dir, block) in order {
            match block {
                Some(BlockOut::New(records)) => writer.write(dir, &encode_block(records)),
                Some(BlockOut::Encoded(bytes)) => writer.write(dir, bytes),
                _ => {
                    let (Some(file), Some(old)) = (&self.file, self.index.get(dir)) else {
                        continue;
                    };
                    buf.resize(old.len as usize, 0);
                    file.read_exact_at(&mut buf, old.offset)?;
                    writer.write(dir, &buf);
                }
            }
        }
        writer.finish(&self.location.clone().unwrap_or_default())?;
        self.damaged = false;
        self.reopen();
        Ok(())
    }
}

/// A new cache file being written, block by block (safe to share between workers), until
/// [`DirCache::save`] gives it its index and its name.
pub struct BlockWriter {
    open: Mutex<Open>,
    header: Vec<u8>,
}

struct Open {
    out: BufWriter<tempfile::NamedTempFile>,
    offset: u64,
    index: FxHashMap<Box<[u8]>, BlockRef>,
    /// The first write that failed: the file is not finished.
    failed: Option<io::Error>,
}

impl BlockWriter {
    /// Writes the stored form of `dir`'s block. A failure is kept for [`DirCache::save`].
    pub fn write(&self, dir: &[u8], bytes: &[u8]) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.failed.is_some() {
            return;
        }
        if let Err(err) = open.out.write_all(bytes) {
            open.failed = Some(err);
            return;
        }
        let at = BlockRef {
            offset: open.offset,
            len: bytes.len() as u32,
            check: check_of(bytes),
        };
        open.offset += bytes.len() as u64;
        open.index.insert(dir.into(), at);
    }

    /// Writes the index and the trailer and renames the file to `path`.
    fn finish(self, path: &Path) -> io::Result<()> {
        let mut open = self.open.into_inner().unwrap_or_else(|e| e.into_inner());
        if let Some(err) = open.failed {
            return Err(err);
        }
        let index_bytes = encode_index(&open.index);
        open.out.write_all(&index_bytes)?;
        open.out.write_all(&open.offset.to_le_bytes())?;
        let mut sum = Sha256::new();
        sum.update(&self.header);
        sum.update(&index_bytes);
        open.out.write_all(&sum.finalize())?;
        // Whatever a crash leaves of this file fails its checks and is dropped, so it needs
        // no fsync of its own.
        let tmp = open.out.into_inner().map_err(|e| e.into_error())?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

/// A digest learnt while applying a pass, for one path on one side or both (a copy learns
/// both at once: one record, one path), waiting to be put in its directory's block.
struct Learnt {
    rel: PathBuf,
    digest: Digest,
    /// The stamp of the file on each side that has these bytes.
    stamps: [Option<Stamp>; 2],
}

/// Collects the digests a pass learns while it reads and copies (safe to share between
/// workers), and says which digests taken from a stamp can be trusted now. Mirror and two-way
/// passes put what it learnt into their blocks.
pub struct Learner {
    stamps: [Timestamps; 2],
    learnt: Mutex<Vec<Learnt>>,
}

impl Learner {
    /// For the roots `source` and `backup`, whose file systems decide which digests may be
    /// remembered.
    pub fn new(source: &Path, backup: &Path) -> Learner {
        Learner {
            stamps: [Timestamps::of(source), Timestamps::of(backup)],
            learnt: Mutex::new(Vec::new()),
        }
    }

    /// A learner for the same roots that has learnt nothing yet.
    pub fn fresh(&self) -> Learner {
        Learner {
            stamps: self.stamps,
            learnt: Mutex::new(Vec::new()),
        }
    }

    /// Makes room for `records` more records at once: a first copy learns one per file, and
    /// a list that doubled as it grew would hold up to twice that, and both its old and new
    /// buffers while it moved.
    pub fn expect(&self, records: usize) {
        self.learnt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reserve_exact(records);
    }

    /// How the file system of `side` stamps changes.
    pub fn stamps(&self, side: Side) -> Timestamps {
        self.stamps[side as usize]
    }

    /// True if a digest of `entry` taken from its stamp can be trusted now (see [`is_racy`]).
    pub fn trusted(&self, side: Side, entry: &Entry) -> bool {
        !is_racy(entry, SystemTime::now(), self.stamps(side))
    }

    /// Remembers that `rel` on `side`, as `entry`, has `digest`. `hashed_at` is when reading
    /// began, or `None` for a file this pass wrote itself; a file changed within a timestamp
    /// tick of being read is not remembered (see [`is_racy`]).
    pub fn learn(
        &self,
        side: Side,
        rel: &Path,
        entry: &Entry,
        digest: Digest,
        hashed_at: Option<SystemTime>,
    ) {
        if hashed_at.is_some_and(|t| is_racy(entry, t, self.stamps(side))) {
            return;
        }
        let mut stamps = [None, None];
        stamps[side as usize] = Some(Stamp::of(entry));
        self.push(rel, digest, stamps);
    }

    /// Remembers that a copy of `rel` to `written` read the other side's `source` (reading
    /// began at `hashed_at`; it is not remembered if racy, as in [`Learner::learn`]) and left
    /// `copy`, both with `digest`: one record for both sides.
    pub fn learn_copy(
        &self,
        written: Side,
        rel: &Path,
        (source, hashed_at): (&Entry, SystemTime),
        copy: &Entry,
        digest: Digest,
    ) {
        let read = written.other();
        let source = (!is_racy(source, hashed_at, self.stamps(read))).then(|| Stamp::of(source));
        let mut stamps = [None, None];
        stamps[read as usize] = source;
        stamps[written as usize] = Some(Stamp::of(copy));
        self.push(rel, digest, stamps);
    }

    fn push(&self, rel: &Path, digest: Digest, stamps: [Option<Stamp>; 2]) {
        self.learnt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Learnt {
                rel: rel.to_path_buf(),
                digest,
                stamps,
            });
    }

    /// Puts what was learnt into the blocks of the directories concerned (read from `cache`
    /// where the pass kept a block as it was).
    pub fn record_into(self, blocks: &mut Vec<(Box<[u8]>, BlockOut)>, cache: &DirCache) {
        let mut learnt = self.learnt.into_inner().unwrap_or_else(|e| e.into_inner());
        if learnt.is_empty() {
            return;
        }
        // Grouped by directory and sorted by name, so that each block takes its records in one
        // merge: inserting them one at a time moved the records after each one, which was a
        // third of a first copy of 100,000 files in one directory. Sorted in place (a stable
        // sort would hold a second copy of the list): should one side of a path be learnt
        // twice, either record may win, and both are stamps of what this pass read or wrote,
        // so the other is at worst a cache miss next time.
        learnt.par_sort_unstable_by(|a, b| split_dir(&a.rel).cmp(&split_dir(&b.rel)));
        let mut at: FxHashMap<Box<[u8]>, usize> = blocks
            .iter()
            .enumerate()
            .map(|(i, (dir, _))| (dir.clone(), i))
            .collect();
        for group in learnt.chunk_by(|a, b| split_dir(&a.rel).0 == split_dir(&b.rel).0) {
            let dir = split_dir(&group[0].rel).0;
            let i = *at.entry(dir.into()).or_insert_with(|| {
                blocks.push((dir.into(), BlockOut::Keep));
                blocks.len() - 1
            });
            let out = &mut blocks[i].1;
            let old = match std::mem::replace(out, BlockOut::Keep) {
                BlockOut::Keep | BlockOut::Written => cache.block(dir),
                BlockOut::New(records) => records,
                BlockOut::Encoded(bytes) => decode_block(&bytes).unwrap_or_default(),
            };
            *out = BlockOut::New(merge_learnt(old, group));
        }
    }
}

/// `records` (sorted by name) with what `learnt` (one directory's, sorted by name) says of
/// each side of each name.
fn merge_learnt(records: Vec<Record>, learnt: &[Learnt]) -> Vec<Record> {
    let mut merged: Vec<Record> = Vec::with_capacity(records.len() + learnt.len());
    let mut old = records.into_iter().peekable();
    for l in learnt {
        let name = split_dir(&l.rel).1;
        while let Some(r) = old.next_if(|r| *r.name < *name) {
            merged.push(r);
        }
        if merged.last().is_none_or(|r| *r.name != *name) {
            let record = old.next_if(|r| *r.name == *name).unwrap_or_else(|| Record {
                name: name.into(),
                sides: [None, None],
            });
            merged.push(record);
        }
        let record = merged.last_mut().expect("pushed just above");
        for (side, stamp) in record.sides.iter_mut().zip(l.stamps) {
            if let Some(stamp) = stamp {
                *side = Some((stamp, l.digest));
            }
        }
    }
    merged.extend(old);
    merged
}

/// The digests of every file of two scanned trees, per side.
pub struct TreeDigests {
    /// SOURCE and BACKUP: for each entry of the tree, in the tree's order, its digest (`None`
    /// for what is not a file, could not be read, or was left unread).
    pub sides: [Vec<Option<Digest>>; 2],
    /// Where a scan left files' extended attributes unread: the digests of those of each file
    /// whose content digest is known, by its index in the tree (see [`Entries::set_xattrs`]).
    ///
    /// [`Entries::set_xattrs`]: crate::scan::Entries::set_xattrs
    pub xattrs: [Vec<(usize, u64)>; 2],
    /// Files that could not be read.
    pub failed: Vec<(Side, PathBuf, io::Error)>,
    /// How each directory's block ends, for [`DirCache::save`].
    pub blocks: Vec<(Box<[u8]>, BlockOut)>,
    /// Files read.
    pub hashed: u64,
    /// Digests taken from the cache.
    pub cache_hits: u64,
}

/// One file of a tree: its place in the tree's order, path, name and entry.
type TreeFile<'t> = (usize, &'t Path, &'t [u8], &'t Entry);

/// Digests every file of `scans` (SOURCE, BACKUP, of `trees`): from `cache` while a file's
/// stamp is unchanged, otherwise read, directory by directory in parallel (and the files of
/// one directory in parallel when several must be read).
///
/// A file marked in `unread` (by its index in its tree) is taken from the cache too, but not
/// read when the cache does not know it: its digest is then `None`, for a copy to learn.
pub fn tree_digests<'t>(
    cache: &DirCache,
    learner: &Learner,
    trees: [&dyn Tree; 2],
    scans: [&'t Scanned; 2],
    unread: [&[bool]; 2],
) -> TreeDigests {
    // The files of each directory, both sides. A tree lists a directory's files together
    // (only its subdirectories' subtrees come between them), so the directory is looked up
    // again only when it changes.
    let mut by_dir: Vec<(&'t [u8], [Vec<TreeFile<'t>>; 2])> = Vec::new();
    let mut slot_of: FxHashMap<&'t [u8], usize> = FxHashMap::default();
    for (side, tree) in scans.iter().enumerate() {
        let mut current: Option<(&[u8], usize)> = None;
        for (i, (rel, entry)) in tree.entries.iter().enumerate() {
            if entry.kind == Kind::File {
                let (dir, name) = split_dir(rel);
                let slot = match current {
                    Some((last, slot)) if last == dir => slot,
                    _ => {
                        let slot = *slot_of.entry(dir).or_insert_with(|| {
                            by_dir.push((dir, Default::default()));
                            by_dir.len() - 1
                        });
                        current = Some((dir, slot));
                        slot
                    }
                };
                by_dir[slot].1[side].push((i, rel.as_path(), name, entry));
            }
        }
    }
    let sides = [Side::Source, Side::Backup];
    let per_dir: Vec<_> = by_dir
        .into_par_iter()
        .map(|(dir, files)| {
            let bytes = cache.block_bytes(dir);
            let old = bytes.as_deref().map(records).unwrap_or_default();
            let mut found = Vec::new();
            let mut hits = Vec::new();
            let mut reads = Vec::new();
            for side in sides {
                let mut cursor = 0;
                for &(i, rel, name, entry) in &files[side as usize] {
                    let hit = seek_record(&old, &mut cursor, name)
                        .and_then(|r| r.sides[side as usize])
                        .filter(|(stamp, _)| stamp.holds(entry));
                    match hit {
                        Some(known) => {
                            hits.push((side, name, known));
                            found.push((side, i, rel, Ok((known.1, known.0.xattrs))));
                        }
                        None if unread[side as usize].get(i).copied().unwrap_or(false) => {}
                        None => reads.push((side, i, rel, name, entry)),
                    }
                }
            }
            let hit_count = hits.len() as u64;
            let stored = old.iter().flat_map(|r| r.sides.iter().flatten()).count();
            if reads.is_empty() && stored == hits.len() {
                // Nothing was read, and the block holds only what was found in it.
                return (dir, Some(BlockOut::Keep), found, hit_count, 0);
            }
            let files: Vec<(Side, &Path)> = reads
                .iter()
                .map(|&(side, _, rel, _, _)| (side, rel))
                .collect();
            let results: Vec<_> = read_files(trees, &files)
                .into_iter()
                .zip(reads)
                .map(|((result, started), (side, i, rel, name, entry))| {
                    let cacheable = !is_racy(entry, started, learner.stamps(side));
                    // Read after the content: a change of attribute since moves the change
                    // time, which the next pass sees.
                    let result = result.and_then(|digest| {
                        let xattrs = if scans[side as usize].file_xattrs {
                            entry.xattrs
                        } else {
                            meta::xattr_digest(&trees[side as usize].xattrs(rel)?)
                        };
                        Ok((digest, xattrs))
                    });
                    (side, i, rel, name, entry, result, cacheable)
                })
                .collect();
            let hashed = results.len() as u64;
            let mut known: BTreeMap<&[u8], [Option<Known>; 2]> = BTreeMap::new();
            for (side, name, k) in hits {
                known.entry(name).or_default()[side as usize] = Some(k);
            }
            for (side, i, rel, name, entry, result, cacheable) in results {
                if let (Ok((digest, xattrs)), true) = (&result, cacheable) {
                    let stamp = Stamp {
                        xattrs: *xattrs,
                        ..Stamp::of(entry)
                    };
                    known.entry(name).or_default()[side as usize] = Some((stamp, *digest));
                }
                found.push((side, i, rel, result));
            }
            let new: Vec<Record> = known
                .into_iter()
                .map(|(name, sides)| Record {
                    name: name.into(),
                    sides,
                })
                .collect();
            let block = if same_records(&new, &old) {
                BlockOut::Keep
            } else {
                BlockOut::New(new)
            };
            let keep = !matches!(&block, BlockOut::New(r) if r.is_empty()) || cache.has(dir);
            (dir, keep.then_some(block), found, hit_count, hashed)
        })
        .collect();

    let mut out = TreeDigests {
        sides: scans.map(|t| vec![None; t.entries.len()]),
        xattrs: [Vec::new(), Vec::new()],
        failed: Vec::new(),
        blocks: Vec::new(),
        hashed: 0,
        cache_hits: 0,
    };
    for (dir, block, found, hits, hashed) in per_dir {
        if let Some(block) = block {
            out.blocks.push((dir.into(), block));
        }
        out.cache_hits += hits;
        out.hashed += hashed;
        for (side, i, rel, result) in found {
            match result {
                Ok((digest, xattrs)) => {
                    out.sides[side as usize][i] = Some(digest);
                    if !scans[side as usize].file_xattrs {
                        out.xattrs[side as usize].push((i, xattrs));
                    }
                }
                Err(err) => out.failed.push((side, rel.to_path_buf(), err)),
            }
        }
    }
    out
}

/// A relative path's directory and last component, as bytes (relative paths of a scan have
/// no trailing `/`, so the last `/` separates them).
fn split_dir(rel: &Path) -> (&[u8], &[u8]) {
    let bytes = rel.as_os_str().as_bytes();
    match bytes.iter().rposition(|&b| b == b'/') {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (&b""[..], bytes),
    }
}

fn check_of(bytes: &[u8]) -> [u8; CHECK_LEN] {
    let digest = Sha256::digest(bytes);
    let mut check = [0; CHECK_LEN];
    check.copy_from_slice(&digest[..CHECK_LEN]);
    check
}

fn encode_index(index: &FxHashMap<Box<[u8]>, BlockRef>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(index.len() as u64).to_le_bytes());
    for (dir, at) in index {
        out.extend_from_slice(&(dir.len() as u32).to_le_bytes());
        out.extend_from_slice(dir);
        out.extend_from_slice(&at.offset.to_le_bytes());
        out.extend_from_slice(&at.len.to_le_bytes());
        out.extend_from_slice(&at.check);
    }
    out
}

fn read_index(mut file: &File, tag: &[u8]) -> Option<FxHashMap<Box<[u8]>, BlockRef>> {
    let len = file.seek(SeekFrom::End(0)).ok()?;
    let header_len = (MAGIC.len() + 8 + tag.len()) as u64;
    let trailer_len = 8 + 32;
    if len < header_len + 8 + trailer_len {
        return None;
    }
    let mut trailer = [0; 40];
    file.read_exact_at(&mut trailer, len - trailer_len).ok()?;
    let index_at = u64::from_le_bytes(trailer[..8].try_into().ok()?);
    if index_at < header_len || index_at > len - trailer_len {
        return None;
    }
    let mut header = vec![0; header_len as usize];
    file.read_exact_at(&mut header, 0).ok()?;
    let mut index_bytes = Vec::new();
    file.seek(SeekFrom::Start(index_at)).ok()?;
    file.take(len - trailer_len - index_at)
        .read_to_end(&mut index_bytes)
        .ok()?;
    let mut sum = Sha256::new();
    sum.update(&header);
    sum.update(&index_bytes);
    if sum.finalize().as_slice() != &trailer[8..] {
        return None;
    }
    let mut h = Reader(&header);
    if h.take(MAGIC.len())? != MAGIC || h.u64()? != tag.len() as u64 || h.take(tag.len())? != tag {
        return None;
    }
    let mut r = Reader(&index_bytes);
    let count = r.u64()?;
    let mut index = FxHashMap::default();
    for _ in 0..count {
        let dir_len = r.u32()? as usize;
        let dir: Box<[u8]> = r.take(dir_len)?.into();
        let at = BlockRef {
            offset: r.u64()?,
            len: r.u32()?,
            check: r.take(CHECK_LEN)?.try_into().ok()?,
        };
        if at.offset < header_len || at.offset + u64::from(at.len) > index_at {
            return None;
        }
        index.insert(dir, at);
    }
    r.0.is_empty().then_some(index)
}

fn encode_block(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + records.len() * 128);
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for rec in records {
        out.extend_from_slice(&(rec.name.len() as u32).to_le_bytes());
        out.extend_from_slice(&rec.name);
        let [src, dst] = &rec.sides;
        let same = matches!((src, dst), (Some((_, a)), Some((_, b))) if a == b);
        let flags = if src.is_some() { SRC } else { 0 }
            | if dst.is_some() { DST } else { 0 }
            | if same { SAME } else { 0 };
        out.push(flags);
        if let Some((stamp, digest)) = src {
            encode_stamp(&mut out, stamp);
            out.extend_from_slice(digest);
        }
        if let Some((stamp, digest)) = dst {
            encode_stamp(&mut out, stamp);
            if !same {
                out.extend_from_slice(digest);
            }
        }
    }
    out
}

fn decode_block<'a, N: From<&'a [u8]>>(bytes: &'a [u8]) -> Option<Vec<Record<N>>> {
    let mut r = Reader(bytes);
    let count = r.u32()? as usize;
    // Never trust a count to allocate more than the bytes could hold.
    let mut records = Vec::with_capacity(count.min(bytes.len() / (4 + 1 + STAMP_LEN)));
    for _ in 0..count {
        let name_len = r.u32()? as usize;
        let name = N::from(r.take(name_len)?);
        let flags = r.take(1)?[0];
        let src = if flags & SRC != 0 {
            Some((r.stamp()?, r.digest()?))
        } else {
            None
        };
        let dst = if flags & DST != 0 {
            let stamp = r.stamp()?;
            let digest = if flags & SAME != 0 {
                src?.1
            } else {
                r.digest()?
            };
            Some((stamp, digest))
        } else {
            None
        };
        records.push(Record {
            name,
            sides: [src, dst],
        });
    }
    r.0.is_empty().then_some(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Timestamp;

    fn stamp(ino: u64) -> Stamp {
        Stamp {
            size: 3,
            mtime: Timestamp { secs: 5, nanos: 6 },
            ctime: Timestamp { secs: 7, nanos: 8 },
            ino,
            xattrs: ino * 3,
        }
    }

    fn record(name: &[u8], src: Option<u8>, dst: Option<u8>) -> Record {
        Record {
            name: name.into(),
            sides: [
                src.map(|d| (stamp(1), [d; 32])),
                dst.map(|d| (stamp(2), [d; 32])),
            ],
        }
    }

    /// Two temporary roots holding the files `layouts` name (each file's content its root and
    /// path), and their scans.
    fn scanned_roots(layouts: [&[&str]; 2]) -> ([tempfile::TempDir; 2], [Scanned; 2]) {
        let roots = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        for (root, files) in roots.iter().zip(layouts) {
            for rel in files {
                let path = root.path().join(rel);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, format!("{} {rel}", root.path().display())).unwrap();
            }
        }
        // Out of the tick in which they were written: their digests may be remembered.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let filter = crate::scan::Filter::default();
        let trees = roots.each_ref().map(|r| {
            crate::scan::scan(
                &crate::tree::LocalTree::open(r.path()).unwrap(),
                "root",
                &filter,
            )
            .unwrap()
        });
        (roots, trees)
    }

    #[test]
    fn tree_digests_give_each_file_its_digest_where_subtrees_split_a_directory() {
        // `a`'s files come before and after the subtree of `a/m` in path order; BACKUP holds
        // different files, so each side has its own grouping.
        let (roots, trees) = scanned_roots([
            &["a/f", "a/m/g", "a/m/n/h", "a/z", "top"],
            &["a/m/g", "a/y", "b/c", "top"],
        ]);
        let paths = roots.each_ref().map(|r| r.path());
        let locals = paths.map(|p| crate::tree::LocalTree::open(p).unwrap());
        let sides: [&dyn Tree; 2] = [&locals[0], &locals[1]];
        let mut cache = DirCache::in_memory();
        for pass in 0..2 {
            let learner = Learner::new(paths[0], paths[1]);
            let found = tree_digests(&cache, &learner, sides, trees.each_ref(), [&[], &[]]);
            assert!(found.failed.is_empty());
            assert_eq!(found.hashed + found.cache_hits, 9, "pass {pass}");
            assert_eq!(found.hashed, if pass == 0 { 9 } else { 0 }, "pass {pass}");
            for side in 0..2 {
                for ((rel, entry), digest) in trees[side].entries.iter().zip(&found.sides[side]) {
                    let expected = (entry.kind == Kind::File)
                        .then(|| checksum::file_digest(&paths[side].join(rel)).unwrap());
                    assert_eq!(*digest, expected, "pass {pass}: {rel:?} on side {side}");
                }
            }
            let mut blocks = found.blocks;
            learner.record_into(&mut blocks, &cache);
            cache.save(blocks, &[], None).unwrap();
        }
    }

    #[test]
    fn files_marked_unread_are_taken_from_the_cache_or_left_unread() {
        let (roots, trees) = scanned_roots([&["d/kept", "d/marked", "top"], &[]]);
        let paths = roots.each_ref().map(|r| r.path());
        let locals = paths.map(|p| crate::tree::LocalTree::open(p).unwrap());
        let sides: [&dyn Tree; 2] = [&locals[0], &locals[1]];
        let marked: Vec<bool> = trees[0]
            .entries
            .iter()
            .map(|(rel, _)| rel == Path::new("d/marked"))
            .collect();
        let digest_of = |found: &TreeDigests, rel: &str| {
            let i = trees[0]
                .entries
                .iter()
                .position(|(r, _)| r == Path::new(rel))
                .unwrap();
            found.sides[0][i]
        };
        let mut cache = DirCache::in_memory();

        // Not in the cache: left unread, and not counted as read.
        let learner = Learner::new(paths[0], paths[1]);
        let found = tree_digests(&cache, &learner, sides, trees.each_ref(), [&marked, &[]]);
        assert_eq!((found.hashed, found.cache_hits), (2, 0));
        assert_eq!(digest_of(&found, "d/marked"), None);
        let kept = checksum::file_digest(&paths[0].join("d/kept")).unwrap();
        assert_eq!(digest_of(&found, "d/kept"), Some(kept));
        let mut blocks = found.blocks;
        learner.record_into(&mut blocks, &cache);
        cache.save(blocks, &[], None).unwrap();

        // Read once, unmarked: cached. Marked again, it comes from the cache.
        let learner = Learner::new(paths[0], paths[1]);
        let found = tree_digests(&cache, &learner, sides, trees.each_ref(), [&[], &[]]);
        assert_eq!((found.hashed, found.cache_hits), (1, 2));
        let mut blocks = found.blocks;
        learner.record_into(&mut blocks, &cache);
        cache.save(blocks, &[], None).unwrap();
        let learner = Learner::new(paths[0], paths[1]);
        let found = tree_digests(&cache, &learner, sides, trees.each_ref(), [&marked, &[]]);
        assert_eq!((found.hashed, found.cache_hits), (0, 3));
        let digest = checksum::file_digest(&paths[0].join("d/marked")).unwrap();
        assert_eq!(digest_of(&found, "d/marked"), Some(digest));
    }

    #[test]
    fn seek_record_finds_names_asked_in_any_order() {
        let block: Vec<Record> = [&b"b"[..], b"d", b"f", b"h"]
            .iter()
            .map(|n| record(n, Some(1), None))
            .collect();
        let found = |asked: &[&[u8]]| -> Vec<Option<Vec<u8>>> {
            let mut cursor = 0;
            asked
                .iter()
                .map(|n| seek_record(&block, &mut cursor, n).map(|r| r.name.to_vec()))
                .collect()
        };
        let name = |n: &[u8]| Some(n.to_vec());
        // In order, with names the block lacks before, between and after its own.
        assert_eq!(
            found(&[b"a", b"b", b"c", b"d", b"h", b"i"]),
            [None, name(b"b"), None, name(b"d"), name(b"h"), None]
        );
        // Backwards, and repeated.
        assert_eq!(
            found(&[b"h", b"f", b"f", b"b", b"a", b"d", b"c"]),
            [
                name(b"h"),
                name(b"f"),
                name(b"f"),
                name(b"b"),
                None,
                name(b"d"),
                None
            ]
        );
        let empty: Vec<Record> = Vec::new();
        assert!(seek_record(&empty, &mut 0, b"a").is_none());
    }

    #[test]
    fn learnt_digests_join_their_blocks_in_name_order_whatever_order_they_came_in() {
        let roots = tempfile::tempdir().unwrap();
        let mut cache = DirCache::in_memory();
        // A block the pass keeps as stored, which the learnt records must be merged into.
        let stored = vec![
            record(b"b", Some(1), Some(1)),
            record(b"m", Some(1), None),
            record(b"zz", None, Some(2)),
        ];
        cache
            .save(
                vec![(b"kept".as_slice().into(), BlockOut::New(stored))],
                &[],
                None,
            )
            .unwrap();
        let learner = Learner::new(roots.path(), roots.path());
        let file = |ino: u64| Entry {
            kind: Kind::File,
            mode: 0o644,
            size: 3,
            mtime: crate::model::Timestamp { secs: 5, nanos: 6 },
            ctime: crate::model::Timestamp { secs: 7, nanos: 8 },
            ino,
            dev: 1,
            uid: 0,
            gid: 0,
            xattrs: 0,
            nlink: 1,
        };
        // Learnt in an order that is neither by directory nor by name; `kept/m` twice, one
        // side each time, and `new/c` as a copy (both sides at once).
        let learnt: [(&str, Option<u64>, Option<u64>, u8); 8] = [
            ("kept/z", Some(1), None, 9),
            ("new/c", Some(1), Some(2), 3),
            ("kept/a", None, Some(2), 4),
            ("top", Some(1), None, 5),
            ("kept/m", None, Some(2), 6),
            ("new/a", Some(1), None, 7),
            ("kept/m", Some(1), None, 6),
            ("kept/c", Some(1), Some(2), 8),
        ];
        for (rel, src, dst, digest) in learnt {
            let rel = Path::new(rel);
            match (src, dst) {
                (Some(s), Some(d)) => learner.learn_copy(
                    Side::Backup,
                    rel,
                    (&file(s), SystemTime::now()),
                    &file(d),
                    [digest; 32],
                ),
                (Some(s), None) => learner.learn(Side::Source, rel, &file(s), [digest; 32], None),
                (None, Some(d)) => learner.learn(Side::Backup, rel, &file(d), [digest; 32], None),
                (None, None) => unreachable!(),
            }
        }
        // One block the pass made new already (it must keep its own records too).
        let mut blocks = vec![
            (
                b"new".as_slice().into(),
                BlockOut::New(vec![record(b"b", None, Some(1))]),
            ),
            (b"kept".as_slice().into(), BlockOut::Keep),
        ];
        learner.record_into(&mut blocks, &cache);
        let got: Vec<(&[u8], &Vec<Record>)> = blocks
            .iter()
            .map(|(dir, out)| match out {
                BlockOut::New(records) => (&**dir, records),
                _ => panic!("{dir:?} kept: its learnt records were dropped"),
            })
            .collect();
        let at = |d: u8, ino: u64| Some((Stamp::of(&file(ino)), [d; 32]));
        let rec = |name: &[u8], src, dst| Record {
            name: name.into(),
            sides: [src, dst],
        };
        assert_eq!(
            got,
            [
                (
                    &b"new"[..],
                    &vec![
                        rec(b"a", at(7, 1), None),
                        record(b"b", None, Some(1)),
                        rec(b"c", at(3, 1), at(3, 2)),
                    ]
                ),
                (
                    &b"kept"[..],
                    &vec![
                        rec(b"a", None, at(4, 2)),
                        record(b"b", Some(1), Some(1)),
                        rec(b"c", at(8, 1), at(8, 2)),
                        rec(b"m", at(6, 1), at(6, 2)),
                        rec(b"z", at(9, 1), None),
                        record(b"zz", None, Some(2)),
                    ]
                ),
                (&b""[..], &vec![rec(b"top", at(5, 1), None)]),
            ]
        );
    }

    #[test]
    fn blocks_round_trip_and_unchanged_passes_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c");
        let mut cache = DirCache::open(file.clone(), b"a\0b".to_vec());
        let a = vec![
            record(b"same", Some(1), Some(1)),
            record(b"\xff", Some(1), Some(2)),
        ];
        let b = vec![record(b"dst-only", None, Some(3))];
        cache
            .save(
                vec![
                    (b"".as_slice().into(), BlockOut::New(a.clone())),
                    (b"x/y".as_slice().into(), BlockOut::New(b.clone())),
                ],
                &[],
                None,
            )
            .unwrap();
        let again = DirCache::open(file.clone(), b"a\0b".to_vec());
        assert_eq!(again.block(b""), a);
        assert_eq!(again.block(b"x/y"), b);
        assert!(again.block(b"x").is_empty());

        // Keeping every block leaves the file as it is.
        let mut again = again;
        let before = fs::metadata(&file).unwrap().ino();
        again
            .save(
                vec![
                    (b"".as_slice().into(), BlockOut::Keep),
                    (b"x/y".as_slice().into(), BlockOut::Keep),
                ],
                &[],
                None,
            )
            .unwrap();
        assert_eq!(fs::metadata(&file).unwrap().ino(), before);

        // A directory no longer seen is dropped; kept blocks are carried over.
        again
            .save(vec![(b"x/y".as_slice().into(), BlockOut::Keep)], &[], None)
            .unwrap();
        let last = DirCache::open(file.clone(), b"a\0b".to_vec());
        assert!(last.block(b"").is_empty());
        assert_eq!(last.block(b"x/y"), b);

        assert!(
            DirCache::open(file, b"a\0c".to_vec())
                .block(b"x/y")
                .is_empty()
        );
    }

    use std::os::unix::fs::MetadataExt;

    #[test]
    fn damage_drops_the_block_or_the_whole_cache_never_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c");
        let mut cache = DirCache::open(file.clone(), b"t".to_vec());
        let a = vec![record(b"f", Some(1), Some(1))];
        cache
            .save(
                vec![(b"d".as_slice().into(), BlockOut::New(a.clone()))],
                &[],
                None,
            )
            .unwrap();
        let bytes = fs::read(&file).unwrap();
        // A flipped byte inside the block's digest: the block's check catches it.
        let header = MAGIC.len() + 8 + 1;
        let mut flipped = bytes.clone();
        flipped[header + 20] ^= 1;
        fs::write(&file, &flipped).unwrap();
        assert!(
            DirCache::open(file.clone(), b"t".to_vec())
                .block(b"d")
                .is_empty()
        );
        for cut in [0, 5, bytes.len() / 2, bytes.len() - 1] {
            fs::write(&file, &bytes[..cut]).unwrap();
            let loaded = DirCache::open(file.clone(), b"t".to_vec());
            assert!(loaded.block(b"d").is_empty(), "cut at {cut}");
            assert!(loaded.damaged || cut == 0);
        }
        fs::write(&file, &bytes).unwrap();
        assert_eq!(DirCache::open(file, b"t".to_vec()).block(b"d"), a);
    }

    #[test]
    fn blocks_under_an_unlistable_directory_outlive_a_pass_that_could_not_see_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c");
        let mut cache = DirCache::open(file.clone(), b"t".to_vec());
        let a = vec![record(b"f", Some(1), Some(1))];
        let new = |d: &[u8]| (d.into(), BlockOut::New(a.clone()));
        cache
            .save(
                vec![new(b"u"), new(b"u/v"), new(b"uv"), new(b"x")],
                &[],
                None,
            )
            .unwrap();
        // The next pass sees only `x`, and could not list `u`.
        cache
            .save(
                vec![(b"x".as_slice().into(), BlockOut::Keep)],
                &[Path::new("u")],
                None,
            )
            .unwrap();
        let after = DirCache::open(file, b"t".to_vec());
        assert_eq!(after.block(b"u"), a);
        assert_eq!(after.block(b"u/v"), a);
        assert_eq!(after.block(b"x"), a);
        assert!(
            after.block(b"uv").is_empty(),
            "a sibling sharing the prefix is dropped"
        );
    }

    #[test]
    fn in_memory_cache_keeps_blocks_between_passes() {
        let mut cache = DirCache::in_memory();
        let a = vec![record(b"f", Some(1), None)];
        cache
            .save(
                vec![(b"d".as_slice().into(), BlockOut::New(a.clone()))],
                &[],
                None,
            )
            .unwrap();
        assert_eq!(cache.block(b"d"), a);
        cache
            .save(vec![(b"d".as_slice().into(), BlockOut::Keep)], &[], None)
            .unwrap();
        assert_eq!(cache.block(b"d"), a);
    }
}
