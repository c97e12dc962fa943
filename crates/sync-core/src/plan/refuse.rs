//! The refusals of SPEC §8, once for every pass: a side that holds nothing where the pass's
//! reference (the other side, the last sync, the latest version) holds entries, and a pass that
//! would delete more than half of a side's files. Each pass counts what it would do; the rule
//! and the message are here ([`Refusal`], the fault they give, lives with the others in
//! [`crate::error`]).

use std::path::Path;

pub use crate::error::Refusal;

/// Refuses a pass over `role` at `root`, which holds nothing (`empty`), while `reference`
/// holds `held` entries; nothing with `force`.
pub fn empty_side(
    force: bool,
    (role, root): (&'static str, &Path),
    empty: bool,
    reference: &'static str,
    held: u64,
) -> Result<(), Refusal> {
    if force || !empty || held == 0 {
        return Ok(());
    }
    Err(Refusal::EmptySide {
        role,
        root: root.to_path_buf(),
        reference,
        held,
    })
}

/// Refuses a pass that would delete more than half of the `total` files of `role` at `root`;
/// nothing with `force`.
pub fn mass_deletion(
    force: bool,
    (role, root): (&'static str, &Path),
    removed: u64,
    total: u64,
) -> Result<(), Refusal> {
    if force || removed * 2 <= total {
        return Ok(());
    }
    Err(Refusal::MassDeletion {
        role,
        root: root.to_path_buf(),
        removed,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one format every pass's refusal is printed in.
    #[test]
    fn refusals_share_one_message_format() {
        let root = Path::new("/mnt/usb");
        assert_eq!(
            empty_side(false, ("SOURCE", root), true, "BACKUP", 3)
                .unwrap_err()
                .to_string(),
            "refused: SOURCE /mnt/usb is empty while BACKUP holds 3 entries (an unmounted drive \
             looks like this); run with --force if this is intended"
        );
        assert_eq!(
            mass_deletion(false, ("BACKUP", root), 3, 4)
                .unwrap_err()
                .to_string(),
            "refused: the pass would delete 3 of the 4 files of BACKUP /mnt/usb (more than \
             half); run with --force if this is intended"
        );
    }

    #[test]
    fn force_half_and_nothing_held_let_a_pass_through() {
        let root = Path::new("/r");
        assert!(empty_side(true, ("SOURCE", root), true, "BACKUP", 3).is_ok());
        assert!(empty_side(false, ("SOURCE", root), true, "BACKUP", 0).is_ok());
        assert!(empty_side(false, ("SOURCE", root), false, "BACKUP", 3).is_ok());
        assert!(mass_deletion(false, ("BACKUP", root), 2, 4).is_ok());
        assert!(mass_deletion(true, ("BACKUP", root), 4, 4).is_ok());
        assert!(mass_deletion(false, ("BACKUP", root), 3, 5).is_err());
    }
}
