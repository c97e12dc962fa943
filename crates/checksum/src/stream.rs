//! SHA-256 of a stream fed piece by piece ([`Hasher`]), built on `sha2`'s compression function
//! so that two streams can also be fed together, compressed on interleaved lanes by
//! `compress.rs` ([`update_pair`]).

use crate::Digest;
use crate::compress::{IV, compress, shani_available};

/// A streaming SHA-256.
#[derive(Debug, Clone)]
pub struct Hasher {
    state: [u32; 8],
    /// Bytes fed so far.
    len: u64,
    /// The bytes of an unfinished block.
    block: [u8; 64],
    filled: usize,
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher::new()
    }
}

impl Hasher {
    /// A hasher fed nothing yet.
    pub fn new() -> Hasher {
        Hasher {
            state: IV,
            len: 0,
            block: [0; 64],
            filled: 0,
        }
    }

    /// Feeds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        let blocks = self.start(bytes);
        self.compress_single(blocks.whole);
        self.keep(blocks.tail);
    }

    /// Completes a pending partial block from the front of `bytes` and splits the rest into
    /// whole blocks and a tail.
    fn start<'b>(&mut self, mut bytes: &'b [u8]) -> Pieces<'b> {
        self.len += bytes.len() as u64;
        if self.filled > 0 {
            let take = (64 - self.filled).min(bytes.len());
            self.block[self.filled..self.filled + take].copy_from_slice(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled < 64 {
                return Pieces {
                    whole: &[],
                    tail: &[],
                };
            }
            sha2::block_api::compress256(&mut self.state, std::slice::from_ref(&self.block));
            self.filled = 0;
        }
        let whole = bytes.len() / 64 * 64;
        Pieces {
            whole: &bytes[..whole],
            tail: &bytes[whole..],
        }
    }

    fn compress_single(&mut self, whole: &[u8]) {
        sha2::block_api::compress256(&mut self.state, whole.as_chunks::<64>().0);
    }

    /// Keeps the bytes after the last whole block (fewer than 64).
    fn keep(&mut self, tail: &[u8]) {
        if !tail.is_empty() {
            self.block[..tail.len()].copy_from_slice(tail);
            self.filled = tail.len();
        }
    }

    /// The digest of everything fed.
    pub fn finish(mut self) -> Digest {
        let bits = self.len.wrapping_mul(8);
        let mut tail = [[0u8; 64]; 2];
        let flat = tail.as_flattened_mut();
        flat[..self.filled].copy_from_slice(&self.block[..self.filled]);
        flat[self.filled] = 0x80;
        // The length takes the last 8 bytes of one block, or of a second if it does not fit.
        let blocks = if self.filled < 56 { 1 } else { 2 };
        flat[blocks * 64 - 8..blocks * 64].copy_from_slice(&bits.to_be_bytes());
        sha2::block_api::compress256(&mut self.state, &tail[..blocks]);
        let mut digest = [0u8; 32];
        for (out, word) in digest.chunks_exact_mut(4).zip(self.state) {
            out.copy_from_slice(&word.to_be_bytes());
        }
        digest
    }
}

/// A piece of input split at block boundaries.
struct Pieces<'b> {
    whole: &'b [u8],
    tail: &'b [u8],
}

/// Feeds `bytes[0]` to `hashers[0]` and `bytes[1]` to `hashers[1]`, compressing the blocks the
/// two have in common on interleaved lanes (in about the time of one stream, with the CPU's SHA
/// instructions), the rest one stream at a time. The result is exactly that of two
/// [`Hasher::update`] calls.
pub fn update_pair(hashers: [&mut Hasher; 2], bytes: [&[u8]; 2]) {
    let [a, b] = hashers;
    if !shani_available() {
        a.update(bytes[0]);
        b.update(bytes[1]);
        return;
    }
    let (pa, pb) = (a.start(bytes[0]), b.start(bytes[1]));
    let both = pa.whole.len().min(pb.whole.len());
    let mut states = [a.state, b.state];
    compress(&mut states, [&pa.whole[..both], &pb.whole[..both]]);
    [a.state, b.state] = states;
    a.compress_single(&pa.whole[both..]);
    b.compress_single(&pb.whole[both..]);
    a.keep(pa.tail);
    b.keep(pb.tail);
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    fn sha(bytes: &[u8]) -> Digest {
        Sha256::digest(bytes).into()
    }

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
            .collect()
    }

    #[test]
    fn every_length_around_block_edges_fed_in_any_pieces_matches_sha2() {
        for len in [
            0,
            1,
            55,
            56,
            57,
            63,
            64,
            65,
            119,
            120,
            127,
            128,
            129,
            1000,
            4096 + 3,
        ] {
            let data = bytes(len, 1);
            for piece in [1, 7, 64, 100, 5000] {
                let mut h = Hasher::new();
                for chunk in data.chunks(piece) {
                    h.update(chunk);
                }
                assert_eq!(h.finish(), sha(&data), "{len} bytes in pieces of {piece}");
            }
        }
    }

    #[test]
    fn two_streams_fed_together_in_uneven_pieces_match_sha2() {
        // Lengths and pieces that leave partial blocks pending on either lane, lanes with
        // different numbers of whole blocks, and one lane ending long before the other.
        for (la, lb) in [
            (0, 0),
            (1, 300),
            (64, 64),
            (1000, 999),
            (5000, 130),
            (4096 + 3, 0),
        ] {
            let (da, db) = (bytes(la, 2), bytes(lb, 3));
            for (pa, pb) in [(1, 1), (7, 100), (64, 64), (100, 7), (1000, 3000)] {
                let (mut ha, mut hb) = (Hasher::new(), Hasher::new());
                let (mut ca, mut cb) = (da.chunks(pa), db.chunks(pb));
                loop {
                    let (x, y) = (ca.next(), cb.next());
                    if x.is_none() && y.is_none() {
                        break;
                    }
                    update_pair([&mut ha, &mut hb], [x.unwrap_or(&[]), y.unwrap_or(&[])]);
                }
                let what = format!("{la} and {lb} bytes in pieces of {pa} and {pb}");
                assert_eq!((ha.finish(), hb.finish()), (sha(&da), sha(&db)), "{what}");
            }
        }
    }
}
