//! Acting as the guest's user on the host: per-thread fsuid, fsgid and supplementary groups.
//!
//! The kernel then makes every permission decision itself (and drops CAP_DAC_OVERRIDE, CAP_CHOWN,
//! CAP_FOWNER, CAP_MKNOD... while fsuid is not 0), exactly as for a local process of that user.
//! All three are per-thread on Linux when set with the raw system calls (glibc's `setgroups`
//! would change every thread). Only possible when envoyd runs as root; otherwise every operation
//! runs with envoyd's own identity, which [`CredSwitch::enabled`] reports.

use crate::vfs::Creds;
use rustix::process::Gid;
use std::cell::RefCell;

thread_local! {
    /// What this thread currently acts as (None: envoyd's own identity, root).
    static CURRENT: RefCell<Option<Creds>> = const { RefCell::new(None) };
}

/// Switches the calling thread to a user for the duration of a backend call.
pub struct CredSwitch;

impl CredSwitch {
    /// Whether credential switching is possible (envoyd runs as root).
    pub fn enabled() -> bool {
        static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ROOT.get_or_init(|| rustix::process::geteuid().is_root())
    }

    /// Make this thread act as `creds` (no-op when not running as root). `gid_override`
    /// replaces the fsgid (for creating files with a group the client asked for, which must be
    /// one of the user's groups). Nothing is restored afterwards: the next `enter` on this thread
    /// switches only if the identity differs, which saves six system calls per request when one
    /// user dominates. Every backend call that depends on identity enters first.
    pub fn enter(creds: &Creds, gid_override: Option<u32>) {
        if !Self::enabled() {
            return;
        }
        let mut want = creds.clone();
        if let Some(gid) = gid_override.filter(|g| creds.uid == 0 || creds.in_group(*g)) {
            want.gid = gid;
        }
        CURRENT.with(|cur| {
            let mut cur = cur.borrow_mut();
            let current_is_root = cur.as_ref().is_none_or(|c| c.uid == 0 && c.gid == 0);
            if cur.as_ref() == Some(&want) || (want.uid == 0 && want.gid == 0 && current_is_root) {
                return;
            }
            apply(&want);
            *cur = Some(want);
        });
    }
}

fn apply(c: &Creds) {
    // The thread keeps euid 0, so CAP_SETUID/CAP_SETGID stay effective (only the file-system
    // capabilities follow fsuid): every switch, including back to root, is permitted.
    let groups: Vec<Gid> = c.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    // Per-thread raw setgroups; it cannot fail for a privileged thread with a sane list.
    let _ = rustix::thread::set_thread_groups(&groups);
    // setfsuid/setfsgid report nothing useful; they are per-thread system calls.
    nix::unistd::setfsgid(nix::unistd::Gid::from_raw(c.gid));
    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(c.uid));
}
