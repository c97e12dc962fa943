//! A faithful copy (issue 21): owners, extended attributes and ACLs, hard links, sparse files,
//! FIFOs and devices, and the root's own metadata, in the mirror; checked the way
//! `rsync -aHAXSn --numeric-ids --checksum --itemize-changes` would.

use std::fs;
use std::os::unix::fs::MetadataExt;

use crate::util::*;

/// A first copy of a tree with everything in it is, for rsync, the same tree; so is the next
/// pass, which has nothing to do.
#[test]
fn mirror_copies_a_rich_tree_as_rsync_would() -> TestResult {
    let env = Env::new()?;
    rich_tree(&env.src)?;
    let run = env.once(&[])?;
    run.expect_code(0)?;
    expect_faithful("BACKUP after a first copy", &env.src, &env.dst, &run)?;
    let again = env.once(&[])?;
    again.expect_code(0)?;
    ensure!(
        again.summary()?.operations == 0,
        "a second pass found something to do\n{again}"
    );
    expect_faithful("BACKUP after a second pass", &env.src, &env.dst, &again)
}

/// A change of owner, mode, extended attribute or ACL alone is carried without copying the
/// content again: BACKUP's file keeps its inode, and each change is one "updated metadata".
#[test]
fn mirror_carries_metadata_changes_without_copying() -> TestResult {
    let env = Env::new()?;
    rich_tree(&env.src)?;
    env.once(&[])?.expect_code(0)?;
    let inodes = inodes(&env.dst)?;
    let (s, d) = (&env.src, &env.dst);
    std::os::unix::fs::lchown(s.join("root.txt"), Some(NOBODY), None)?;
    chmod(&s.join("theirs/own.txt"), 0o600)?;
    set_xattr(&s.join("attrs/tagged.txt"), "user.origin", b"changed")?;
    set_acl(&s.join("attrs/acl.txt"), false, &acl_for(0))?;
    // A link's owner (its own, not its target's).
    std::os::unix::fs::lchown(s.join("theirs/link"), Some(0), Some(0))?;
    let changed = [
        "root.txt",
        "theirs/own.txt",
        "attrs/tagged.txt",
        "attrs/acl.txt",
        "theirs/link",
    ];
    for rel in changed {
        set_mtime(&s.join(rel), 1_600_000_000, 0)?;
    }
    let run = env.once(&[])?;
    run.expect_code(0)?;
    for rel in changed {
        run.expect("INFO", &format!("updated metadata of {rel}"))?;
        ensure!(
            inode(&d.join(rel))? == inodes[&std::path::PathBuf::from(rel)],
            "{rel} was copied again for a metadata change\n{run}"
        );
    }
    ensure!(
        xattrs_of(&d.join("attrs/tagged.txt"))?.get("user.origin") == Some(&b"changed".to_vec()),
        "the changed attribute did not reach BACKUP\n{run}"
    );
    expect_faithful("BACKUP after metadata changes", s, d, &run)
}

/// Names that share an inode in SOURCE share one in BACKUP, and a change that splits them
/// splits them in BACKUP too: no edit of one name may ever reach another there.
#[test]
fn mirror_keeps_hard_links_as_they_are_in_source() -> TestResult {
    let env = Env::new()?;
    rich_tree(&env.src)?;
    env.once(&[])?.expect_code(0)?;
    let (s, d) = (&env.src, &env.dst);
    let same = |a: &str, b: &str| -> Res<bool> { Ok(inode(&d.join(a))? == inode(&d.join(b))?) };
    ensure!(
        same("links/first.txt", "links/second.txt")? && same("links/first.txt", "more/third.txt")?,
        "the three names of one SOURCE inode are not one inode in BACKUP"
    );
    // `second` becomes a file of its own in SOURCE (same bytes): it must in BACKUP too.
    let bytes = read(&s.join("links/second.txt"))?;
    fs::remove_file(s.join("links/second.txt"))?;
    write(s, "links/second.txt", &bytes)?;
    // Two separate files with the same bytes stay two files.
    write(s, "twin-a.txt", "same bytes\n")?;
    write(s, "twin-b.txt", "same bytes\n")?;
    let run = env.once(&[])?;
    run.expect_code(0)?;
    ensure!(
        !same("links/first.txt", "links/second.txt")? && same("links/first.txt", "more/third.txt")?,
        "BACKUP's link structure does not follow SOURCE's\n{run}"
    );
    ensure!(
        !same("twin-a.txt", "twin-b.txt")?,
        "two separate files were linked\n{run}"
    );
    expect_faithful("BACKUP after the links changed", s, d, &run)
}

/// Run by a user without privilege on the same tree: the pass succeeds (exit 0), says once
/// per kind what it could not carry (owners of root's files, the device), and gives no copy
/// it could not give its owner a setuid or setgid bit.
#[test]
fn mirror_without_privilege_carries_what_it_may_and_says_what_it_may_not() -> TestResult {
    let mut env = Env::new()?;
    env.run_as_nobody()?;
    rich_tree(&env.src)?;
    // Root's own setuid program, readable by all.
    write(&env.src, "root-tool", "#!/bin/sh\necho root\n")?;
    chmod(&env.src.join("root-tool"), 0o4755)?;
    let run = env.once(&[])?;
    run.expect_code(0)?;
    let warnings: Vec<String> = run
        .lines()
        .into_iter()
        .filter(|l| l.level == "WARNING")
        .map(|l| l.message.clone())
        .collect();
    for (kind, needle) in [
        ("owners", "belong to another user: only root can give"),
        ("setuid/setgid bits", "setuid or setgid entries"),
        ("devices", "devices, sockets or FIFOs could not be created"),
    ] {
        let n = warnings.iter().filter(|w| w.contains(needle)).count();
        ensure!(
            n == 1,
            "expected one warning about {kind}, found {n}\n{run}"
        );
    }
    ensure!(
        warnings.len() == 3,
        "expected three warnings, one per kind, found {}:\n{}\n{run}",
        warnings.len(),
        warnings.join("\n")
    );
    let copy = fs::symlink_metadata(env.dst.join("root-tool"))?;
    ensure!(
        copy.uid() == NOBODY && copy.mode() & 0o6000 == 0,
        "the user's copy of root's setuid program is {:o}, owned by {}\n{run}",
        copy.mode(),
        copy.uid()
    );
    // What the user may carry, it carries: its own setuid file, attributes, ACLs, links, the
    // FIFO, the sparse file.
    let d = &env.dst;
    ensure!(
        fs::symlink_metadata(d.join("theirs/tool"))?.mode() & 0o7777 == 0o4755,
        "the user's own setuid file lost its bit\n{run}"
    );
    ensure!(
        xattrs_of(&d.join("attrs/tagged.txt"))?.contains_key("user.origin")
            && xattrs_of(&d.join("attrs/acl.txt"))?.contains_key("system.posix_acl_access"),
        "attributes or ACLs missing\n{run}"
    );
    ensure!(
        inode(&d.join("links/first.txt"))? == inode(&d.join("more/third.txt"))?,
        "hard links not kept\n{run}"
    );
    ensure!(kind_of(&d.join("pipe"))? == Some("fifo"), "no FIFO\n{run}");
    ensure!(
        fs::symlink_metadata(d.join("disk.img"))?.blocks() * 512 < 1 << 20,
        "the sparse file lost its holes\n{run}"
    );
    Ok(())
}

/// A pass reads a file's extended attributes only where its stamps moved since the last pass
/// (reading them all would double a pass with nothing to do); a change of an attribute alone
/// moves the change time, and is carried.
#[test]
fn mirror_sees_an_attribute_changed_alone() -> TestResult {
    let env = Env::new()?;
    write(&env.src, "a.txt", "a\n")?;
    write(&env.src, "b.txt", "b\n")?;
    env.once(&[])?.expect_code(0)?;
    env.once(&[])?.expect_code(0)?;
    set_xattr(&env.src.join("a.txt"), "user.tag", b"1")?;
    let run = env.once(&[])?;
    run.expect_code(0)?;
    run.expect("INFO", "updated metadata of a.txt")?;
    ensure!(
        run.summary()?.operations == 1,
        "expected one operation\n{run}"
    );
    ensure!(
        xattrs_of(&env.dst.join("a.txt"))?.get("user.tag") == Some(&b"1".to_vec()),
        "the attribute did not reach BACKUP\n{run}"
    );
    // Removed, too.
    rustix::fs::lremovexattr(env.src.join("a.txt").as_path(), "user.tag")?;
    let run = env.once(&[])?;
    run.expect("INFO", "updated metadata of a.txt")?;
    ensure!(
        xattrs_of(&env.dst.join("a.txt"))?.is_empty(),
        "the removed attribute stayed in BACKUP\n{run}"
    );
    let run = env.once(&[])?;
    ensure!(
        run.summary()?.operations == 0,
        "a last pass did something\n{run}"
    );
    Ok(())
}

/// A BACKUP on a file system that takes no extended attributes (ramfs): the pass copies
/// everything else and says so once, not once per file; exit 0.
#[test]
fn a_backup_that_refuses_attributes_is_one_warning_per_pass() -> TestResult {
    let env = Env::new()?;
    for i in 0..5 {
        let path = write(&env.src, format!("f{i}.txt"), format!("{i}\n"))?;
        set_xattr(&path, "user.n", format!("{i}").as_bytes())?;
    }
    let made = Mounted::mount(&["-t", "ramfs", "ramfs"], &env.dst);
    let name = "a_backup_that_refuses_attributes_is_one_warning_per_pass";
    let Some(_ramfs) = mounted_or_skip(made, "a ramfs", name)? else {
        return Ok(());
    };
    let run = env.once(&[])?;
    run.expect_code(0)?;
    let warnings: Vec<String> = run
        .lines()
        .into_iter()
        .filter(|l| l.level == "WARNING")
        .map(|l| l.message.clone())
        .collect();
    ensure!(
        warnings.len() == 1
            && warnings[0].contains("5 copies could not be given all their extended"),
        "expected one warning for the five files\n{run}"
    );
    for i in 0..5 {
        ensure!(
            read(&env.dst.join(format!("f{i}.txt")))? == format!("{i}\n").as_bytes(),
            "f{i}.txt was not copied\n{run}"
        );
    }
    Ok(())
}

/// A new file in a BACKUP directory with a default ACL inherits an access ACL there; a copy
/// of a SOURCE file that has none must not keep it.
#[test]
fn a_copy_keeps_no_acl_its_original_lacks() -> TestResult {
    let env = Env::new()?;
    write(&env.src, "d/old.txt", "old\n")?;
    env.once(&[])?.expect_code(0)?;
    set_acl(&env.src.join("d"), true, &acl_for(NOBODY))?;
    env.once(&[])?.expect_code(0)?;
    let new = write(&env.src, "d/new.txt", "new\n")?;
    // Created after the default ACL: it inherited one; the user takes it away.
    rustix::fs::lremovexattr(new.as_path(), "system.posix_acl_access")?;
    chmod(&new, 0o644)?;
    let run = env.once(&[])?;
    run.expect_code(0)?;
    ensure!(
        !xattrs_of(&env.dst.join("d/new.txt"))?.contains_key("system.posix_acl_access"),
        "BACKUP's copy kept the ACL its directory gave it\n{run}"
    );
    expect_faithful("BACKUP", &env.src, &env.dst, &run)
}

/// The same for a new directory: it inherits its parent's default ACL, both as its own access
/// and default ACLs; its original may have neither.
#[test]
fn a_new_directory_keeps_no_acl_its_original_lacks() -> TestResult {
    let env = Env::new()?;
    write(&env.src, "d/old.txt", "old\n")?;
    env.once(&[])?.expect_code(0)?;
    set_acl(&env.src.join("d"), true, &acl_for(NOBODY))?;
    env.once(&[])?.expect_code(0)?;
    let sub = env.src.join("d/sub");
    fs::create_dir(&sub)?;
    for name in ["system.posix_acl_access", "system.posix_acl_default"] {
        rustix::fs::lremovexattr(sub.as_path(), name)?;
    }
    chmod(&sub, 0o755)?;
    let run = env.once(&[])?;
    run.expect_code(0)?;
    ensure!(
        xattrs_of(&env.dst.join("d/sub"))?.is_empty(),
        "BACKUP's new directory kept ACLs its parent gave it\n{run}"
    );
    expect_faithful("BACKUP", &env.src, &env.dst, &run)
}

/// `--no-xattrs` leaves attributes and ACLs behind, `--no-group` groups; the rest is carried.
#[test]
fn what_the_options_turn_off_is_left_behind() -> TestResult {
    let env = Env::new()?;
    rich_tree(&env.src)?;
    let run = env.once(&[&"--no-xattrs", &"--no-group"])?;
    run.expect_code(0)?;
    let d = &env.dst;
    ensure!(
        xattrs_of(&d.join("attrs/tagged.txt"))?.is_empty()
            && xattrs_of(&d.join("attrs/acl.txt"))?.is_empty(),
        "--no-xattrs carried attributes or ACLs\n{run}"
    );
    let own = fs::symlink_metadata(d.join("theirs/own.txt"))?;
    ensure!(
        own.uid() == NOBODY && own.gid() == 0,
        "with --no-group, the user's file should keep its owner and get root's group: {}:{}\n{run}",
        own.uid(),
        own.gid()
    );
    // The setgid directory of another group loses its bit: its copy is not of that group.
    ensure!(
        fs::symlink_metadata(d.join("shared"))?.mode() & 0o2000 == 0,
        "a copy not given its group kept the setgid bit\n{run}"
    );
    // Nothing to do the next time: what is not carried is not compared.
    let again = env.once(&[&"--no-xattrs", &"--no-group"])?;
    ensure!(
        again.summary()?.operations == 0,
        "a second pass did something\n{again}"
    );
    Ok(())
}
