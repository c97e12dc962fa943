//! SHA-256 of two files at once, on one core.
//!
//! With the CPU's SHA instructions a single SHA-256 stream is bound by the latency of its
//! round instruction: each pair of rounds needs the previous pair's result. Measured on the
//! benchmark machine (AMD EPYC, Zen 4), one chain of `sha256rnds2` takes 1.11 ns per
//! instruction and two independent chains interleaved take 0.55 ns each, so a core hashes two
//! streams in about the time it hashes one. [`file_digest_pair`] reads two files in step and
//! feeds them to two [`Hasher`]s together ([`update_pair`]), which run their compressions
//! interleaved (`compress.rs`); without the SHA extensions it hashes them one after the other.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use crate::Digest;
use crate::compress::shani_available;
use crate::stream::{Hasher, update_pair};

/// Bytes read per file and step: the two buffers together fill a core's L2 cache (1 MiB on the
/// benchmark machine), so the hash reads what the kernel just copied from cache.
const PAIR_BUF: usize = 512 * 1024;

/// One file being hashed, and the bytes of it last read.
struct Stream {
    file: File,
    hasher: Hasher,
    buf: Vec<u8>,
    filled: usize,
    at_end: bool,
}

impl Stream {
    fn of(file: File) -> io::Result<Stream> {
        // A small file gets a buffer its size (plus the byte that shows the end).
        let size = file.metadata()?.len();
        let capacity =
            usize::try_from(size.saturating_add(1)).map_or(PAIR_BUF, |n| n.clamp(64, PAIR_BUF));
        Ok(Stream {
            file,
            hasher: Hasher::new(),
            buf: vec![0; capacity],
            filled: 0,
            at_end: false,
        })
    }

    /// Reads the next piece: until the buffer is full or the file ends.
    fn fill(&mut self) -> io::Result<()> {
        self.filled = 0;
        while self.filled < self.buf.len() {
            match self.file.read(&mut self.buf[self.filled..]) {
                Ok(0) => {
                    self.at_end = true;
                    break;
                }
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// SHA-256 digests of the files at `a` and `b`, computed together (see the module doc); each
/// result is what [`crate::file_digest`] would return for that path.
pub fn file_digest_pair(a: &Path, b: &Path) -> [io::Result<Digest>; 2] {
    digest_open_pair([a, b].map(|path| crate::open_quietly(path, 0)))
}

/// SHA-256 digests of two files already open (or the errors of opening them), computed
/// together as [`file_digest_pair`] does; each result is what [`crate::digest_open`] would
/// return for that file.
pub fn digest_open_pair(files: [io::Result<File>; 2]) -> [io::Result<Digest>; 2] {
    if !shani_available() {
        return files.map(|file| file.and_then(crate::digest_open));
    }
    let mut results: [Option<io::Result<Digest>>; 2] = [None, None];
    // A file that could not be opened has its result at once and no stream.
    let mut streams: [Option<Stream>; 2] = [None, None];
    for ((slot, stream), file) in results.iter_mut().zip(&mut streams).zip(files) {
        match file.and_then(Stream::of) {
            Ok(s) => *stream = Some(s),
            Err(e) => *slot = Some(Err(e)),
        }
    }
    while streams.iter().any(Option::is_some) {
        for (slot, stream) in results.iter_mut().zip(&mut streams) {
            if let Some(s) = stream
                && let Err(e) = s.fill()
            {
                *slot = Some(Err(e));
                *stream = None;
            }
        }
        match &mut streams {
            [Some(x), Some(y)] => update_pair(
                [&mut x.hasher, &mut y.hasher],
                [&x.buf[..x.filled], &y.buf[..y.filled]],
            ),
            [Some(one), None] | [None, Some(one)] => one.hasher.update(&one.buf[..one.filled]),
            [None, None] => {}
        }
        for (slot, stream) in results.iter_mut().zip(&mut streams) {
            if stream.as_ref().is_some_and(|s| s.at_end)
                && let Some(s) = stream.take()
            {
                *slot = Some(Ok(s.hasher.finish()));
            }
        }
    }
    results.map(|r| r.expect("every stream ends with a result"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_bytes as bytes;
    use sha2::{Digest as _, Sha256};

    fn sha(bytes: &[u8]) -> Digest {
        Sha256::digest(bytes).into()
    }

    #[test]
    fn pairs_of_every_length_around_block_and_buffer_edges_match_sha2() {
        let dir = tempfile::tempdir().unwrap();
        let lengths = [
            0,
            1,
            55,
            56,
            63,
            64,
            65,
            119,
            120,
            127,
            128,
            1000,
            PAIR_BUF - 1,
            PAIR_BUF,
            PAIR_BUF + 1,
            2 * PAIR_BUF + 77,
        ];
        for (i, &la) in lengths.iter().enumerate() {
            for (j, &lb) in lengths.iter().enumerate() {
                let (da, db) = (bytes(la, i as u64), bytes(lb, 100 + j as u64));
                let (pa, pb) = (dir.path().join("a"), dir.path().join("b"));
                std::fs::write(&pa, &da).unwrap();
                std::fs::write(&pb, &db).unwrap();
                let [ra, rb] = file_digest_pair(&pa, &pb);
                assert_eq!(ra.unwrap(), sha(&da), "a: {la} bytes (b: {lb})");
                assert_eq!(rb.unwrap(), sha(&db), "b: {lb} bytes (a: {la})");
            }
        }
    }

    #[test]
    fn the_same_file_twice_and_an_error_on_either_side() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        let data = bytes(3 * PAIR_BUF + 5, 7);
        std::fs::write(&file, &data).unwrap();
        let [a, b] = file_digest_pair(&file, &file);
        assert_eq!((a.unwrap(), b.unwrap()), (sha(&data), sha(&data)));

        let missing = dir.path().join("missing");
        let [a, b] = file_digest_pair(&missing, &file);
        assert_eq!(a.unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(b.unwrap(), sha(&data));
        // A directory opens but fails to read.
        let [a, b] = file_digest_pair(&file, dir.path());
        assert_eq!(a.unwrap(), sha(&data));
        assert!(b.is_err());
    }
}
