//! Limits a pass must keep on file systems it does not choose (issue 20, root safety): a file
//! system whose timestamps keep whole seconds only (ext4 made with 128-byte inodes), where an
//! edit that keeps the size within the second of a hash leaves the file's stamp as it was, and
//! a file that keeps growing while it is copied, which must not be followed until BACKUP's disk
//! is full.
//!
//! Each test mounts small file systems of its own (the tests run as root, as the README asks).
//! Where that is impossible, a test fails, unless `ONEWAY_TESTS_ALLOW_SKIP` is set: then it
//! prints `SKIPPED:` on the console (past the test harness's capture) and returns, so that a skip
//! is never mistaken for a pass.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::util::*;

// ---------------------------------------------------------------------------------------------
// Mounts

/// A fresh 32 MiB ext4 with 128-byte inodes, which keep no time finer than a second, in the
/// image file `image`, loop-mounted over the existing directory `path`.
fn ext4_whole_seconds(image: &Path, path: &Path) -> Result<Mounted, String> {
    File::create(image)
        .and_then(|f| f.set_len(32 << 20))
        .map_err(|e| format!("cannot make the image {}: {e}", image.display()))?;
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-I", "128"])
        .arg(image)
        .output()
        .map_err(|e| format!("cannot run mkfs.ext4 (e2fsprogs): {e}"))?;
    if !out.status.success() {
        return Err(format!("mkfs.ext4 failed: {}", one_line(&out.stderr)));
    }
    Mounted::mount(
        &[OsStr::new("-o"), OsStr::new("loop"), image.as_os_str()],
        path,
    )
}

// ---------------------------------------------------------------------------------------------
// 1. Whole-second timestamps

/// What the hash cache keys a file's content by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    /// Seconds, nanoseconds.
    mtime: (i64, i64),
    /// Seconds, nanoseconds.
    ctime: (i64, i64),
    ino: u64,
}

/// The [`Stamp`] of the file at `path`.
fn stamp(path: &Path) -> Res<Stamp> {
    let m = fs::symlink_metadata(path).context(|| format!("stat {}", path.display()))?;
    Ok(Stamp {
        size: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
        ino: m.ino(),
    })
}

/// Sleeps until 20 ms into the next second of the wall clock, so that what follows has most of
/// a second before the clock's second moves on (the file system's clock may lag a tick).
fn sleep_into_next_second() -> TestResult {
    let into = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
    let left = Duration::from_secs(1) - Duration::from_nanos(u64::from(into));
    thread::sleep(left + Duration::from_millis(20));
    Ok(())
}

// Regression test (issue 20): a multigrain kernel (Linux 6.13 and later) gives ext4 change times
// finer than the clock tick, so a hash taken after the scan could be cached at once, trusting
// that any later change moves the ctime. An ext4 made with 128-byte inodes has no room for
// fractions of a second: there an edit that keeps the size, made within the second of the
// hash, leaves size, mtime, ctime and inode as they were, and a hash cached at once would hide
// it pass after pass. Times in whole seconds must be treated as coarse (hashed again while
// within a tick of the hash). On a kernel before 6.13 every file system counts as coarse, so
// this test passes there even without that rule.
#[test]
fn a_same_size_edit_within_the_second_of_the_hash_is_copied_on_a_whole_second_file_system()
-> TestResult {
    const TEST: &str =
        "a_same_size_edit_within_the_second_of_the_hash_is_copied_on_a_whole_second_file_system";
    let env = Env::new()?;
    let mountpoint = mkdir(&env.root, "ext4")?;
    let made = ext4_whole_seconds(&env.root.join("ext4.img"), &mountpoint);
    let Some(_ext4) = mounted_or_skip(
        made,
        "an ext4 with 128-byte inodes",
        &format!("limits::{TEST}"),
    )?
    else {
        return Ok(());
    };
    // SOURCE is a directory on the ext4 itself, so the root's own file system is the coarse
    // one (and lost+found stays out of the way); BACKUP and the hash cache stay in the fixture.
    let src = mkdir(&mountpoint, "src")?;
    let file = src.join("notes.txt");
    let (old, new) = (
        "draft 1: the meeting is on Monday\n",
        "draft 2: the meeting is on Friday\n",
    );
    let once = || env.run(&[&"--once", &src, &env.dst]);

    // Only an attempt whose edit left the stamp exactly as the first pass hashed it counts;
    // one that the clock's second overtook starts over, with the file written afresh.
    let mut counted = None;
    for attempt in 1..=8 {
        sleep_into_next_second()?;
        write(&src, "notes.txt", old)?;
        let hashed = stamp(&file)?;
        ensure!(
            hashed.mtime.1 == 0 && hashed.ctime.1 == 0,
            "the ext4 with 128-byte inodes keeps fractions of a second (mtime {:?}, ctime {:?}): \
             the test cannot make its whole-second file system",
            hashed.mtime,
            hashed.ctime
        );
        let first = once()?;
        first.expect_code(0)?;
        ensure!(
            read(&env.dst.join("notes.txt"))? == old.as_bytes(),
            "the first pass did not copy notes.txt\n{first}"
        );
        write(&src, "notes.txt", new)?;
        if stamp(&file)? == hashed {
            counted = Some((attempt, first));
            break;
        }
    }
    let Some((attempt, first)) = counted else {
        return Err(fail(
            "in 8 attempts, never a pass and an edit within one second: the machine is too \
             slow or too busy for this test",
        ));
    };

    let second = once()?;
    second.expect_code(0)?;
    let after_second = read(&env.dst.join("notes.txt"))?;
    let third = once()?;
    third.expect_code(0)?;
    let after_third = read(&env.dst.join("notes.txt"))?;
    let shown = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    ensure!(
        after_second == new.as_bytes() && after_third == new.as_bytes(),
        "SOURCE/notes.txt was edited to {new:?} (same size) within the second of the first \
         pass's hash (attempt {attempt}, stamp unchanged), yet BACKUP/notes.txt holds {:?} \
         after the second pass and {:?} after the third: the hash cached for the old content \
         was trusted\n--- first pass:\n{first}\n--- second pass:\n{second}\n--- third \
         pass:\n{third}",
        shown(&after_second),
        shown(&after_third)
    );
    assert_trees_equal(&src, &env.dst)
}

// ---------------------------------------------------------------------------------------------
// 2. A file that keeps growing

/// The size of the file being copied when the copy opens it.
const INITIAL: u64 = 48 << 20;
/// BACKUP's size: room for the file as it was when opened, and only 4 MiB more, so that a copy
/// that follows the file fills it even if it reads faster than the writer appends (unless it
/// reads more than 13 times as fast).
const BACKUP_SIZE: &str = "52m";
/// How far beyond [`INITIAL`] BACKUP's used space may go: pages, the byte that shows growth.
const MARGIN: u64 = 1 << 20;
/// What the writer appends at a time.
const CHUNK: usize = 1 << 20;
/// The writer stops after this much time or this many bytes, whatever happens.
const WRITER_TIME: Duration = Duration::from_secs(10);
const WRITER_BYTES: u64 = 64 << 20;

/// Bytes used on the file system of `path`.
fn used_bytes(path: &Path) -> io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok((s.f_blocks - s.f_bfree) * s.f_frsize)
}

/// What the writer did.
#[derive(Debug, Default)]
struct Appended {
    /// Whether it saw the copy begin (and so began appending).
    started: bool,
    /// Bytes appended.
    bytes: u64,
    /// The most BACKUP's file system held, sampled between appends and until stopped.
    peak_used: u64,
    /// Why it stopped appending early, if it did (SOURCE's file system full, …).
    stopped_by: Option<String>,
}

/// Appends to a file from a thread while a pass copies it; stopped and joined when dropped.
struct Appender {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Appended>>,
}

impl Appender {
    /// Starts appending to `file` as soon as BACKUP's file system (at `backup`) holds more than
    /// `idle` bytes, that is once the copy has written its first bytes: the copy then opened
    /// the file at exactly its initial size. From then on it appends [`CHUNK`]s as fast as it
    /// can, for [`WRITER_TIME`] or [`WRITER_BYTES`] at most.
    fn start(file: File, backup: PathBuf, idle: u64) -> Appender {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || append_once_copied(&file, &backup, idle, &flag));
        Appender {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the writer and says what it did.
    fn finish(mut self) -> Res<Appended> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().ok_or_else(|| fail("no writer thread"))?;
        thread
            .join()
            .map_err(|_| fail("the writer thread panicked"))
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer's thread: see [`Appender::start`]. It samples BACKUP's used space between
/// appends, and every millisecond once it no longer appends, until told to stop.
fn append_once_copied(file: &File, backup: &Path, idle: u64, stop: &AtomicBool) -> Appended {
    let deadline = Instant::now() + WRITER_TIME;
    let go_on = || !stop.load(Ordering::Relaxed) && Instant::now() < deadline;
    let mut done = Appended::default();
    let sample = |done: &mut Appended| {
        if let Ok(used) = used_bytes(backup) {
            done.peak_used = done.peak_used.max(used);
        }
        done.peak_used
    };
    while sample(&mut done) <= idle {
        if !go_on() {
            return done;
        }
        thread::yield_now();
    }
    done.started = true;
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
    let mut out = file;
    while go_on() && done.bytes < WRITER_BYTES {
        if let Err(e) = out.write_all(&chunk) {
            done.stopped_by = Some(e.to_string());
            break;
        }
        done.bytes += CHUNK as u64;
        sample(&mut done);
    }
    while go_on() {
        sample(&mut done);
        thread::sleep(Duration::from_millis(1));
    }
    done
}

// Regression test (issue 20): a copy used to read its source until the end of the file, so a
// file that someone keeps appending to (a log, a capture) was followed for as long as it grew,
// until BACKUP's disk was full. A copy must read no more than the file held when opened (and one
// byte to notice that it grew), give that copy up as changed, and leave the file for the next
// pass.
#[test]
fn a_file_that_keeps_growing_while_copied_is_left_for_the_next_pass_not_followed() -> TestResult {
    const TEST: &str =
        "a_file_that_keeps_growing_while_copied_is_left_for_the_next_pass_not_followed";
    let env = Env::new()?;
    let Some(backup) = mounted_or_skip(
        Mounted::tmpfs(&env.dst, &format!("size={BACKUP_SIZE}")),
        "a tmpfs",
        &format!("limits::{TEST}"),
    )?
    else {
        return Ok(());
    };
    // SOURCE on a tmpfs of its own: the writer runs at memory speed, and whatever happens it
    // cannot fill the machine's disk.
    let Some(_source) = mounted_or_skip(
        Mounted::tmpfs(&env.src, "size=512m"),
        "a tmpfs",
        &format!("limits::{TEST}"),
    )?
    else {
        return Ok(());
    };
    let path = env.src.join("capture.bin");
    let initial: Vec<u8> = (0..INITIAL).map(|i| (i % 253) as u8).collect();
    write(&env.src, "capture.bin", &initial)?;
    drop(initial);
    let file = OpenOptions::new()
        .append(true)
        .open(&path)
        .context(|| format!("open {} to append", path.display()))?;
    let idle = used_bytes(&env.dst)?;

    // The writer waits for the copy's first bytes in BACKUP, so the copy opened the file at
    // exactly INITIAL bytes, then appends as fast as it can: a copy bounded by the size at open
    // reads one byte more at most, and one that follows the file runs into BACKUP's end.
    let writer = Appender::start(file, env.dst.clone(), idle);
    let run = env.oneway_timeout(&[&"--once", &env.src, &env.dst], Duration::from_secs(60));
    let appended = writer.finish()?;
    let run = run?;

    ensure!(
        appended.started,
        "the writer never saw the copy begin, so it never appended: {appended:?}\n{run}"
    );
    ensure!(
        !run.log.contains("No space left on device"),
        "BACKUP's {BACKUP_SIZE} disk filled up: the copy followed the file as it grew from \
         {INITIAL} bytes (the writer appended {} bytes; {appended:?})\n{run}",
        appended.bytes
    );
    ensure!(
        appended.peak_used <= INITIAL + MARGIN,
        "BACKUP held {} bytes during the copy of a file of {INITIAL} bytes when opened: the \
         copy read what was appended after ({appended:?})\n{run}",
        appended.peak_used
    );
    run.expect_code(1)?;
    run.expect(
        "ERROR",
        "skipped capture.bin: it changed while being copied; retried next pass",
    )?;
    expect_tree("BACKUP", &env.dst, &[])?;

    // Once the file holds still, the next pass copies it whole.
    backup.resize("1g")?;
    let next = env.once(&[])?;
    next.expect_code(0)?;
    assert_trees_equal(&env.src, &env.dst)
}
