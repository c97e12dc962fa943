//! A faithful copy (issue 21): owners, extended attributes and ACLs, hard links, sparse files,
//! FIFOs and devices, and the root's own metadata, in the mirror; checked the way
//! `rsync -aHAXSn --numeric-ids --checksum --itemize-changes` would.

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
