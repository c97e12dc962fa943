//! Sparse files: a copy in BACKUP keeps the source's holes as holes, as `cp --sparse=auto`
//! and `rsync -S` do, on a first copy and when it replaces an older copy; its bytes are the
//! source's, holes read as zeros.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use rustix::fs::SeekFrom;

use crate::util::*;

const MIB: u64 = 1024 * 1024;

/// The bytes `path` takes on disk.
fn allocated(path: &Path) -> Res<u64> {
    let meta = fs::metadata(path).context(|| format!("stat {}", path.display()))?;
    Ok(meta.blocks() * 512)
}

/// The runs of data (start and end) of `file`, `len` bytes long, as the kernel reports them.
fn data_runs(file: &File, len: u64) -> Res<Vec<(u64, u64)>> {
    let mut runs = Vec::new();
    let mut at = 0;
    while at < len {
        let start = match rustix::fs::seek(file, SeekFrom::Data(at)) {
            Ok(start) => start,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = rustix::fs::seek(file, SeekFrom::Hole(start))?;
        runs.push((start, end));
        at = end;
    }
    Ok(runs)
}

/// Whether the files `a` and `b` have the same length and bytes. Only where either has data
/// are they read: anywhere else both are holes, zeros. (Reading a hole of 1 GiB costs
/// seconds, the kernel filling a page of zeros for every 4 KiB.)
fn same_bytes(a: &Path, b: &Path) -> Res<bool> {
    let fa = File::open(a).context(|| format!("open {}", a.display()))?;
    let fb = File::open(b).context(|| format!("open {}", b.display()))?;
    let len = fa.metadata()?.len();
    if fb.metadata()?.len() != len {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0; MIB as usize], vec![0; MIB as usize]);
    for (mut at, end) in data_runs(&fa, len)?.into_iter().chain(data_runs(&fb, len)?) {
        while at < end {
            let n = (end - at).min(MIB) as usize;
            fa.read_exact_at(&mut ba[..n], at)?;
            fb.read_exact_at(&mut bb[..n], at)?;
            if ba[..n] != bb[..n] {
                return Ok(false);
            }
            at += n as u64;
        }
    }
    Ok(true)
}

/// Fails unless BACKUP is SOURCE (paths, modes, times, lengths, bytes) and its copy of `rel`
/// takes less than 1 MiB on disk.
fn expect_sparse_copy(env: &Env, rel: &str, run: &Run) -> TestResult {
    assert_same(
        "SOURCE and BACKUP",
        &snapshot(&env.src)?,
        &snapshot(&env.dst)?,
    )?;
    let (src, dst) = (env.src.join(rel), env.dst.join(rel));
    ensure!(same_bytes(&src, &dst)?, "the copy of {rel} differs\n{run}");
    let taken = allocated(&dst)?;
    ensure!(
        taken < MIB,
        "the copy of {rel} takes {taken} bytes on disk\n{run}"
    );
    Ok(())
}

/// A 1 GiB file holding one 4 KiB block of data took 1.1 GB in BACKUP after a copy: the
/// holes were written out as zeros. It takes about its one block there now, after the first
/// copy and after a change of one byte replaced that copy.
#[test]
fn a_sparse_file_stays_sparse_in_backup_when_copied_and_replaced() -> TestResult {
    let env = Env::new()?;
    let src = env.src.join("disk.img");
    let block: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8 | 1).collect();
    let file = File::create_new(&src)?;
    file.set_len(1024 * MIB)?;
    file.write_all_at(&block, 300 * MIB)?;
    drop(file);
    set_mtime(&src, T0, 0)?;
    ensure!(
        allocated(&src)? < MIB,
        "the file system of {} keeps no holes: the test cannot tell",
        src.display()
    );

    let run = env.once(&[])?;

    run.expect_code(0)?;
    run.expect("INFO", "copied disk.img")?;
    expect_sparse_copy(&env, "disk.img", &run)?;

    // One byte of the data changed (the size did not): the copy is replaced.
    let file = fs::OpenOptions::new().write(true).open(&src)?;
    file.write_all_at(b"\0", 300 * MIB + 100)?;
    drop(file);
    set_mtime(&src, T0 + 1, 0)?;

    let run = env.once(&[])?;

    run.expect_code(0)?;
    run.expect("INFO", "replaced disk.img")?;
    expect_sparse_copy(&env, "disk.img", &run)
}
