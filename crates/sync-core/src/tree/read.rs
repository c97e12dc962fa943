//! How a batch of files is read and hashed, for every kind of pass: [`read_digests`].

use std::fs::File;
use std::io;
use std::path::Path;
use std::time::SystemTime;

use checksum::Digest;
use rayon::prelude::*;

/// Reads and hashes the files `rels`, each opened with `open`: for each, its digest and the
/// time its reading began.
///
/// With enough files to give every thread a pair, they are hashed two at a time on one core
/// (`checksum::file_digest_pair`, almost twice the throughput of one stream); with fewer, one
/// per thread, so that two large files still use two cores.
pub fn read_digests(
    paths: &[&Path],
    open: &(dyn Fn(&Path) -> io::Result<File> + Sync),
) -> Vec<(io::Result<Digest>, SystemTime)> {
    let single = |path: &&Path| {
        let started = SystemTime::now();
        (open(path).and_then(checksum::digest_open), started)
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
                        let [x, y] = checksum::digest_open_pair([open(a), open(b)]);
                        vec![(x, started), (y, started)]
                    }
                    _ => chunk.iter().map(single).collect(),
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

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
            let rels: Vec<&Path> = paths[..n].iter().map(PathBuf::as_path).collect();
            let open = |path: &Path| File::open(path);
            let results = match pool {
                Some(pool) => pool.install(|| read_digests(&rels, &open)),
                None => read_digests(&rels, &open),
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
