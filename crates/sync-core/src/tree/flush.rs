//! Getting written data to the disk: a pass's final flush of a file system, flushes while it
//! copies, and asking the disk to start on a file's pages early.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;

/// Asks the disk to start writing `len` bytes of `file` from `from` on, without waiting for it.
///
/// A copy through a buffer (alone or in a pair) calls it every `WRITE_BEHIND` bytes (see
/// `WriteBehind` in [`super::ops`]), and a kernel's copy hashed from a mapping on every piece (see
/// [`crate::tree::mapped`]): the pass's flush (see [`flush_fs`]) then finds most of the file on disk
/// already, and the work of sending the pages (block allocation, on ext4) is done by the
/// copying threads in parallel rather than by the kernel's flusher alone. On a first copy of 8
/// files of 256 MiB it took a quarter off the system time and about a tenth off the wall time
/// (see docs/performance.md).
pub(crate) fn start_writeback(file: &File, from: u64, len: u64) {
    // Linux starts the writeback of a range's dirty pages on DONTNEED (`sync_file_range`
    // without the wait, which rustix does not offer) and drops only its clean pages: pages
    // just written are dirty, so the copy stays cached. A refusal changes only the timing.
    let _ = rustix::fs::fadvise(
        file,
        from,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::DontNeed,
    );
}

/// Makes everything written under `root` durable, once per pass instead of once per file (a
/// pass's last step, before a state file records what it did).
///
/// Fails if the file system cannot be flushed.
pub fn flush_fs(root: &impl AsFd) -> io::Result<()> {
    rustix::fs::syncfs(root).map_err(io::Error::from)
}

/// Runs `work` while a helper thread flushes the file system of `root` every `every`, so that
/// the disk writes what `work` writes while it goes on, and the final [`flush_fs`] has little
/// left to wait for. (The kernel on its own starts writing only once a tenth or so of the
/// memory is dirty.) A failed early flush is not an error: the final one decides.
pub fn flushing_while<R>(
    root: &(impl AsFd + Sync),
    every: std::time::Duration,
    work: impl FnOnce() -> R,
) -> R {
    let dir = root.as_fd();
    let (done, wait) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(every) {
                let _ = rustix::fs::syncfs(dir);
            }
        });
        let result = work();
        drop(done);
        result
    })
}
