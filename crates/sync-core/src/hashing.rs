//! Digests of files during a versioned pass, by path: from the per-path hash cache while a file
//! is provably unchanged, otherwise read, and remembered for the next pass. (Mirror and two-way
//! passes use the per-directory cache of [`crate::dircache`] instead.) Also how a batch of
//! files is read, for every kind of pass: [`read_digests`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use checksum::Digest;
use rayon::prelude::*;

use crate::cache::{HashCache, Side};
use crate::dircache::Learner;
use crate::scan::Entry;

/// Reads and hashes the files at `paths`: for each, its digest and the time its reading began.
///
/// With enough files to give every thread a pair, they are hashed two at a time on one core
/// (`checksum::file_digest_pair`, almost twice the throughput of one stream); with fewer, one
/// per thread, so that two large files still use two cores.
pub fn read_digests(paths: &[PathBuf]) -> Vec<(io::Result<Digest>, SystemTime)> {
    let single = |path: &PathBuf| {
        let started = SystemTime::now();
        (checksum::file_digest(path), started)
    };
    match paths.len() {
        0 => Vec::new(),
        1 => paths.iter().map(single).collect(),
        n if n < 2 * rayon::current_num_threads() => paths.par_iter().map(single).collect(),
        _ => paths
            .par_chunks(2)
            .flat_map_iter(|chunk| {
                let started = SystemTime::now();
                match chunk {
                    [a, b] => {
                        let [x, y] = checksum::file_digest_pair(a, b);
                        vec![(x, started), (y, started)]
                    }
                    _ => chunk.iter().map(single).collect(),
                }
            })
            .collect(),
    }
}

/// Hands out digests for one pass; safe to share between worker threads.
pub struct Digests<'a> {
    cache: &'a HashCache,
    learner: Learner,
    ignore_cache: bool,
    hashed: AtomicU64,
    cache_hits: AtomicU64,
}

impl<'a> Digests<'a> {
    /// Reads from `cache` unless `ignore_cache` (`--checksum`). `source` and `backup` are
    /// the roots, whose file systems decide which fresh hashes may be cached.
    pub fn new(
        cache: &'a HashCache,
        ignore_cache: bool,
        source: &Path,
        backup: &Path,
    ) -> Digests<'a> {
        Digests {
            cache,
            learner: Learner::new(source, backup),
            ignore_cache,
            hashed: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
        }
    }

    /// The digests of `files` (paths under `root` on `side`, as the scan saw them), in order:
    /// from the cache while a file is provably unchanged, otherwise read (all of them in one
    /// batch, see [`read_digests`]) and remembered. A file that cannot be read gets its error.
    pub fn digest_all(
        &self,
        side: Side,
        root: &Path,
        files: &[(&Path, &Entry)],
    ) -> Vec<io::Result<Digest>> {
        let mut results: Vec<Option<io::Result<Digest>>> = files
            .iter()
            .map(|&(rel, entry)| self.cached(side, rel, entry).map(Ok))
            .collect();
        let misses: Vec<usize> = (0..files.len()).filter(|&i| results[i].is_none()).collect();
        self.cache_hits
            .fetch_add((files.len() - misses.len()) as u64, Ordering::Relaxed);
        let paths: Vec<PathBuf> = misses.iter().map(|&i| root.join(files[i].0)).collect();
        for (i, (result, started)) in misses.into_iter().zip(read_digests(&paths)) {
            if let Ok(digest) = &result {
                self.hashed.fetch_add(1, Ordering::Relaxed);
                let (rel, entry) = files[i];
                self.learner.learn(side, rel, entry, *digest, Some(started));
            }
            results[i] = Some(result);
        }
        results
            .into_iter()
            .map(|r| r.expect("every file has a result"))
            .collect()
    }

    /// The cached digest of `rel` on `side`, if its stamp is unchanged; reads nothing and
    /// counts nothing.
    pub fn cached(&self, side: Side, rel: &Path, entry: &Entry) -> Option<Digest> {
        if self.ignore_cache {
            return None;
        }
        self.cache.lookup(side, rel, entry)
    }

    /// What decides which digests may be trusted and remembered, and collects them.
    pub fn learner(&self) -> &Learner {
        &self.learner
    }

    /// Files read so far.
    pub fn hashed(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }

    /// Digests taken from the cache so far.
    pub fn cache_hits(&self) -> u64 {
        self.cache_hits.load(Ordering::Relaxed)
    }

    /// Ends the pass, giving back what was learnt (no longer borrowing the cache); see
    /// [`Learner::record_into_table`].
    pub fn finish(self) -> Learner {
        self.learner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the batch size (one, fewer than a pair per thread, or many, odd or even), each
    /// result is that file's own digest or error, in order, and its start time precedes it.
    #[test]
    fn read_digests_gives_each_file_its_own_result_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for i in 0..11usize {
            let path = dir.path().join(format!("f{i}"));
            if i % 4 != 3 {
                // Sizes from empty to several read buffers, so lanes end at different times.
                let bytes: Vec<u8> = (0..i * i * 40_000).map(|b| (b * 7 + i) as u8).collect();
                std::fs::write(&path, bytes).unwrap();
            }
            paths.push(path);
        }
        // One thread: every batch of two or more is hashed in pairs, whatever the machine.
        let one_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        for (n, pool) in [0, 1, 2, 3, 10, 11]
            .into_iter()
            .flat_map(|n| [(n, None), (n, Some(&one_thread))])
        {
            let before = SystemTime::now();
            let results = match pool {
                Some(pool) => pool.install(|| read_digests(&paths[..n])),
                None => read_digests(&paths[..n]),
            };
            assert_eq!(results.len(), n);
            for (path, (result, started)) in paths.iter().zip(results) {
                assert!(started >= before);
                match checksum::file_digest(path) {
                    Ok(want) => assert_eq!(result.unwrap(), want, "{}", path.display()),
                    Err(e) => assert_eq!(result.unwrap_err().kind(), e.kind()),
                }
            }
        }
    }
}
