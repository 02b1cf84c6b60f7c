//! The parts of envoyd that tests drive in-process.

pub mod storage;
pub mod xen;
