//! A faithful copy in both directions (issue 21): `twoway` carries owners, extended attributes
//! and ACLs, hard links, sparse files, FIFOs and devices, and the roots' own metadata, either
//! way; it merges a change of metadata on one side with a change of content on the other, and
//! counts a field both sides changed differently as a conflict. Each test checks the result
//! the way `rsync -aHAXSn --numeric-ids --checksum --itemize-changes` would, both sides against
//! each other.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::util::*;

/// A pass that must end cleanly: exit 0, no error, no conflict.
fn clean(run: &Run) -> TestResult {
    run.expect_code(0)?;
    let summary = run.summary()?;
    ensure!(
        summary.errors == 0 && summary.conflicts == Some(0),
        "expected no error and no conflict, got {summary:?}\n{run}"
    );
    Ok(())
}

/// A twoway fixture whose SOURCE holds the rich tree, synced once into BACKUP.
fn synced_rich_tree() -> Res<Env> {
    let env = Env::twoway()?;
    rich_tree(&env.src)?;
    clean(&env.once(&[])?)?;
    Ok(env)
}

fn mode_of(path: &Path) -> Res<u32> {
    Ok(fs::symlink_metadata(path)?.permissions().mode() & 0o7777)
}

/// A first sync into an empty BACKUP makes it, root included, what rsync calls a copy of the
/// rich SOURCE (owners, setuid, attributes, ACLs, hard links, holes, FIFO, device); the next
/// pass finds nothing to do.
#[test]
fn first_sync_into_an_empty_backup_is_faithful() -> TestResult {
    let env = Env::twoway()?;
    rich_tree(&env.src)?;
    let run = env.once(&[])?;
    clean(&run)?;
    expect_faithful("BACKUP after a first sync", &env.src, &env.dst, &run)?;
    let again = env.once(&[])?;
    clean(&again)?;
    ensure!(
        again.summary()?.operations == 0,
        "a second pass found something to do\n{again}"
    );
    expect_faithful("BACKUP after a second pass", &env.src, &env.dst, &again)
}

/// The other direction: the rich tree in BACKUP, SOURCE empty. An empty side on a first pass
/// is no refusal (there is no last sync that held anything), and the root that holds
/// something gives its metadata.
#[test]
fn first_sync_into_an_empty_source_is_faithful() -> TestResult {
    let env = Env::twoway()?;
    rich_tree(&env.dst)?;
    let run = env.once(&[])?;
    clean(&run)?;
    expect_faithful("SOURCE after a first sync", &env.dst, &env.src, &run)?;
    let again = env.once(&[])?;
    clean(&again)?;
    ensure!(
        again.summary()?.operations == 0,
        "a second pass found something to do\n{again}"
    );
    expect_faithful("SOURCE after a second pass", &env.dst, &env.src, &again)
}

/// `chmod 600` on SOURCE and an edit of the same file in BACKUP do not collide: both sides end
/// with BACKUP's content and SOURCE's mode, and no conflict is counted. (Before, the content
/// won and took its old mode with it.)
#[test]
fn a_mode_change_and_an_edit_on_the_other_side_are_both_kept() -> TestResult {
    let env = synced_rich_tree()?;
    let (s, d) = (&env.src, &env.dst);
    chmod(&s.join("root.txt"), 0o600)?;
    write(d, "root.txt", "edited in BACKUP\n")?;
    set_mtime(&d.join("root.txt"), T0, 0)?;
    let run = env.once(&[])?;
    clean(&run)?;
    run.expect("INFO", "replaced root.txt in SOURCE")?;
    for side in [s, d] {
        ensure!(
            read(&side.join("root.txt"))? == b"edited in BACKUP\n"
                && mode_of(&side.join("root.txt"))? == 0o600,
            "{} does not hold the edit with the new mode\n{run}",
            side.display()
        );
    }
    expect_faithful("both sides after the merge", s, d, &run)
}

/// Different modes on both sides are one conflict: logged with the losing mode, counted, and
/// settled by `--conflict` (here BACKUP's mode on both sides).
#[test]
fn different_modes_on_both_sides_are_one_conflict_the_policy_settles() -> TestResult {
    let env = synced_rich_tree()?;
    let (s, d) = (&env.src, &env.dst);
    chmod(&s.join("root.txt"), 0o600)?;
    chmod(&d.join("root.txt"), 0o640)?;
    let run = env.once(&[&"--conflict", &"backup"])?;
    run.expect_code(0)?;
    ensure!(
        run.summary()?.conflicts == Some(1),
        "expected one conflict\n{run}"
    );
    run.expect(
        "WARNING",
        "conflict on root.txt: both sides changed its mode: kept the BACKUP mode (backup); the \
         SOURCE mode 0600 is replaced on both sides",
    )?;
    for side in [s, d] {
        ensure!(
            mode_of(&side.join("root.txt"))? == 0o640,
            "{} does not have BACKUP's mode\n{run}",
            side.display()
        );
    }
    expect_faithful("both sides after the conflict", s, d, &run)
}

/// A change of metadata alone is a modification, and a modification beats a deletion: the
/// file deleted in BACKUP comes back with SOURCE's new mode. (Before, the deletion won.)
#[test]
fn a_metadata_change_beats_a_deletion() -> TestResult {
    let env = synced_rich_tree()?;
    let (s, d) = (&env.src, &env.dst);
    chmod(&s.join("theirs/own.txt"), 0o600)?;
    fs::remove_file(d.join("theirs/own.txt"))?;
    let run = env.once(&[])?;
    clean(&run)?;
    run.expect("INFO", "copied theirs/own.txt to BACKUP")?;
    ensure!(
        mode_of(&d.join("theirs/own.txt"))? == 0o600,
        "the file came back without its new mode\n{run}"
    );
    expect_faithful("both sides after the deletion lost", s, d, &run)
}

/// An extended attribute changed in BACKUP reaches SOURCE without a copy of the content.
#[test]
fn an_xattr_change_in_backup_reaches_source() -> TestResult {
    let env = synced_rich_tree()?;
    let (s, d) = (&env.src, &env.dst);
    let before = inode(&s.join("attrs/tagged.txt"))?;
    set_xattr(
        &d.join("attrs/tagged.txt"),
        "user.origin",
        b"changed in BACKUP",
    )?;
    let run = env.once(&[])?;
    clean(&run)?;
    run.expect("INFO", "updated metadata of attrs/tagged.txt in SOURCE")?;
    ensure!(
        xattrs_of(&s.join("attrs/tagged.txt"))?.get("user.origin")
            == Some(&b"changed in BACKUP".to_vec())
            && inode(&s.join("attrs/tagged.txt"))? == before,
        "the attribute did not reach SOURCE's file in place\n{run}"
    );
    expect_faithful("both sides after the attribute", s, d, &run)
}

/// A change of owner in SOURCE reaches BACKUP, and so does a change of the root's own mode
/// and owner: the archive tells which side's root changed.
#[test]
fn an_owner_change_in_source_and_a_root_change_reach_backup() -> TestResult {
    let env = synced_rich_tree()?;
    let (s, d) = (&env.src, &env.dst);
    std::os::unix::fs::lchown(s.join("root.txt"), Some(NOBODY), Some(NOBODY))?;
    std::os::unix::fs::lchown(s, Some(0), Some(0))?;
    chmod(s, 0o700)?;
    let run = env.once(&[])?;
    clean(&run)?;
    run.expect("INFO", "updated metadata of root.txt in BACKUP")?;
    run.expect("INFO", "updated metadata of . in BACKUP")?;
    let (file, root) = (fs::metadata(d.join("root.txt"))?, fs::metadata(d)?);
    ensure!(
        (file.uid(), file.gid()) == (NOBODY, NOBODY)
            && (root.uid(), root.gid(), root.mode() & 0o7777) == (0, 0, 0o700),
        "the owners or the root's mode did not reach BACKUP\n{run}"
    );
    expect_faithful("both sides after the owner changes", s, d, &run)
}

/// Names that share an inode in BACKUP share one in SOURCE: two new names of one new file,
/// and a new name given to a file both sides held already.
#[test]
fn a_hard_link_group_made_in_backup_reaches_source_as_one_inode() -> TestResult {
    let env = synced_rich_tree()?;
    let (s, d) = (&env.src, &env.dst);
    write(d, "new/one.txt", "one inode, two new names\n")?;
    fs::hard_link(d.join("new/one.txt"), d.join("new/two.txt"))?;
    fs::hard_link(d.join("root.txt"), d.join("more/root-again.txt"))?;
    let run = env.once(&[])?;
    clean(&run)?;
    let same = |a: &str, b: &str| -> Res<bool> { Ok(inode(&s.join(a))? == inode(&s.join(b))?) };
    ensure!(
        same("new/one.txt", "new/two.txt")? && same("root.txt", "more/root-again.txt")?,
        "names of one BACKUP inode are separate files in SOURCE\n{run}"
    );
    expect_faithful("both sides after the links", s, d, &run)?;
    let again = env.once(&[])?;
    clean(&again)?;
    ensure!(
        again.summary()?.operations == 0,
        "a second pass found something to do\n{again}"
    );
    Ok(())
}

/// A FIFO made in BACKUP is made in SOURCE as a FIFO (never opened: nobody writes to it).
#[test]
fn a_fifo_made_in_backup_reaches_source_as_a_fifo() -> TestResult {
    let env = synced_rich_tree()?;
    let (s, d) = (&env.src, &env.dst);
    mkfifo(&d.join("more/new-pipe"))?;
    let run = env.once(&[])?;
    clean(&run)?;
    run.expect("INFO", "created fifo more/new-pipe in SOURCE")?;
    ensure!(
        fs::symlink_metadata(s.join("more/new-pipe"))?
            .file_type()
            .is_fifo(),
        "SOURCE's copy is not a FIFO\n{run}"
    );
    expect_faithful("both sides after the FIFO", s, d, &run)
}

/// A mode change of a file with three names is one change of one inode: BACKUP's inode is
/// given it once (three steps on one inode would find it changed after the first).
#[test]
fn a_mode_change_of_a_hard_linked_file_is_carried_once() -> TestResult {
    let env = synced_rich_tree()?;
    let (s, d) = (&env.src, &env.dst);
    chmod(&s.join("links/first.txt"), 0o600)?;
    let run = env.once(&[])?;
    clean(&run)?;
    ensure!(
        run.operations().len() == 1 && mode_of(&d.join("more/third.txt"))? == 0o600,
        "expected one metadata update of the shared inode\n{run}"
    );
    expect_faithful("both sides after the mode change", s, d, &run)
}

/// A name split from its group in SOURCE, with a mode of its own, is split in BACKUP too:
/// giving it its mode there in place would give it to the names it no longer shares with.
/// (The directory's time is set back in SOURCE: BACKUP's, which the split's copy moves, must
/// be set back too.)
#[test]
fn a_name_split_from_a_hard_link_group_is_split_on_the_other_side() -> TestResult {
    let env = synced_rich_tree()?;
    let (s, d) = (&env.src, &env.dst);
    let second = s.join("links/second.txt");
    let bytes = read(&second)?;
    let mtime = fs::metadata(&second)?.mtime();
    let dir_mtime = fs::metadata(s.join("links"))?.mtime();
    fs::remove_file(&second)?;
    write(s, "links/second.txt", &bytes)?;
    chmod(&second, 0o600)?;
    set_mtime(&second, mtime, 0)?;
    set_mtime(&s.join("links"), dir_mtime, 0)?;
    let run = env.once(&[])?;
    clean(&run)?;
    let inode_in = |rel: &str| inode(&d.join(rel));
    ensure!(
        inode_in("links/second.txt")? != inode_in("links/first.txt")?
            && inode_in("links/first.txt")? == inode_in("more/third.txt")?
            && mode_of(&d.join("links/first.txt"))? == 0o644,
        "BACKUP's links do not follow SOURCE's split\n{run}"
    );
    expect_faithful("both sides after the split", s, d, &run)
}

/// Run by a user who may not make devices: the pass says, once and at its end, what it could
/// not make, and does not record the device as synced, so that the next pass tries again
/// rather than taking BACKUP's lack of it for a deletion (which would remove SOURCE's).
#[test]
fn a_device_an_unprivileged_run_cannot_make_is_said_and_never_taken_for_deleted() -> TestResult {
    let mut env = Env::twoway()?;
    rich_tree(&env.src)?;
    env.run_as_nobody()?;
    for pass in ["first", "second"] {
        let run = env.once(&[])?;
        run.expect_code(0)?;
        let kept = fs::symlink_metadata(env.src.join("null"))
            .is_ok_and(|m| m.file_type().is_char_device());
        ensure!(
            kept && !env.dst.join("null").exists(),
            "after the {pass} pass SOURCE's device is gone or BACKUP has one\n{run}"
        );
        run.expect(
            "WARNING",
            "1 devices, sockets or FIFOs could not be created (only root may)",
        )?;
    }
    Ok(())
}

/// Two separate files of the same bytes and metadata in `d/` of SOURCE, synced once: BACKUP
/// holds them as two inodes too.
fn synced_identical_pair() -> Res<Env> {
    let env = Env::twoway()?;
    for name in ["d/a.txt", "d/b.txt"] {
        write(&env.src, name, "the same bytes\n")?;
        set_mtime(&env.src.join(name), T0, 0)?;
    }
    set_mtime(&env.src.join("d"), T0, 0)?;
    clean(&env.once(&[])?)?;
    Ok(env)
}

/// `ln -f d/a.txt d/b.txt`, leaving the directory's time as it was.
fn link_over(root: &Path) -> TestResult {
    fs::remove_file(root.join("d/b.txt"))?;
    fs::hard_link(root.join("d/a.txt"), root.join("d/b.txt"))?;
    set_mtime(&root.join("d"), T0, 0)
}

/// `ln -f a b` in SOURCE after a sync of two separate identical files (issue 21): BACKUP's
/// `a` and `b` become one inode as well, by a hard link, with no copy of the content. (Before,
/// a change of link structure alone was not carried, and the sides differed for ever.)
#[test]
fn a_link_made_between_identical_files_reaches_backup_without_a_copy() -> TestResult {
    let env = synced_identical_pair()?;
    let (s, d) = (&env.src, &env.dst);
    link_over(s)?;
    let run = env.once(&[])?;
    clean(&run)?;
    run.expect("INFO", "hard-linked d/b.txt to d/a.txt in BACKUP")?;
    ensure!(
        run.summary()?.operations == 1 && run.operations().is_empty(),
        "expected one hard link and nothing else (no copy)\n{run}"
    );
    ensure!(
        inode(&d.join("d/a.txt"))? == inode(&d.join("d/b.txt"))?,
        "BACKUP's names are still two inodes\n{run}"
    );
    expect_faithful("BACKUP after the link", s, d, &run)
}

/// A linked pair split in BACKUP (`b` replaced by a separate file of the same bytes and
/// metadata) is split in SOURCE too, by a copy of BACKUP's `b`; `a` keeps its inode.
#[test]
fn a_linked_pair_split_in_backup_is_split_in_source() -> TestResult {
    let env = synced_identical_pair()?;
    let (s, d) = (&env.src, &env.dst);
    link_over(s)?;
    clean(&env.once(&[])?)?;
    let kept = inode(&s.join("d/a.txt"))?;
    fs::remove_file(d.join("d/b.txt"))?;
    write(d, "d/b.txt", "the same bytes\n")?;
    set_mtime(&d.join("d/b.txt"), T0, 0)?;
    set_mtime(&d.join("d"), T0, 0)?;
    let run = env.once(&[])?;
    clean(&run)?;
    ensure!(
        run.operations() == ["replaced d/b.txt in SOURCE"],
        "expected one split of d/b.txt in SOURCE\n{run}"
    );
    ensure!(
        inode(&s.join("d/b.txt"))? != kept && inode(&s.join("d/a.txt"))? == kept,
        "SOURCE's names still share an inode, or a.txt lost its own\n{run}"
    );
    expect_faithful("SOURCE after the split", d, s, &run)
}

/// Once a link is carried, the archive records the group (`H <name> <first name>`) and the
/// next pass has nothing to do: neither side's inodes change.
#[test]
fn a_carried_link_is_recorded_and_the_next_pass_does_nothing() -> TestResult {
    let env = synced_identical_pair()?;
    let (s, d) = (&env.src, &env.dst);
    link_over(s)?;
    clean(&env.once(&[])?)?;
    let archive = fs::read_to_string(env.archive()?)?;
    ensure!(
        archive.lines().any(|l| l == "H d/b.txt d/a.txt"),
        "the archive does not record the group:\n{archive}"
    );
    let before = (inodes(s)?, inodes(d)?);
    let again = env.once(&[])?;
    clean(&again)?;
    ensure!(
        again.summary()?.operations == 0 && (inodes(s)?, inodes(d)?) == before,
        "a pass after the link found something to do\n{again}"
    );
    expect_faithful("both sides after a pass with nothing to do", s, d, &again)
}

/// Both sides change the links of the same names differently (SOURCE links `a` and `b`,
/// BACKUP `b` and `c`): no content differs, so nothing is lost whichever is kept; `--conflict`
/// picks the side (SOURCE for `newer`), and a warning says so.
#[test]
fn links_changed_differently_on_both_sides_follow_the_conflict_side() -> TestResult {
    for (policy, kept, apart) in [("newer", ["a", "b"], "c"), ("backup", ["b", "c"], "a")] {
        let env = Env::twoway()?;
        let (s, d) = (&env.src, &env.dst);
        for name in ["a", "b", "c"] {
            write(s, format!("d/{name}.txt"), "the same bytes\n")?;
            set_mtime(&s.join(format!("d/{name}.txt")), T0, 0)?;
        }
        clean(&env.once(&[])?)?;
        for (root, (from, to)) in [(s, ("a", "b")), (d, ("b", "c"))] {
            fs::remove_file(root.join(format!("d/{to}.txt")))?;
            fs::hard_link(
                root.join(format!("d/{from}.txt")),
                root.join(format!("d/{to}.txt")),
            )?;
            set_mtime(&root.join("d"), T0, 0)?;
        }
        let run = env.once(&[&"--conflict", &policy])?;
        clean(&run)?;
        let winner = if policy == "backup" {
            "BACKUP"
        } else {
            "SOURCE"
        };
        run.expect(
            "WARNING",
            &format!("hard links of d/b.txt changed on both sides: kept the {winner} ones (no content differs)"
            ),
        )?;
        for side in [s, d] {
            let at = |name: &str| inode(&side.join(format!("d/{name}.txt")));
            ensure!(
                at(kept[0])? == at(kept[1])? && at(apart)? != at(kept[0])?,
                "{}: expected {kept:?} linked and {apart} apart ({policy})\n{run}",
                side.display()
            );
        }
        expect_faithful("both sides after the links", s, d, &run)?;
    }
    Ok(())
}

/// An archive written before link groups were recorded (`twoway-archive 1`, no `H` lines)
/// counts no change of structure: the pass that reads it leaves each side's links alone and
/// records the groups both sides hold; a link that only one side has is carried the next pass.
#[test]
fn an_archive_without_link_groups_changes_no_links_then_carries_one_sides() -> TestResult {
    let env = synced_identical_pair()?;
    let (s, d) = (&env.src, &env.dst);
    let path = env.archive()?;
    let text = fs::read_to_string(&path)?;
    ensure!(
        text.starts_with("twoway-archive 2\n"),
        "the archive is not of version 2:\n{text}"
    );
    fs::write(
        &path,
        text.replacen("twoway-archive 2", "twoway-archive 1", 1),
    )?;
    link_over(s)?;
    let run = env.once(&[])?;
    clean(&run)?;
    ensure!(
        run.summary()?.operations == 0 && inode(&d.join("d/a.txt"))? != inode(&d.join("d/b.txt"))?,
        "a pass reading an archive without link groups changed links\n{run}"
    );
    let text = fs::read_to_string(&path)?;
    ensure!(
        text.starts_with("twoway-archive 2\n") && !text.contains("\nH "),
        "the archive was not rewritten with the groups both sides hold (none):\n{text}"
    );
    let next = env.once(&[])?;
    clean(&next)?;
    next.expect("INFO", "hard-linked d/b.txt to d/a.txt in BACKUP")?;
    expect_faithful("BACKUP after the link", s, d, &next)
}
