//! The hash cache (SPEC §6): a file whose size, modification time, change time and inode are
//! unchanged since it was hashed is not read again.
//!
//! It lives in the user's cache directory (`$XDG_CACHE_HOME`, else `~/.cache`), one file per
//! pair of roots, never inside either root. Being a cache, a damaged or foreign file is
//! dropped with a warning and rebuilt; it never decides anything on its own.

use rustc_hash::{FxHashMap, FxHashSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use checksum::Digest;
use sha2::{Digest as _, Sha256};

use crate::dircache::DirCache;
use crate::scan::{Entry, Timestamp};

const MAGIC: &[u8; 8] = b"DSYNCHC2";

/// Which root a cached hash belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The SOURCE root.
    Source = 0,
    /// The BACKUP root.
    Backup = 1,
}

/// What identifies one state of a file's content: it changes whenever the content may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: Timestamp,
    /// Change time.
    pub ctime: Timestamp,
    /// Inode number.
    pub ino: u64,
}

impl Stamp {
    /// The stamp of a scanned file.
    pub fn of(entry: &Entry) -> Stamp {
        Stamp {
            size: entry.size,
            mtime: entry.mtime,
            ctime: entry.ctime,
            ino: entry.ino,
        }
    }
}

/// Cached SHA-256 digests of the files of two roots.
#[derive(Debug, Default)]
pub struct HashCache {
    location: Option<PathBuf>,
    tag: Vec<u8>,
    /// Loaded on first use: a mirror pass never needs it (it uses [`HashCache::per_directory`]).
    sides: OnceLock<Sides>,
    /// Changed since loaded or saved: a pass that learnt nothing writes nothing.
    dirty: bool,
    dirs: Option<DirCache>,
}

/// How close to "now" a change time must be for a hash to be unsafe to cache, on a file
/// system whose timestamps advance in coarse ticks. Two writes in one tick leave size, mtime
/// and ctime equal, so a file changed within a tick of being hashed could change again unseen
/// (git's "racy clean" problem). Ticks are jiffies (1–10 ms) where timestamps have
/// nanoseconds, whole seconds where they do not.
fn coarse_window(entry: &Entry) -> Duration {
    if entry.mtime.nanos == 0 && entry.ctime.nanos == 0 {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(20)
    }
}

/// How a root's file system stamps changes, which decides when a fresh hash may be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timestamps {
    /// Multigrain timestamps (Linux 6.13+ on ext4, XFS, Btrfs, tmpfs): once a file's ctime has
    /// been read (our scan does), its next change gets a finer, strictly later ctime, so a
    /// hash taken after the scan can always be cached.
    MultiGrain,
    /// Coarse ticks: a file changed within a tick of being hashed is hashed again next time.
    Coarse,
}

impl Timestamps {
    /// Finds out how the file system holding `root` stamps changes.
    pub fn of(root: &Path) -> Timestamps {
        // Magic numbers from statfs(2).
        const EXT4: i64 = 0xEF53;
        const XFS: i64 = 0x5846_5342;
        const BTRFS: i64 = 0x9123_683E;
        const TMPFS: i64 = 0x0102_1994;
        let multigrain_fs =
            rustix::fs::statfs(root).is_ok_and(|s| [EXT4, XFS, BTRFS, TMPFS].contains(&s.f_type));
        if multigrain_fs && kernel_at_least(6, 13) {
            Timestamps::MultiGrain
        } else {
            Timestamps::Coarse
        }
    }
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// True if `entry`, hashed from `hashed_at` on, may have changed since without its stamp
/// showing it.
pub fn is_racy(entry: &Entry, hashed_at: SystemTime, stamps: Timestamps) -> bool {
    if stamps == Timestamps::MultiGrain {
        return false;
    }
    let ctime =
        SystemTime::UNIX_EPOCH + Duration::new(entry.ctime.secs.max(0) as u64, entry.ctime.nanos);
    match hashed_at.duration_since(ctime) {
        Ok(age) => age < coarse_window(entry),
        Err(_) => true,
    }
}

impl HashCache {
    /// An empty cache kept in memory only.
    pub fn in_memory() -> HashCache {
        HashCache::default()
    }

    /// Loads the cache of the pair `tag` from `location`. A missing file gives an empty cache;
    /// an unreadable, damaged or foreign one too, with a warning.
    pub fn load(location: PathBuf, tag: Vec<u8>) -> HashCache {
        HashCache {
            location: Some(location),
            tag,
            sides: OnceLock::new(),
            dirty: false,
            dirs: None,
        }
    }

    fn sides(&self) -> &Sides {
        self.sides.get_or_init(|| {
            let Some(location) = self.location.as_deref() else {
                return Sides::default();
            };
            match fs::read(location) {
                Ok(bytes) => decode(&bytes, &self.tag).unwrap_or_else(|| {
                    log::warn!(
                        "hash cache {} is damaged or belongs to other roots; rebuilding it",
                        location.display()
                    );
                    Sides::default()
                }),
                Err(err) if err.kind() == io::ErrorKind::NotFound => Sides::default(),
                Err(err) => {
                    log::warn!(
                        "cannot read hash cache {}: {err}; rebuilding it",
                        location.display()
                    );
                    Sides::default()
                }
            }
        })
    }

    fn sides_mut(&mut self) -> &mut Sides {
        self.sides();
        self.sides.get_mut().expect("initialised just above")
    }

    /// The per-directory cache of a mirror pass, beside this one (`.dircache`), opened on
    /// first use.
    pub fn per_directory(&mut self) -> &mut DirCache {
        let (location, tag) = (&self.location, &self.tag);
        self.dirs.get_or_insert_with(|| match location {
            Some(path) => {
                // A per-path cache of this pair, left by an earlier version, is never read
                // again by the passes that use this one: it would only take room.
                let _ = fs::remove_file(path);
                DirCache::open(path.with_extension("dircache"), tag.clone())
            }
            None => DirCache::in_memory(),
        })
    }

    /// The digest recorded for `rel` on `side`, if the file is provably unchanged since.
    pub fn lookup(&self, side: Side, rel: &Path, entry: &Entry) -> Option<Digest> {
        match self.sides()[side as usize].get(rel.as_os_str().as_bytes()) {
            Some((stamp, digest)) if *stamp == Stamp::of(entry) => Some(*digest),
            _ => None,
        }
    }

    /// Records the digest of `rel` on `side` as it was when `entry` was read.
    pub fn insert(&mut self, side: Side, rel: PathBuf, entry: &Entry, digest: Digest) {
        self.insert_stamp(side, rel, Stamp::of(entry), digest);
    }

    /// [`HashCache::insert`] for a file known by its stamp.
    pub fn insert_stamp(&mut self, side: Side, rel: PathBuf, stamp: Stamp, digest: Digest) {
        let value = (stamp, digest);
        let key = rel.into_os_string().into_vec().into_boxed_slice();
        if self.sides_mut()[side as usize].insert(key, value) != Some(value) {
            self.dirty = true;
        }
    }

    /// Forgets `rel` on `side`.
    pub fn remove(&mut self, side: Side, rel: &Path) {
        if self.sides_mut()[side as usize]
            .remove(rel.as_os_str().as_bytes())
            .is_some()
        {
            self.dirty = true;
        }
    }

    /// Forgets every path of `side` that is not in `live` (the paths a pass still saw).
    pub fn retain_live<'a>(&mut self, side: Side, live: impl IntoIterator<Item = &'a Path>) {
        let live: FxHashSet<&[u8]> = live.into_iter().map(|p| p.as_os_str().as_bytes()).collect();
        let map = &mut self.sides_mut()[side as usize];
        let before = map.len();
        map.retain(|rel, _| live.contains(&**rel));
        if map.len() != before {
            self.dirty = true;
        }
    }

    /// Writes the cache atomically (temporary file, flush, rename), if it changed. An
    /// in-memory cache does nothing.
    ///
    /// Fails if the cache directory cannot be created or written.
    pub fn save(&mut self) -> io::Result<()> {
        let Some(path) = self.location.as_deref() else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".hashcache-")
            .tempfile_in(dir)?;
        let mut bytes = Vec::new();
        encode(&mut bytes, &self.tag, self.sides());
        // A trailing digest of the whole content: whatever a crash leaves of this file is
        // recognised and dropped, never trusted, so it needs no fsync of its own.
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        bytes.extend_from_slice(&digest);
        tmp.write_all(&bytes)?;
        tmp.persist(path).map_err(|e| e.error)?;
        self.dirty = false;
        Ok(())
    }
}

/// The cache file for the pair (SOURCE, BACKUP), or `None` when there is no cache directory
/// or it lies inside one of the roots (it would then be mirrored or deleted).
pub fn default_location(source: &Path, backup: &Path) -> Option<(PathBuf, Vec<u8>)> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let base = std::path::absolute(base).ok()?;
    let dir = base.join("oneway");
    let resolved = resolve_existing_prefix(&dir);
    if resolved.starts_with(source) || resolved.starts_with(backup) {
        return None;
    }
    let tag = pair_tag(source, backup);
    let name = format!("{}.cache", &hex::encode(Sha256::digest(&tag))[..32]);
    Some((dir.join(name), tag))
}

fn pair_tag(source: &Path, backup: &Path) -> Vec<u8> {
    let mut tag = source.as_os_str().as_bytes().to_vec();
    tag.push(0);
    tag.extend_from_slice(backup.as_os_str().as_bytes());
    tag
}

/// Canonicalizes the longest existing ancestor of `path` and appends the rest, so a cache
/// directory that does not exist yet is still placed correctly relative to the roots.
fn resolve_existing_prefix(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut cur = path;
    loop {
        if let Ok(real) = fs::canonicalize(cur) {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                cur = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Per side, relative path (raw bytes: hashing them is much cheaper than hashing a `Path`
/// component by component) → stamp and digest.
type Sides = [FxHashMap<Box<[u8]>, (Stamp, Digest)>; 2];

fn encode(out: &mut Vec<u8>, tag: &[u8], sides: &Sides) {
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(tag.len() as u64).to_le_bytes());
    out.extend_from_slice(tag);
    for side in sides {
        out.extend_from_slice(&(side.len() as u64).to_le_bytes());
        for (rel, (stamp, digest)) in side {
            out.extend_from_slice(&(rel.len() as u64).to_le_bytes());
            out.extend_from_slice(rel);
            encode_stamp(out, stamp);
            out.extend_from_slice(digest);
        }
    }
}

/// Appends `stamp` in the layout both cache files use (40 bytes, little-endian).
pub(crate) fn encode_stamp(out: &mut Vec<u8>, stamp: &Stamp) {
    out.extend_from_slice(&stamp.size.to_le_bytes());
    out.extend_from_slice(&stamp.mtime.secs.to_le_bytes());
    out.extend_from_slice(&stamp.mtime.nanos.to_le_bytes());
    out.extend_from_slice(&stamp.ctime.secs.to_le_bytes());
    out.extend_from_slice(&stamp.ctime.nanos.to_le_bytes());
    out.extend_from_slice(&stamp.ino.to_le_bytes());
}

/// Reads the fields of a cache file from the front of a byte slice; `None` once the bytes
/// run out (damage), never a panic.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    /// A stamp as [`encode_stamp`] writes it.
    pub(crate) fn stamp(&mut self) -> Option<Stamp> {
        Some(Stamp {
            size: self.u64()?,
            mtime: Timestamp {
                secs: self.i64()?,
                nanos: self.u32()?,
            },
            ctime: Timestamp {
                secs: self.i64()?,
                nanos: self.u32()?,
            },
            ino: self.u64()?,
        })
    }
    pub(crate) fn digest(&mut self) -> Option<Digest> {
        self.take(32)?.try_into().ok()
    }
    fn len(&mut self) -> Option<usize> {
        let n = usize::try_from(self.u64()?).ok()?;
        // A length beyond what is left is damage, not a reason to allocate.
        (n <= self.0.len()).then_some(n)
    }
}

fn decode(bytes: &[u8], tag: &[u8]) -> Option<Sides> {
    let (bytes, digest) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
    if Sha256::digest(bytes).as_slice() != digest {
        return None;
    }
    let mut r = Reader(bytes);
    if r.take(MAGIC.len())? != MAGIC {
        return None;
    }
    let tag_len = r.len()?;
    if r.take(tag_len)? != tag {
        return None;
    }
    let mut sides: Sides = Default::default();
    for side in &mut sides {
        let count = r.u64()?;
        // Never trust a count to allocate more than the bytes left could hold.
        side.reserve((count as usize).min(r.0.len() / 60));
        for _ in 0..count {
            let len = r.len()?;
            let rel: Box<[u8]> = r.take(len)?.into();
            let stamp = r.stamp()?;
            let digest = r.digest()?;
            side.insert(rel, (stamp, digest));
        }
    }
    r.0.is_empty().then_some(sides)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::Kind;

    fn entry(size: u64, ino: u64) -> Entry {
        Entry {
            kind: Kind::File,
            mode: 0o644,
            size,
            mtime: Timestamp { secs: 5, nanos: 6 },
            ctime: Timestamp { secs: 7, nanos: 8 },
            ino,
        }
    }

    #[test]
    fn saved_cache_round_trips_and_rejects_other_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c");
        let mut cache = HashCache::load(file.clone(), b"a\0b".to_vec());
        let rel = PathBuf::from(std::ffi::OsString::from_vec(b"x/\xff".to_vec()));
        cache.insert(Side::Backup, rel.clone(), &entry(3, 9), [7; 32]);
        cache.save().unwrap();

        let again = HashCache::load(file.clone(), b"a\0b".to_vec());
        assert_eq!(
            again.lookup(Side::Backup, &rel, &entry(3, 9)),
            Some([7; 32])
        );
        assert_eq!(again.lookup(Side::Source, &rel, &entry(3, 9)), None);
        assert_eq!(again.lookup(Side::Backup, &rel, &entry(3, 10)), None);

        let other = HashCache::load(file, b"a\0c".to_vec());
        assert_eq!(other.lookup(Side::Backup, &rel, &entry(3, 9)), None);
    }

    #[test]
    fn truncated_cache_is_dropped_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c");
        let mut cache = HashCache::load(file.clone(), b"t".to_vec());
        cache.insert(Side::Source, "f".into(), &entry(1, 1), [1; 32]);
        cache.save().unwrap();
        let bytes = fs::read(&file).unwrap();
        for cut in [0, 5, bytes.len() / 2, bytes.len() - 1] {
            fs::write(&file, &bytes[..cut]).unwrap();
            let loaded = HashCache::load(file.clone(), b"t".to_vec());
            assert_eq!(
                loaded.lookup(Side::Source, Path::new("f"), &entry(1, 1)),
                None
            );
        }
        // A flipped byte inside a digest keeps the structure valid: the trailer catches it.
        let mut flipped = bytes.clone();
        flipped[bytes.len() - 40] ^= 1;
        fs::write(&file, &flipped).unwrap();
        let loaded = HashCache::load(file.clone(), b"t".to_vec());
        assert_eq!(
            loaded.lookup(Side::Source, Path::new("f"), &entry(1, 1)),
            None
        );
    }

    #[test]
    fn the_per_directory_cache_drops_an_older_per_path_file_of_the_pair() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pair.cache");
        let mut old = HashCache::load(file.clone(), b"t".to_vec());
        old.insert(Side::Source, "f".into(), &entry(1, 1), [1; 32]);
        old.save().unwrap();
        assert!(file.exists());

        let mut cache = HashCache::load(file.clone(), b"t".to_vec());
        cache.per_directory();
        assert!(!file.exists());
        // Nothing was learnt per path: nothing is written back.
        cache.save().unwrap();
        assert!(!file.exists());
    }

    #[test]
    fn recent_change_is_racy_and_old_one_is_not() {
        let mut e = entry(1, 1);
        let now = SystemTime::now();
        let since = now.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        e.ctime = Timestamp {
            secs: since.as_secs() as i64,
            nanos: since.subsec_nanos().max(1),
        };
        assert!(is_racy(&e, now, Timestamps::Coarse));
        assert!(!is_racy(&e, now, Timestamps::MultiGrain));
        e.ctime.secs -= 10;
        assert!(!is_racy(&e, now, Timestamps::Coarse));
    }
}
