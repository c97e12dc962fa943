//! Running a program: the checks and set-up both binaries share ([`startup`], [`roots`],
//! [`lock`], [`logging`]) and the loop that runs a pass at every interval ([`passes`]).

pub mod jobs;
pub mod lock;
pub mod logging;
pub mod passes;
pub mod roots;
pub mod startup;
