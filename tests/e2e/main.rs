//! End-to-end tests: the real binaries on real temporary directories.

mod util;

mod depth;
mod faults;
mod oneway;
mod restore;
mod twoway;
mod versioned;
