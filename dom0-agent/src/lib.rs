//! The parts of envoyd that tests drive in-process.

pub mod xen;
