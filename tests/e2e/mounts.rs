//! File systems mounted inside a root (issue 20): a drive unmounted between two passes is not
//! taken for its content deleted (mirror, versions, two-way), and `--one-file-system` leaves
//! what is below a mount point alone on both sides. Each test mounts a small tmpfs of its own
//! (the tests run as root); where it cannot, it fails, or says SKIPPED with
//! `ONEWAY_TESTS_ALLOW_SKIP` (see [`mounted_or_skip`]).

use std::fs;
use std::path::Path;

use crate::util::*;

/// A tmpfs over `dir` (made if missing) holding `files`, or `None` if the test is skipped.
fn drive(dir: &Path, files: &[&str], test: &str) -> Res<Option<Mounted>> {
    fs::create_dir_all(dir)?;
    let made = Mounted::tmpfs(dir, "size=4m");
    let Some(mounted) = mounted_or_skip(made, "a tmpfs", &format!("mounts::{test}"))? else {
        return Ok(None);
    };
    for name in files {
        write(dir, name, format!("{name} on the drive\n"))?;
    }
    Ok(Some(mounted))
}

/// Names under `dir`, sorted; none if it is missing.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The three kinds of pass, each over SOURCE holding a drive at `usb` that is unmounted before
/// the second pass: what the drive held stays in BACKUP (and the latest version, and the other
/// side), the pass says why and fails (exit 1, as for a directory it cannot read), and once
/// `--force` says the drive is gone for good, the next pass takes `usb` as it is.
#[test]
fn a_drive_unmounted_inside_source_is_not_taken_for_its_content_deleted() -> TestResult {
    const TEST: &str = "a_drive_unmounted_inside_source_is_not_taken_for_its_content_deleted";
    let on_drive = ["a.txt", "b.txt"];
    for kind in ["mirror", "versioned", "twoway"] {
        let env = if kind == "twoway" {
            Env::twoway()?
        } else {
            Env::new()?
        };
        for name in ["1.txt", "2.txt", "3.txt", "4.txt"] {
            write(&env.src, name, name)?;
        }
        let usb = env.src.join("usb");
        let Some(drive) = drive(&usb, &on_drive, TEST)? else {
            return Ok(());
        };
        let flags: &[&dyn AsRef<std::ffi::OsStr>] = if kind == "versioned" {
            &[&"--versioned"]
        } else {
            &[]
        };
        // Where the drive's files are kept: BACKUP's usb, or the latest version's.
        let kept = |env: &Env| -> Res<Vec<String>> {
            Ok(if kind == "versioned" {
                names(&fs::canonicalize(env.dst.join("_1"))?.join("usb"))
            } else {
                names(&env.dst.join("usb"))
            })
        };
        env.once(flags)?.expect_code(0)?;
        ensure!(
            kept(&env)? == on_drive,
            "{kind}: the first pass did not copy the drive: {:?}",
            kept(&env)?
        );

        drop(drive);
        ensure!(
            names(&usb).is_empty(),
            "{kind}: the unmounted drive shows files"
        );
        let run = env.once(flags)?;
        run.expect_code(1)?;
        ensure!(
            run.lines().iter().any(|l| l.level == "WARNING"
                && l.message
                    .contains("usb was a mount point at the last pass and is not one now")),
            "{kind}: no warning names the unmounted drive\n{run}"
        );
        ensure!(
            kept(&env)? == on_drive,
            "{kind}: the drive's files went from BACKUP when it was unmounted: {:?}\n{run}",
            kept(&env)?
        );
        if kind == "twoway" {
            ensure!(
                names(&usb).is_empty(),
                "twoway copied the drive's files back into the empty mount point: {:?}",
                names(&usb)
            );
        }

        // Gone for good, as the user says.
        let mut forced: Vec<&dyn AsRef<std::ffi::OsStr>> = flags.to_vec();
        forced.push(&"--force");
        env.once(&forced)?.expect_code(0)?;
        ensure!(
            kept(&env)?.is_empty(),
            "{kind}: a forced pass kept the unmounted drive's files: {:?}",
            kept(&env)?
        );
        env.once(flags)?.expect_code(0)?;
    }
    Ok(())
}

/// With `--one-file-system` what is below a mount point inside a root is left alone on both
/// sides, as `--exclude` leaves a path alone: a drive mounted in SOURCE is not copied, and
/// BACKUP's copy of what was there before is not deleted; the mount point itself is kept.
#[test]
fn one_file_system_leaves_what_is_below_a_mount_point_alone_on_both_sides() -> TestResult {
    const TEST: &str = "one_file_system_leaves_what_is_below_a_mount_point_alone_on_both_sides";
    for twoway in [false, true] {
        let env = if twoway { Env::twoway()? } else { Env::new()? };
        write(&env.src, "top.txt", "top")?;
        write(&env.dst, "usb/old.txt", "BACKUP's own")?;
        if twoway {
            // The other side's copy of the mount point's path is plain content of BACKUP's.
            write(&env.dst, "top.txt", "top")?;
        }
        let Some(_drive) = drive(&env.src.join("usb"), &["on-drive.txt"], TEST)? else {
            return Ok(());
        };
        let run = env.once(&[&"--one-file-system", &"--force"])?;
        run.expect_code(0)?;
        let name = if twoway { "twoway" } else { "oneway" };
        ensure!(
            names(&env.dst.join("usb")) == ["old.txt"],
            "{name} -x: BACKUP's usb holds {:?}\n{run}",
            names(&env.dst.join("usb"))
        );
        ensure!(
            names(&env.src.join("usb")) == ["on-drive.txt"],
            "{name} -x: the drive holds {:?}\n{run}",
            names(&env.src.join("usb"))
        );
        ensure!(
            fs::read_to_string(env.dst.join("top.txt"))? == "top",
            "{name} -x: the rest of SOURCE was not copied\n{run}"
        );
        // The short form is rsync's.
        env.once(&[&"-x"])?.expect_code(0)?;
        ensure!(
            names(&env.dst.join("usb")) == ["old.txt"],
            "{name} -x (short): BACKUP's usb holds {:?}",
            names(&env.dst.join("usb"))
        );
    }
    Ok(())
}
