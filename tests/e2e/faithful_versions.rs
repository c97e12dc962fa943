//! A faithful copy (issue 21) in versions and restores: a version holds what rsync
//! -aHAXS --numeric-ids would copy of SOURCE (owners, extended attributes and ACLs, hard
//! links, sparse files, FIFOs and devices, the root's own metadata); a change of metadata alone
//! makes a new version; versions share a file only where nothing could tell the two apart; and
//! a restore brings all of it back. Checked the way `rsync -aHAXSn --numeric-ids --checksum
//! --itemize-changes` would.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::util::*;

/// `oneway --once --versioned SOURCE BACKUP`.
fn versioned(env: &Env) -> Res<Run> {
    env.once(&[&"--versioned"])
}

/// The directory a public version name (`_0`, `_1`) resolves to.
fn version(env: &Env, name: &str) -> Res<PathBuf> {
    fs::canonicalize(env.dst.join(name)).context(|| format!("resolve version {name}"))
}

/// Fails unless the version `name` holds what its manifest records (its hard links included).
fn expect_verified(env: &Env, name: &str) -> TestResult {
    let dir = version(env, name)?;
    let mut manifest = dir.clone().into_os_string();
    manifest.push(".manifest");
    let manifest = versioning::Manifest::read(Path::new(&manifest))?;
    let problems = versioning::verify(&dir, &manifest)?;
    ensure!(problems.is_empty(), "{name} does not verify: {problems:?}");
    Ok(())
}

/// Fails unless `run` made a new latest version.
fn expect_new_version(what: &str, run: &Run) -> TestResult {
    run.expect_code(0)?;
    ensure!(
        run.lines()
            .iter()
            .any(|l| l.message.starts_with("created version _1 ")),
        "{what}: no new version was made\n{run}"
    );
    Ok(())
}

/// The bytes `path` takes on disk.
fn allocated(path: &Path) -> Res<u64> {
    Ok(fs::symlink_metadata(path)
        .context(|| format!("stat {}", path.display()))?
        .blocks()
        * 512)
}

/// The first version of a tree with everything in it is, for rsync, that tree (its root
/// included), its sparse file still sparse; the next pass finds nothing changed.
#[test]
fn latest_version_of_a_rich_tree_is_faithful_to_source() -> TestResult {
    let env = Env::new()?;
    rich_tree(&env.src)?;
    let run = versioned(&env)?;
    expect_new_version("the first pass", &run)?;
    let latest = version(&env, "_1")?;
    expect_faithful("the latest version", &env.src, &latest, &run)?;
    let taken = allocated(&latest.join("disk.img"))?;
    ensure!(
        taken < 1 << 20,
        "the version's copy of a sparse file takes {taken} bytes on disk\n{run}"
    );
    let again = versioned(&env)?;
    again.expect_code(0)?;
    ensure!(
        again
            .lines()
            .iter()
            .any(|l| l.message.starts_with("no change since the latest version")),
        "an unchanged rich tree made a new version\n{again}"
    );
    Ok(())
}

/// A change of mode, owner, extended attribute, ACL, a directory's mode or the root's mode
/// alone makes a new version, faithful to SOURCE, while the previous one keeps what was
/// there before. (The digest that decided once saw content only: a `chmod 600` never
/// reached a version, and a restore brought the old mode back.)
#[test]
fn a_metadata_only_change_makes_a_new_faithful_version() -> TestResult {
    let env = Env::new()?;
    rich_tree(&env.src)?;
    versioned(&env)?.expect_code(0)?;
    let s = &env.src;
    let mode = |p: &Path| -> Res<u32> { Ok(fs::symlink_metadata(p)?.mode() & 0o7777) };
    let uid = |p: &Path| -> Res<u32> { Ok(fs::symlink_metadata(p)?.uid()) };
    let acl =
        |p: &Path| -> Res<Option<Vec<u8>>> { Ok(xattrs_of(p)?.remove("system.posix_acl_access")) };
    let origin = |p: &Path| -> Res<Option<Vec<u8>>> { Ok(xattrs_of(p)?.remove("user.origin")) };

    chmod(&s.join("root.txt"), 0o600)?;
    let run = versioned(&env)?;
    expect_new_version("chmod", &run)?;
    expect_faithful("the version after a chmod", s, &version(&env, "_1")?, &run)?;
    let old = mode(&version(&env, "_0")?.join("root.txt"))?;
    ensure!(
        old == 0o644,
        "_0/root.txt has mode {old:o}, not the old 644"
    );

    std::os::unix::fs::lchown(s.join("theirs/own.txt"), Some(0), Some(0))?;
    let run = versioned(&env)?;
    expect_new_version("chown", &run)?;
    expect_faithful("the version after a chown", s, &version(&env, "_1")?, &run)?;
    let old = uid(&version(&env, "_0")?.join("theirs/own.txt"))?;
    ensure!(
        old == NOBODY,
        "_0/theirs/own.txt belongs to {old}, not the old owner"
    );

    set_xattr(&s.join("attrs/tagged.txt"), "user.origin", b"changed")?;
    let run = versioned(&env)?;
    expect_new_version("setxattr", &run)?;
    expect_faithful(
        "the version after a setxattr",
        s,
        &version(&env, "_1")?,
        &run,
    )?;
    let old = origin(&version(&env, "_0")?.join("attrs/tagged.txt"))?;
    ensure!(
        old.as_deref() == Some(&b"rich tree"[..]),
        "_0/attrs/tagged.txt lost its old attribute: {old:?}"
    );

    let before = acl(&s.join("attrs/acl.txt"))?;
    set_acl(&s.join("attrs/acl.txt"), false, &acl_for(0))?;
    let run = versioned(&env)?;
    expect_new_version("setfacl", &run)?;
    expect_faithful(
        "the version after a setfacl",
        s,
        &version(&env, "_1")?,
        &run,
    )?;
    let old = acl(&version(&env, "_0")?.join("attrs/acl.txt"))?;
    ensure!(old == before, "_0/attrs/acl.txt lost its old ACL");

    chmod(&s.join("links"), 0o700)?;
    let run = versioned(&env)?;
    expect_new_version("chmod of a directory", &run)?;
    expect_faithful(
        "the version after a directory's chmod",
        s,
        &version(&env, "_1")?,
        &run,
    )?;

    chmod(s, 0o755)?;
    let run = versioned(&env)?;
    expect_new_version("chmod of the root", &run)?;
    expect_faithful(
        "the version after the root's chmod",
        s,
        &version(&env, "_1")?,
        &run,
    )?;
    let old = mode(&version(&env, "_0")?)?;
    ensure!(old == 0o750, "_0's root has mode {old:o}, not the old 750");
    Ok(())
}

/// A file of a new version shares the inode of the previous version's file at the same path
/// only when content and every carried metadata are equal (rsync's --link-dest rule); two
/// separate files of SOURCE with the same bytes stay two files.
#[test]
fn versions_share_a_file_only_at_the_same_path_when_nothing_differs() -> TestResult {
    let env = Env::new()?;
    let s = &env.src;
    for rel in ["twin-a.txt", "twin-b.txt", "kept.txt", "chmodded.txt"] {
        set_mtime(&write(s, rel, "same bytes\n")?, T0, 0)?;
    }
    versioned(&env)?.expect_code(0)?;
    chmod(&s.join("chmodded.txt"), 0o600)?;
    let run = versioned(&env)?;
    expect_new_version("chmod", &run)?;
    let (old, new) = (version(&env, "_0")?, version(&env, "_1")?);
    for dir in [&old, &new] {
        ensure!(
            inode(&dir.join("twin-a.txt"))? != inode(&dir.join("twin-b.txt"))?,
            "two separate files of SOURCE share an inode in {}",
            dir.display()
        );
    }
    for rel in ["twin-a.txt", "kept.txt"] {
        ensure!(
            inode(&old.join(rel))? == inode(&new.join(rel))?,
            "the unchanged {rel} does not share its inode with the previous version\n{run}"
        );
    }
    ensure!(
        inode(&old.join("chmodded.txt"))? != inode(&new.join("chmodded.txt"))?,
        "a file whose mode changed shares its inode with the previous version\n{run}"
    );
    ensure!(
        inode(&new.join("kept.txt"))? != inode(&old.join("twin-a.txt"))?,
        "a file shares its inode with the previous version's file at another path"
    );
    expect_faithful("the latest version", s, &new, &run)
}

/// Names that share an inode in SOURCE share one in every version; a group that SOURCE
/// splits is split in the next version, while the previous one keeps its group whole.
#[test]
fn hard_links_of_source_are_one_inode_in_each_version() -> TestResult {
    let env = Env::new()?;
    rich_tree(&env.src)?;
    let s = &env.src;
    let group = ["links/first.txt", "links/second.txt", "more/third.txt"];
    let one_inode = |dir: &Path, names: &[&str]| -> Res<bool> {
        let first = inode(&dir.join(names[0]))?;
        Ok(names
            .iter()
            .all(|n| inode(&dir.join(n)).is_ok_and(|i| i == first)))
    };
    let run = versioned(&env)?;
    run.expect_code(0)?;
    ensure!(
        one_inode(&version(&env, "_1")?, &group)?,
        "the three names of one SOURCE inode are not one inode in the version\n{run}"
    );

    // Another file changes: the group, as it was, is shared with the previous version.
    write(s, "root.txt", "edited\n")?;
    let run = versioned(&env)?;
    expect_new_version("an edit", &run)?;
    let (old, new) = (version(&env, "_0")?, version(&env, "_1")?);
    ensure!(
        one_inode(&new, &group)? && inode(&new.join(group[0]))? == inode(&old.join(group[0]))?,
        "an unchanged group is not one inode shared with the previous version\n{run}"
    );

    // `second` becomes a file of its own, with the same bytes, mode and time.
    let bytes = read(&s.join("links/second.txt"))?;
    fs::remove_file(s.join("links/second.txt"))?;
    write(s, "links/second.txt", &bytes)?;
    let mtime = fs::symlink_metadata(s.join("links/first.txt"))?.mtime();
    set_mtime(&s.join("links/second.txt"), mtime, 0)?;
    let run = versioned(&env)?;
    expect_new_version("a hard link split", &run)?;
    let (old, new) = (version(&env, "_0")?, version(&env, "_1")?);
    ensure!(
        one_inode(&new, &["links/first.txt", "more/third.txt"])?
            && !one_inode(&new, &["links/first.txt", "links/second.txt"])?,
        "the latest version's links do not follow SOURCE's\n{run}"
    );
    ensure!(
        one_inode(&old, &group)?,
        "the previous version's group was split\n{run}"
    );
    expect_faithful("the latest version after a split", s, &new, &run)?;
    expect_verified(&env, "_0")?;
    expect_verified(&env, "_1")?;

    // And joins the group again.
    fs::remove_file(s.join("links/second.txt"))?;
    fs::hard_link(s.join("links/first.txt"), s.join("links/second.txt"))?;
    let run = versioned(&env)?;
    expect_new_version("a hard link made", &run)?;
    let new = version(&env, "_1")?;
    ensure!(
        one_inode(&new, &group)?,
        "the names SOURCE joined again are not one inode in the latest version\n{run}"
    );
    expect_faithful("the latest version after a join", s, &new, &run)
}

/// `twoway DIR --restore` of a rich tree brings back what the version holds, as rsync sees
/// it: content, owners, attributes and ACLs, hard links, the sparse file's holes, the FIFO and
/// the device, and the root's own mode, owner and time (once it took the mode DIR had).
#[test]
fn restore_brings_back_a_rich_tree_as_its_version_holds_it() -> TestResult {
    let env = Env::twoway()?;
    let dir = fs::canonicalize(&env.src)?;
    rich_tree(&dir)?;
    let versions = env.root.join("__versions__/src");
    fs::create_dir_all(&versions)?;
    let mut oneway = std::process::Command::new(ONEWAY);
    oneway
        .current_dir(&env.root)
        .env("XDG_CACHE_HOME", &env.cache)
        .arg("--log")
        .arg(env.root.join("versions.log"))
        .args(["--once", "--versioned"])
        .arg(&dir)
        .arg(&versions);
    run_command(oneway, &env.root.join("versions.log"), RUN_TIMEOUT)?.expect_code(0)?;
    let info = serde_json::json!({ "src": dir.to_string_lossy() });
    fs::write(env.root.join(".info.json"), info.to_string())?;
    // DIR's root changes mode and owner, and a file changes, after the version was made.
    write(&dir, "root.txt", "edited after the version\n")?;
    std::os::unix::fs::lchown(&dir, Some(0), Some(0))?;
    chmod(&dir, 0o700)?;

    let run = env.run(&[&dir, &"--restore"])?;
    run.expect_code(0)?;
    let held = fs::canonicalize(versions.join("_1"))?;
    expect_faithful("the restored directory", &held, &dir, &run)?;
    ensure!(
        allocated(&dir.join("disk.img"))? < 1 << 20,
        "the restored sparse file is not sparse\n{run}"
    );
    for rel in ["links/first.txt", "root.txt"] {
        ensure!(
            inode(&dir.join(rel))? != inode(&held.join(rel))?,
            "the restored {rel} shares its inode with the version\n{run}"
        );
    }
    Ok(())
}
