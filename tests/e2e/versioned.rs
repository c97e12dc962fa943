//! `oneway --versioned`: snapshots `_0` … `_{N-1}`, rotation only on a real change, shared
//! storage between versions, manifests, and rotations that survive SIGKILL (SPEC §3, §6, §7;
//! issue 3). Every test runs the real binary on fresh temporary directories.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

/// A tree with files at two depths, a symlink, an empty directory and varied modes and mtimes.
fn build_tree(s: &Path) -> TestResult {
    for (i, (rel, bytes)) in (0u32..).zip([
        ("a.txt", &b"alpha\n"[..]),
        ("b.txt", b"bravo\n"),
        ("sub/c.txt", b"charlie\n"),
        ("sub/deep/d.bin", b"\x00\x01delta"),
    ]) {
        set_mtime(&write(s, rel, bytes)?, T0 + i64::from(i), 500 + i)?;
    }
    chmod(&s.join("b.txt"), 0o600)?;
    symlink(s, "link", "a.txt")?;
    mkdir(s, "empty")?;
    set_mtime(&s.join("empty"), T0 + 10, 1)?;
    set_mtime(&s.join("sub/deep"), T0 + 11, 2)?;
    set_mtime(&s.join("sub"), T0 + 12, 3)?;
    Ok(())
}

fn versioned(env: &Env, extra: &[&str]) -> Res<Run> {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"--once", &"--versioned"];
    for e in extra {
        args.push(e);
    }
    args.push(&env.src);
    args.push(&env.dst);
    env.oneway(&args)
}

/// The directory a public version name resolves to (it is a link into the store).
fn resolved(env: &Env, name: &str) -> Res<PathBuf> {
    Ok(fs::canonicalize(env.dst.join(name))?)
}

fn manifest_of(env: &Env, name: &str) -> Res<versioning::Manifest> {
    let mut path = resolved(env, name)?.into_os_string();
    path.push(".manifest");
    Ok(versioning::Manifest::read(Path::new(&path))?)
}

/// The public names that resolve to a version, sorted.
fn version_names(env: &Env) -> Res<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(&env.dst)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('_') && env.dst.join(n).is_dir())
        .collect();
    names.sort();
    Ok(names)
}

#[test]
fn first_versioned_pass_makes_latest_an_exact_copy() -> TestResult {
    let env = Env::new()?;
    build_tree(&env.src)?;

    let run = versioned(&env, &[])?;

    run.expect_code(0)?;
    ensure!(
        run.lines()
            .iter()
            .any(|l| l.message.starts_with("created version _1 ")),
        "no `created version _1` line\n{run}"
    );
    assert_trees_equal(&env.src, &env.dst.join("_1"))?;
    ensure!(
        version_names(&env)? == ["_1"],
        "only _1 exists after the first pass, found {:?}",
        version_names(&env)?
    );
    let problems = versioning::verify(&resolved(&env, "_1")?, &manifest_of(&env, "_1")?)?;
    ensure!(problems.is_empty(), "_1 does not verify: {problems:?}");
    Ok(())
}

#[test]
fn unchanged_source_rotates_nothing_and_reads_nothing() -> TestResult {
    let env = Env::new()?;
    build_tree(&env.src)?;
    versioned(&env, &[])?.expect_code(0)?;
    let latest = resolved(&env, "_1")?;

    let run = versioned(&env, &[])?;

    run.expect_code(0)?;
    ensure!(
        run.lines()
            .iter()
            .any(|l| l.message.starts_with("no change since the latest version")),
        "no `no change` line\n{run}"
    );
    let summary = run.summary()?;
    ensure!(
        summary.operations == 0 && summary.hashed == 0,
        "expected 0 operations and 0 files hashed, got {summary:?}\n{run}"
    );
    ensure!(
        resolved(&env, "_1")? == latest,
        "_1 changed without a change"
    );
    ensure!(
        version_names(&env)? == ["_1"],
        "a version appeared: {:?}",
        version_names(&env)?
    );
    Ok(())
}

#[test]
fn change_rotates_latest_to_previous_exactly() -> TestResult {
    let env = Env::new()?;
    build_tree(&env.src)?;
    versioned(&env, &[])?.expect_code(0)?;
    let first = snapshot(&env.src)?;

    write(&env.src, "a.txt", "alpha, edited\n")?;
    set_mtime(&env.src.join("a.txt"), T0 + 100, 7)?;
    fs::remove_file(env.src.join("sub/c.txt"))?;
    set_mtime(&env.src.join("sub"), T0 + 101, 8)?;
    let second = snapshot(&env.src)?;

    let run = versioned(&env, &[])?;

    run.expect_code(0)?;
    assert_same(
        "_0 is the first state",
        &first,
        &snapshot(&env.dst.join("_0"))?,
    )?;
    assert_same(
        "_1 is the second state",
        &second,
        &snapshot(&env.dst.join("_1"))?,
    )?;
    // Unchanged files share storage between the two versions.
    for rel in ["b.txt", "sub/deep/d.bin"] {
        ensure!(
            inode(&env.dst.join("_0").join(rel))? == inode(&env.dst.join("_1").join(rel))?,
            "{rel} is not shared between _0 and _1"
        );
    }
    ensure!(
        inode(&env.dst.join("_0/a.txt"))? != inode(&env.dst.join("_1/a.txt"))?,
        "the edited file shares storage with its old version"
    );
    for name in ["_0", "_1"] {
        let problems = versioning::verify(&resolved(&env, name)?, &manifest_of(&env, name)?)?;
        ensure!(problems.is_empty(), "{name} does not verify: {problems:?}");
    }
    Ok(())
}

#[test]
fn symlink_only_change_and_new_empty_directory_each_make_a_version() -> TestResult {
    let env = Env::new()?;
    build_tree(&env.src)?;
    versioned(&env, &[])?.expect_code(0)?;

    fs::remove_file(env.src.join("link"))?;
    symlink(&env.src, "link", "b.txt")?;
    let run = versioned(&env, &[])?;
    run.expect_code(0)?;
    ensure!(
        read_link(&env.dst.join("_1/link"))? == Path::new("b.txt"),
        "_1/link not updated\n{run}"
    );
    ensure!(
        read_link(&env.dst.join("_0/link"))? == Path::new("a.txt"),
        "_0/link not the old one\n{run}"
    );

    mkdir(&env.src, "sub/new-empty")?;
    let run = versioned(&env, &[])?;
    run.expect_code(0)?;
    ensure!(
        kind_of(&env.dst.join("_1/sub/new-empty"))? == Some("directory"),
        "new empty directory not in _1\n{run}"
    );
    ensure!(
        kind_of(&env.dst.join("_0/sub/new-empty"))?.is_none(),
        "_0 should be the state before the empty directory\n{run}"
    );
    assert_trees_equal(&env.src, &env.dst.join("_1"))
}

#[test]
fn keep_three_holds_the_last_three_states() -> TestResult {
    let env = Env::new()?;
    build_tree(&env.src)?;
    let mut states = Vec::new();
    for i in 0..4 {
        write(&env.src, "state.txt", format!("state {i}\n"))?;
        set_mtime(&env.src.join("state.txt"), T0 + 200 + i, 0)?;
        versioned(&env, &["--keep", "3"])?.expect_code(0)?;
        states.push(snapshot(&env.src)?);
    }

    ensure!(
        version_names(&env)? == ["_0", "_1", "_2"],
        "expected _0 _1 _2, found {:?}",
        version_names(&env)?
    );
    assert_same(
        "_2 is the fourth state",
        &states[3],
        &snapshot(&env.dst.join("_2"))?,
    )?;
    assert_same(
        "_1 is the third state",
        &states[2],
        &snapshot(&env.dst.join("_1"))?,
    )?;
    assert_same(
        "_0 is the second state",
        &states[1],
        &snapshot(&env.dst.join("_0"))?,
    )?;
    // Nothing of the dropped first version is left in the store.
    let stored = fs::read_dir(&env.dst)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".v-") && e.path().is_dir())
        .count();
    ensure!(stored == 3, "expected 3 stored versions, found {stored}");
    Ok(())
}

#[test]
fn keep_below_two_or_without_versioned_is_refused() -> TestResult {
    let env = Env::new()?;
    build_tree(&env.src)?;
    for args in [
        vec!["--once", "--versioned", "--keep", "1"],
        vec!["--once", "--versioned", "--keep", "zero"],
        vec!["--once", "--keep", "3"],
    ] {
        let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = args.iter().map(|a| a as _).collect();
        all.push(&env.src);
        all.push(&env.dst);
        let run = env.oneway(&all)?;
        run.expect_code(2)?;
        ensure!(
            run.stderr.contains("keep") && run.stderr.lines().count() == 1,
            "expected one line naming --keep for {args:?}\n{run}"
        );
        ensure!(
            fs::read_dir(&env.dst)?.next().is_none(),
            "BACKUP was touched for {args:?}"
        );
    }
    Ok(())
}

#[test]
fn foreign_version_directory_is_refused_and_left_alone() -> TestResult {
    let env = Env::new()?;
    build_tree(&env.src)?;
    write(&env.dst, "_1/precious.txt", "not made by oneway")?;
    let before = snapshot(&env.dst)?;

    let run = versioned(&env, &[])?;

    run.expect_code(2)?;
    ensure!(
        run.stderr.contains("_1") && run.stderr.contains("not a version link"),
        "expected an error naming _1\n{run}"
    );
    assert_same("BACKUP", &before, &snapshot(&env.dst)?)
}

#[test]
fn damaged_manifest_is_refused_naming_it() -> TestResult {
    let env = Env::new()?;
    build_tree(&env.src)?;
    versioned(&env, &[])?.expect_code(0)?;
    let mut manifest = resolved(&env, "_1")?.into_os_string();
    manifest.push(".manifest");
    let manifest = PathBuf::from(manifest);
    let text = fs::read_to_string(&manifest)?;
    fs::write(&manifest, &text[..text.len() / 2])?;
    write(
        &env.src,
        "a.txt",
        "changed so that a rotation would be due\n",
    )?;
    let before = snapshot(&env.dst)?;

    let run = versioned(&env, &[])?;

    run.expect_code(2)?;
    ensure!(
        contains_path(&run.stderr, &manifest) && run.stderr.contains("damaged"),
        "expected an error naming the damaged manifest {}\n{run}",
        manifest.display()
    );
    assert_same("BACKUP", &before, &snapshot(&env.dst)?)
}

#[test]
fn tree_digest_of_fixture_equals_seed_directory_checksum() -> TestResult {
    let env = Env::new()?;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let expected = fs::read_to_string(fixtures.join("checksums.txt"))?
        .lines()
        .find_map(|l| l.strip_suffix("  ./").map(str::to_owned))
        .ok_or_else(|| fail("no whole-tree line in checksums.txt"))?;

    let tree = fixtures.join("tree");
    let run = env.oneway(&[&"--once", &"--versioned", &tree, &env.dst])?;

    run.expect_code(0)?;
    let manifest = manifest_of(&env, "_1")?;
    ensure!(
        hex(&manifest.digest) == expected,
        "tree digest {} differs from the seed's directory checksum {expected}",
        hex(&manifest.digest)
    );
    assert_trees_equal(&tree, &env.dst.join("_1"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A tree big enough that building a version takes a while: many small files and one of a few
/// MiB, all with fixed mtimes.
fn big_tree(s: &Path, generation: u32) -> TestResult {
    for d in 0..20 {
        for f in 0..100 {
            let rel = format!("d{d:02}/f{f:03}.txt");
            let body = format!(
                "{rel} generation {}\n",
                if f % 7 == 0 { generation } else { 0 }
            );
            set_mtime(&write(s, &rel, body)?, T0 + i64::from(f), 0)?;
        }
    }
    let big: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ generation as u8)
        .collect();
    set_mtime(&write(s, "big.bin", big)?, T0, 0)?;
    Ok(())
}

/// Whether a version is being built in `vdir` right now.
fn building(vdir: &Path) -> Res<bool> {
    Ok(fs::read_dir(vdir)?
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with(".building-")))
}

#[test]
fn sigkill_during_rotation_leaves_old_or_new_versions_never_a_mix() -> TestResult {
    let env = Env::new()?;
    big_tree(&env.src, 0)?;
    versioned(&env, &[])?.expect_code(0)?;
    big_tree(&env.src, 1)?;
    versioned(&env, &[])?.expect_code(0)?;
    let mut previous = snapshot(&env.dst.join("_0"))?;
    let mut latest = snapshot(&env.dst.join("_1"))?;

    let mut outcomes = Vec::new();
    for (round, delay_ms) in [0u64, 5, 20, 50, 100, 400].into_iter().enumerate() {
        let generation = 2 + round as u32;
        big_tree(&env.src, generation)?;
        let wanted = snapshot(&env.src)?;

        let mut child = env.spawn(&[&"--once", &"--versioned", &env.src, &env.dst])?;
        // Wait for the build of the new version to start, then let it run a while.
        let deadline = Instant::now() + WAIT_TIMEOUT;
        while !building(&env.dst)? && child.try_wait()?.is_none() {
            ensure!(Instant::now() < deadline, "no version build started");
            thread::sleep(Duration::from_millis(1));
        }
        thread::sleep(Duration::from_millis(delay_ms));
        let mid_build = building(&env.dst)?;
        let finished = child.try_wait()?.is_some();
        child.kill()?;

        let now = (
            snapshot(&env.dst.join("_0"))?,
            snapshot(&env.dst.join("_1"))?,
        );
        let old = now == (previous.clone(), latest.clone());
        let new = now == (latest.clone(), wanted.clone());
        ensure!(
            old || new,
            "after SIGKILL {delay_ms} ms into a build the versions are neither the old pair nor \
             the new one"
        );
        let outcome = match (finished, mid_build, new) {
            (true, _, _) => "finished",
            (false, true, _) => "mid-build",
            (false, false, true) => "new",
            (false, false, false) => "old",
        };
        outcomes.push((delay_ms, outcome));

        let run = versioned(&env, &[])?;
        run.expect_code(0)?;
        assert_same(
            "_0 after the rerun",
            &latest,
            &snapshot(&env.dst.join("_0"))?,
        )?;
        assert_same(
            "_1 after the rerun",
            &wanted,
            &snapshot(&env.dst.join("_1"))?,
        )?;
        let leftovers: Vec<String> = fs::read_dir(&env.dst)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".building-") || n.contains("tmp"))
            .collect();
        ensure!(
            leftovers.is_empty(),
            "leftovers after the rerun: {leftovers:?}"
        );
        previous = latest;
        latest = wanted;
    }
    eprintln!("kill outcomes (delay ms, state seen): {outcomes:?}");
    // The rounds must really have interrupted some builds, or the test proved nothing.
    ensure!(
        outcomes.iter().any(|(_, o)| *o == "mid-build"),
        "no kill landed while a version was being built: {outcomes:?}"
    );
    Ok(())
}

/// Runs a versioned pass that SPEC §8 refuses: exit 2, the refusal on stderr in the one format
/// every pass gives (`refused: …; run with --force if this is intended`), nothing changed.
fn expect_versioned_refusal(env: &Env, message: &str) -> TestResult {
    let before = env.snapshot_all()?;
    let run = versioned(env, &[])?;
    run.expect_code(2)?;
    ensure!(
        run.stderr.lines().any(|line| line.ends_with(message)),
        "expected a stderr line ending with {message:?}\n{run}"
    );
    assert_same(
        "a refused versioned pass changed the disk",
        &before,
        &env.snapshot_all()?,
    )
}

#[test]
fn empty_source_makes_no_version_unless_forced() -> TestResult {
    let env = Env::new()?;
    build_tree(&env.src)?;
    versioned(&env, &[])?.expect_code(0)?;
    let held = manifest_of(&env, "_1")?.items.len();
    fs::remove_dir_all(&env.src)?;
    fs::create_dir(&env.src)?;

    expect_versioned_refusal(
        &env,
        &format!(
            "refused: SOURCE {} is empty while the latest version holds {held} entries (an \
             unmounted drive looks like this); run with --force if this is intended",
            env.src.canonicalize()?.display()
        ),
    )?;

    versioned(&env, &["--force"])?.expect_code(0)?;
    ensure!(
        manifest_of(&env, "_1")?.items.is_empty() && !manifest_of(&env, "_0")?.items.is_empty(),
        "--force did not make an empty latest version"
    );
    Ok(())
}

#[test]
fn version_without_most_files_of_the_latest_is_refused_unless_forced() -> TestResult {
    let env = Env::new()?;
    build_tree(&env.src)?;
    versioned(&env, &[])?.expect_code(0)?;
    // Four files and a link: three of the five go.
    for rel in ["a.txt", "b.txt", "link"] {
        fs::remove_file(env.src.join(rel))?;
    }

    expect_versioned_refusal(
        &env,
        &format!(
            "refused: the pass would delete 3 of the 5 files of the latest version in {} (more \
             than half); run with --force if this is intended",
            env.dst.canonicalize()?.display()
        ),
    )?;

    versioned(&env, &["--force"])?.expect_code(0)?;
    assert_trees_equal(&env.src, &env.dst.join("_1"))
}

/// A version's root takes SOURCE root's mode and time: a private SOURCE keeps private versions
/// (other users cannot read a 0700 SOURCE's files through its versions).
#[test]
fn a_private_source_keeps_private_versions() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new()?;
    build_tree(&env.src)?;
    chmod(&env.src, 0o700)?;
    set_mtime(&env.src, T0 + 20, 7)?;

    versioned(&env, &[])?.expect_code(0)?;

    let root = fs::metadata(resolved(&env, "_1")?)?;
    ensure!(
        root.permissions().mode() & 0o7777 == 0o700,
        "the latest version of a 0700 SOURCE has mode {:o}",
        root.permissions().mode() & 0o7777
    );
    ensure!(
        filetime::FileTime::from_last_modification_time(&root)
            == filetime::FileTime::from_unix_time(T0 + 20, 7),
        "the latest version's root does not have SOURCE root's time"
    );
    Ok(())
}
