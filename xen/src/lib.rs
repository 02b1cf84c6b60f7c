//! Envoy's Xen platform layer.
//!
//! So far: event channels ([`evtchn`], simulated with eventfds) and the Xen 9pfs PV data ring
//! ([`ring`]) — the byte stream a guest's 9pfs frontend and the
//! dom0 backend share — over any [`ring::RingMemory`], plus an in-process simulation of the
//! shared pages and of the frontend ([`sim`]) for fast tests without Xen. The real grant mapping
//! (`/dev/xen/gntdev`), event channels (`/dev/xen/evtchn`) and the xenstore client come next,
//! behind the same seams.
//!
//! This is the only crate that may use `unsafe` (shared guest memory); every block says why it
//! is sound.

#![deny(missing_docs)]

pub mod evtchn;
pub mod ring;
pub mod sim;
