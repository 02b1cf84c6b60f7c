//! Envoy's Xen platform layer.
//!
//! Grant mapping ([`grant`], `/dev/xen/gntdev`), event channels ([`evtchn`],
//! `/dev/xen/evtchn`) and the Xen 9pfs PV data ring ([`ring`]) — the byte stream a guest's
//! 9pfs frontend and the dom0 backend share, mapped from the frontend's grant refs — plus an
//! in-process simulation of the grant table, event channels and frontend ([`sim`]) behind the
//! same traits, for fast tests without Xen. [`xenstore`] is the client of xenstored (socket or
//! `/dev/xen/xenbus`); [`device`] drives a 9pfs device's xenbus handshake (states in
//! [`xenbus`]) from InitWait to Connected and back, mapping rings and binding ports, and
//! [`doorbell`] makes an event channel awaitable. [`frontend`] is the guest's side of a ring
//! (over `/dev/xen/gntalloc` and `/dev/xen/evtchn`, or the simulation), for tests and the
//! `envoy-xen-frontend` tool. The ring transport the server uses lives in
//! `envoy-transport::xen`.
//!
//! This is the only crate that may use `unsafe` (shared guest memory); every block says why it
//! is sound.

#![deny(missing_docs)]

pub mod device;
pub mod doorbell;
pub mod evtchn;
pub mod frontend;
pub mod grant;
pub mod ring;
pub mod sim;
pub mod xenbus;
pub mod xenstore;
