//! Reaching a user's tree: every change made to SOURCE, BACKUP, a version or a restore target
//! goes through here. `ops` holds the safe operations of SPEC §7 (atomic replacement, a
//! re-check against the scan before anything is replaced or removed, new directories built
//! hidden); `temp` our temporary names and their journal; `flush` the flushes; `mapped` the
//! hash of a large copy read from a mapping of it.

pub mod flush;
pub(crate) mod mapped;
pub mod ops;
pub mod temp;
