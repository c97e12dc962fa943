//! Versions shared between the two sides of a pair (the "history" issue): twoway's two
//! versioning children each get `--link-dest` naming the other side's store, so a file
//! identical on both sides (same path, content and every carried metadata) is one inode in
//! both stores, and the two stores together take about what one side's data takes. Never a
//! file that differs, nor one at another path.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::util::*;

/// The bytes of each data file: the stores' own files (manifests, directories, logs) are
/// small beside them.
const FILE_SIZE: usize = 768 * 1024;

/// Fills `dir` with eight data files in three directories (6 MiB); returns their paths.
fn data_files(dir: &Path) -> Res<Vec<PathBuf>> {
    let mut rels = Vec::new();
    for i in 0..8u64 {
        let rel = PathBuf::from(format!("d{}/file{i}.bin", i % 3));
        set_mtime(
            &write(dir, &rel, noise(i + 1, FILE_SIZE))?,
            T0 + i as i64,
            7,
        )?;
        rels.push(rel);
    }
    Ok(rels)
}

/// The directory the public version name `name` of the store `vdir` resolves to.
fn version(vdir: &Path, name: &str) -> Res<PathBuf> {
    fs::canonicalize(vdir.join(name)).context(|| format!("resolve {}/{name}", vdir.display()))
}

/// twoway's two version stores for `env` (the state directory is its working directory).
fn stores(env: &Env) -> [PathBuf; 2] {
    let versions = env.root.join("__versions__");
    [versions.join("src"), versions.join("dst")]
}

/// Fails unless both stores' latest versions hold `rels` as one inode per path, and the two
/// stores together take at most 1.1 × what one side takes; returns that ratio.
fn expect_shared(env: &Env, rels: &[PathBuf]) -> Res<f64> {
    let [a, b] = stores(env);
    let (va, vb) = (version(&a, "_1")?, version(&b, "_1")?);
    assert_trees_equal(&env.dst, &vb)?;
    let side = disk_usage(&[&env.src])?;
    let both = disk_usage(&[&a, &b])?;
    let ratio = both as f64 / side as f64;
    eprintln!("both stores: {both} bytes, one side: {side} bytes, ratio {ratio:.3}");
    ensure!(
        both * 10 <= side * 11,
        "the two stores take {both} bytes, {ratio:.3} × one side's {side}"
    );
    for rel in rels {
        ensure!(
            inode(&va.join(rel))? == inode(&vb.join(rel))?,
            "{} is not shared between the two stores",
            rel.display()
        );
    }
    Ok(ratio)
}

/// The requirement itself: after a first sync and a snapshot of each side (`twoway --once`
/// runs them one after the other), both stores together take at most 1.1 × one side's data
/// (each inode counted once), where they took 2 × before the stores shared files.
#[test]
fn stores_of_a_synced_pair_together_take_little_more_than_one_side() -> TestResult {
    let env = Env::for_program(Program::Twoway)?;
    let rels = data_files(&env.src)?;

    let run = env.once(&[])?;
    run.expect_code(0)?;
    run.expect("INFO", "recovery: snapshots of both sides are up to date")?;
    expect_shared(&env, &rels)?;
    Ok(())
}

/// In the periodic mode the two children would start at once and, finding no version of the
/// other side's yet, both copy everything; the second side's child waits for the first
/// side's first version, so the stores share from the start.
#[test]
fn periodic_children_share_from_their_first_versions() -> TestResult {
    let env = Env::for_program(Program::Twoway)?;
    let rels = data_files(&env.src)?;

    let mut twoway = env.spawn(&[&env.src, &env.dst, &"--interval", &"3600"])?;
    let [a, b] = stores(&env);
    let deadline = Instant::now() + WAIT_TIMEOUT;
    while !(a.join("_1").exists() && b.join("_1").exists()) {
        ensure!(
            Instant::now() < deadline,
            "no version of both sides within {WAIT_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    twoway.stop_with("INT")?;
    ensure!(
        env.log_text().contains(&format!(
            "recovery: the versioning of {} starts once {} has a version",
            env.dst.display(),
            env.src.display()
        )),
        "twoway does not say the second child waits for the first's version:\n{}",
        env.log_text()
    );
    expect_shared(&env, &rels)?;
    Ok(())
}

/// `--link-dest` shares only what nothing could tell apart at the same path: a file whose
/// content, mode or time differs between the sides is copied, and so is a file whose bytes,
/// mode and time the other store holds at another path (two files that hold the same bytes
/// stay two files). What is shared or copied, the version is the side's exact copy.
#[test]
fn link_dest_shares_only_files_equal_at_the_same_path() -> TestResult {
    let env = Env::new()?;
    let (b, vb) = (env.root.join("B"), env.root.join("VB"));
    fs::create_dir(&vb)?;
    let (a, va) = (&env.src, &env.dst);
    let put = |dir: &Path, rel: &str, bytes: Vec<u8>, secs: i64, mode: u32| -> TestResult {
        let path = write(dir, rel, bytes)?;
        chmod(&path, mode)?;
        set_mtime(&path, secs, 0)
    };
    put(a, "same.bin", noise(1, FILE_SIZE), T0, 0o644)?;
    put(&b, "same.bin", noise(1, FILE_SIZE), T0, 0o644)?;
    put(a, "content.bin", noise(2, FILE_SIZE), T0, 0o644)?;
    put(&b, "content.bin", noise(3, FILE_SIZE), T0, 0o644)?;
    put(a, "mode.bin", noise(4, FILE_SIZE), T0, 0o644)?;
    put(&b, "mode.bin", noise(4, FILE_SIZE), T0, 0o600)?;
    put(a, "time.bin", noise(5, FILE_SIZE), T0, 0o644)?;
    put(&b, "time.bin", noise(5, FILE_SIZE), T0 + 1, 0o644)?;
    put(a, "x/moved.bin", noise(6, FILE_SIZE), T0, 0o644)?;
    put(&b, "y/moved.bin", noise(6, FILE_SIZE), T0, 0o644)?;

    env.once(&[&"--versioned"])?.expect_code(0)?;
    let run = env.run(&[&"--once", &"--versioned", &b, &vb, &"--link-dest", va])?;
    run.expect_code(0)?;
    let (va1, vb1) = (version(va, "_1")?, version(&vb, "_1")?);
    ensure!(
        inode(&va1.join("same.bin"))? == inode(&vb1.join("same.bin"))?,
        "the file equal on both sides is not shared"
    );
    let in_a: HashSet<u64> = inodes(&va1)?.into_values().collect();
    for rel in ["content.bin", "mode.bin", "time.bin", "y/moved.bin"] {
        ensure!(
            !in_a.contains(&inode(&vb1.join(rel))?),
            "{rel} shares an inode of the other store"
        );
    }
    assert_trees_equal(&b, &vb1)?;
    assert_trees_equal(a, &va1)?;
    ensure!(
        run.lines().iter().any(|l| l
            .message
            .starts_with("created version _1 (5 files: 1 hard-linked, 4 copied")),
        "the second store's version does not say 1 file shared and 4 copied\n{run}"
    );
    Ok(())
}

/// `--link-dest` naming no version store is refused before anything is done: one line, exit
/// 2, the version directory untouched and no log written.
#[test]
fn link_dest_that_is_no_version_store_is_a_usage_error() -> TestResult {
    let env = Env::new()?;
    write(&env.src, "f", "x")?;
    let file = write(&env.root, "a-file", "x")?;
    let tree = env.root.join("tree");
    write(&tree, "sub/f", "x")?;
    let damaged = env.root.join("damaged");
    fs::create_dir(&damaged)?;
    std::os::unix::fs::symlink("elsewhere", damaged.join(".current"))?;
    let missing = env.root.join("missing");
    let store = env.root.join("store");
    fs::create_dir(&store)?;

    let cases: [(&str, &Path, bool, &str); 6] = [
        (
            "a missing directory",
            &missing,
            true,
            "cannot open it as a directory",
        ),
        ("a file", &file, true, "cannot open it as a directory"),
        (
            "a tree of the user's",
            &tree,
            true,
            "is not a version store",
        ),
        ("a damaged store", &damaged, true, "is not a version store"),
        (
            "the version directory itself",
            &env.dst,
            true,
            "version directory itself",
        ),
        (
            "a store without --versioned",
            &store,
            false,
            "only with --versioned",
        ),
    ];
    for (what, vdir, versioned, says) in cases {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"--once", &env.src, &env.dst];
        if versioned {
            args.push(&"--versioned");
        }
        args.push(&"--link-dest");
        args.push(&vdir);
        let run = env.run(&args)?;
        run.expect_code(2).map_err(|e| format!("{what}: {e}"))?;
        let lines: Vec<&str> = run.stderr.lines().collect();
        ensure!(
            lines.len() == 1 && lines[0].starts_with("oneway: ") && lines[0].contains(says),
            "{what}: expected one line saying {says:?}, got:\n{}",
            run.stderr
        );
        ensure!(
            fs::read_dir(&env.dst)?.next().is_none() && !env.log.exists(),
            "{what}: something was written"
        );
    }
    Ok(())
}

/// A file the other store no longer holds when it is to be linked (its version pruned between
/// the plan and the copy, as a link across file systems or to an inode with as many links as
/// it may have fails) is copied instead: no error, and the version is the side's exact copy.
#[test]
fn link_dest_version_gone_before_the_link_is_a_copy() -> TestResult {
    let env = Env::new()?;
    let (b, vb) = (env.root.join("B"), env.root.join("VB"));
    fs::create_dir(&vb)?;
    let rels = data_files(&env.src)?;
    data_files(&b)?;
    env.once(&[&"--versioned"])?.expect_code(0)?;

    let mut cmd = env.command(&[&"--once", &"--versioned", &b, &vb, &"--link-dest", &env.dst]);
    cmd.env(
        "ONEWAY_TEST_HOOK_AFTER_PLAN",
        format!("rm -rf '{}'/.v-*", env.dst.display()),
    );
    let run = env.run_command(cmd, &env.log)?;
    run.expect_code(0)?;
    ensure!(
        !env.dst.join("_1").exists(),
        "the hook did not remove the other store's version"
    );
    let vb1 = version(&vb, "_1")?;
    assert_trees_equal(&b, &vb1)?;
    for rel in &rels {
        ensure!(
            fs::symlink_metadata(vb1.join(rel))?.nlink() == 1,
            "{} is linked to something",
            rel.display()
        );
    }
    ensure!(
        run.lines().iter().any(|l| l
            .message
            .starts_with("created version _1 (8 files: 0 hard-linked, 8 copied")),
        "the version does not say all 8 files were copied\n{run}"
    );
    Ok(())
}
