//! Deciding what a pass does: the two-way reconcile (pure, property-tested), the hard links
//! kept across it, and the refusals of SPEC §8 that every pass applies before it changes
//! anything.

pub mod links;
pub mod reconcile;
pub mod refuse;
pub mod step;
