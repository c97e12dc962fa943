//! The SHA-256 compression function for one or two interleaved lanes, with the CPU's SHA
//! instructions where present: the initial hash value ([`IV`]), the round constants, whether
//! this CPU has the instructions ([`shani_available`]) and [`compress`].
//!
//! Interleaving pays because a single SHA-256 stream is bound by the latency of the round
//! instruction: each pair of rounds needs the previous pair's result, so the rounds of two
//! independent lanes fill each other's wait (see `pair.rs` for the measurement).
//!
//! The only `unsafe` here is calling the compression function, whose instructions exist only
//! on CPUs that [`shani_available`] confirmed, and its unaligned 16-byte loads from slices of
//! checked length.
#![allow(unsafe_code)]

/// SHA-256 initial hash value (FIPS 180-4, 5.3.3).
pub(crate) const IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// SHA-256 round constants (FIPS 180-4, 4.2.2).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const K: [u32; 64] = [
    0x428a_2f98,
    0x7137_4491,
    0xb5c0_fbcf,
    0xe9b5_dba5,
    0x3956_c25b,
    0x59f1_11f1,
    0x923f_82a4,
    0xab1c_5ed5,
    0xd807_aa98,
    0x1283_5b01,
    0x2431_85be,
    0x550c_7dc3,
    0x72be_5d74,
    0x80de_b1fe,
    0x9bdc_06a7,
    0xc19b_f174,
    0xe49b_69c1,
    0xefbe_4786,
    0x0fc1_9dc6,
    0x240c_a1cc,
    0x2de9_2c6f,
    0x4a74_84aa,
    0x5cb0_a9dc,
    0x76f9_88da,
    0x983e_5152,
    0xa831_c66d,
    0xb003_27c8,
    0xbf59_7fc7,
    0xc6e0_0bf3,
    0xd5a7_9147,
    0x06ca_6351,
    0x1429_2967,
    0x27b7_0a85,
    0x2e1b_2138,
    0x4d2c_6dfc,
    0x5338_0d13,
    0x650a_7354,
    0x766a_0abb,
    0x81c2_c92e,
    0x9272_2c85,
    0xa2bf_e8a1,
    0xa81a_664b,
    0xc24b_8b70,
    0xc76c_51a3,
    0xd192_e819,
    0xd699_0624,
    0xf40e_3585,
    0x106a_a070,
    0x19a4_c116,
    0x1e37_6c08,
    0x2748_774c,
    0x34b0_bcb5,
    0x391c_0cb3,
    0x4ed8_aa4a,
    0x5b9c_ca4f,
    0x682e_6ff3,
    0x748f_82ee,
    0x78a5_636f,
    0x84c8_7814,
    0x8cc7_0208,
    0x90be_fffa,
    0xa450_6ceb,
    0xbef9_a3f7,
    0xc671_78f2,
];

/// Whether this CPU has the instructions [`compress`] uses.
pub(crate) fn shani_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("ssse3")
            && std::arch::is_x86_feature_detected!("sse4.1")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Runs the SHA-256 compression of `blocks[i]` (whole 64-byte blocks, the same number in every
/// lane) into `states[i]`, the lanes interleaved.
///
/// # Panics
///
/// If the lanes' lengths differ or are not whole blocks, or if the CPU lacks the SHA
/// extensions (callers check [`shani_available`] first).
#[cfg(target_arch = "x86_64")]
pub(crate) fn compress<const N: usize>(states: &mut [[u32; 8]; N], blocks: [&[u8]; N]) {
    let len = blocks[0].len();
    assert!(len.is_multiple_of(64) && blocks.iter().all(|b| b.len() == len));
    assert!(shani_available(), "SHA extensions required");
    // SAFETY: the CPU has every feature `compress_shani` is compiled for (checked just above),
    // and the lengths it relies on were checked too.
    unsafe { compress_shani(states, blocks) }
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn compress<const N: usize>(_: &mut [[u32; 8]; N], _: [&[u8]; N]) {
    unreachable!("only called when shani_available()")
}

/// See [`compress`]. Safety: the CPU must have SHA, SSSE3 and SSE4.1; every lane holds the same
/// number of whole blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
unsafe fn compress_shani<const N: usize>(states: &mut [[u32; 8]; N], blocks: [&[u8]; N]) {
    use std::arch::x86_64::*;

    // Message words are big-endian: this byte shuffle swaps each 32-bit word.
    let swap = _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203);
    let word = |s: &[u32; 8], i: usize| s[i].cast_signed();
    // The instructions keep the state as (A,B,E,F) and (C,D,G,H), highest lane first.
    let mut abef = [_mm_setzero_si128(); N];
    let mut cdgh = [_mm_setzero_si128(); N];
    for l in 0..N {
        let s = &states[l];
        abef[l] = _mm_set_epi32(word(s, 0), word(s, 1), word(s, 4), word(s, 5));
        cdgh[l] = _mm_set_epi32(word(s, 2), word(s, 3), word(s, 6), word(s, 7));
    }
    let count = blocks[0].len() / 64;
    for b in 0..count {
        let (abef_in, cdgh_in) = (abef, cdgh);
        // The last four message vectors of each lane: W[4g..4g+4] lives at index g % 4.
        let mut w = [[_mm_setzero_si128(); N]; 4];
        // Four rounds of every lane. Written out for each `g` (a macro, not a loop) so that
        // every index is a constant and the lanes' instructions interleave in registers.
        macro_rules! four_rounds {
            ($($g:literal)*) => {$({
                const G: usize = $g;
                let k = _mm_set_epi32(
                    K[4 * G + 3].cast_signed(),
                    K[4 * G + 2].cast_signed(),
                    K[4 * G + 1].cast_signed(),
                    K[4 * G].cast_signed(),
                );
                for l in 0..N {
                    let m = if G < 4 {
                        let bytes = &blocks[l][b * 64 + G * 16..b * 64 + G * 16 + 16];
                        // SAFETY: `bytes` is 16 readable bytes; the load needs no alignment.
                        let raw = unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) };
                        _mm_shuffle_epi8(raw, swap)
                    } else {
                        // W[t] = σ1(W[t-2]) + W[t-7] + σ0(W[t-15]) + W[t-16], four at a time.
                        let older = _mm_sha256msg1_epu32(w[G % 4][l], w[(G + 1) % 4][l]);
                        let mid = _mm_alignr_epi8(w[(G + 3) % 4][l], w[(G + 2) % 4][l], 4);
                        _mm_sha256msg2_epu32(_mm_add_epi32(older, mid), w[(G + 3) % 4][l])
                    };
                    w[G % 4][l] = m;
                    let wk = _mm_add_epi32(m, k);
                    // Two rounds each; the second pair takes the upper two words of `wk`.
                    cdgh[l] = _mm_sha256rnds2_epu32(cdgh[l], abef[l], wk);
                    abef[l] =
                        _mm_sha256rnds2_epu32(abef[l], cdgh[l], _mm_shuffle_epi32(wk, 0x0E));
                }
            })*};
        }
        four_rounds!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
        for l in 0..N {
            abef[l] = _mm_add_epi32(abef[l], abef_in[l]);
            cdgh[l] = _mm_add_epi32(cdgh[l], cdgh_in[l]);
        }
    }
    for l in 0..N {
        let lane = |v: __m128i, i: i32| -> u32 {
            let x = match i {
                0 => _mm_extract_epi32(v, 0),
                1 => _mm_extract_epi32(v, 1),
                2 => _mm_extract_epi32(v, 2),
                _ => _mm_extract_epi32(v, 3),
            };
            x.cast_unsigned()
        };
        states[l] = [
            lane(abef[l], 3),
            lane(abef[l], 2),
            lane(cdgh[l], 3),
            lane(cdgh[l], 2),
            lane(abef[l], 1),
            lane(abef[l], 0),
            lane(cdgh[l], 1),
            lane(cdgh[l], 0),
        ];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_bytes as bytes;

    #[test]
    fn compression_of_two_lanes_equals_one_lane_each() {
        if !shani_available() {
            return;
        }
        let (x, y) = (bytes(64 * 9, 1), bytes(64 * 9, 2));
        let mut two = [IV, [7; 8]];
        compress(&mut two, [&x[..], &y[..]]);
        let (mut one_x, mut one_y) = (IV, [7; 8]);
        compress(std::array::from_mut(&mut one_x), [&x[..]]);
        compress(std::array::from_mut(&mut one_y), [&y[..]]);
        assert_eq!(two, [one_x, one_y]);
    }
}
