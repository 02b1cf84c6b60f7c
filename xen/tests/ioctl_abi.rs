//! The gntdev, gntalloc and evtchn ioctl ABI as Rust declares it, checked against Linux's own
//! headers.
//!
//! Compiles a small C program against libxen-dev's copies of `include/uapi/xen/gntdev.h`,
//! `gntalloc.h` and `evtchn.h` (`/usr/include/xen/sys/`), runs it, and compares the ioctl
//! numbers, struct sizes, field offsets and flags it prints with
//! `envoy_xen::{grant, evtchn}::abi`. A wrong number here
//! would reach the real devices as an `ENOTTY` at best, or as the wrong ioctl at worst. Missing
//! headers or compiler fail the test with the package to install: never a silent skip.

use std::collections::HashMap;
use std::mem::offset_of;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use envoy_xen::evtchn::abi as ev;
use envoy_xen::grant::abi as gnt;

const HEADERS: [&str; 3] = [
    "/usr/include/xen/sys/gntdev.h",
    "/usr/include/xen/sys/gntalloc.h",
    "/usr/include/xen/sys/evtchn.h",
];

const PROBE: &str = r#"
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/ioctl.h>
typedef uint16_t domid_t; /* evtchn.h uses it without defining it */
#include <xen/sys/gntdev.h>
#include <xen/sys/gntalloc.h>
#include <xen/sys/evtchn.h>

#define P(x) printf("%s %lu\n", #x, (unsigned long)(x))

int main(void) {
    P(IOCTL_GNTDEV_MAP_GRANT_REF);
    P(IOCTL_GNTDEV_UNMAP_GRANT_REF);
    P(sizeof(struct ioctl_gntdev_grant_ref));
    P(offsetof(struct ioctl_gntdev_grant_ref, domid));
    P(offsetof(struct ioctl_gntdev_grant_ref, ref));
    P(sizeof(struct ioctl_gntdev_map_grant_ref));
    P(offsetof(struct ioctl_gntdev_map_grant_ref, count));
    P(offsetof(struct ioctl_gntdev_map_grant_ref, index));
    P(offsetof(struct ioctl_gntdev_map_grant_ref, refs));
    P(sizeof(struct ioctl_gntdev_unmap_grant_ref));
    P(offsetof(struct ioctl_gntdev_unmap_grant_ref, index));
    P(offsetof(struct ioctl_gntdev_unmap_grant_ref, count));

    P(IOCTL_GNTALLOC_ALLOC_GREF);
    P(IOCTL_GNTALLOC_DEALLOC_GREF);
    P(GNTALLOC_FLAG_WRITABLE);
    P(sizeof(struct ioctl_gntalloc_alloc_gref));
    P(offsetof(struct ioctl_gntalloc_alloc_gref, domid));
    P(offsetof(struct ioctl_gntalloc_alloc_gref, flags));
    P(offsetof(struct ioctl_gntalloc_alloc_gref, count));
    P(offsetof(struct ioctl_gntalloc_alloc_gref, index));
    P(offsetof(struct ioctl_gntalloc_alloc_gref, gref_ids));
    P(sizeof(((struct ioctl_gntalloc_alloc_gref *)0)->domid));
    P(sizeof(((struct ioctl_gntalloc_alloc_gref *)0)->flags));
    P(sizeof(struct ioctl_gntalloc_dealloc_gref));
    P(offsetof(struct ioctl_gntalloc_dealloc_gref, index));
    P(offsetof(struct ioctl_gntalloc_dealloc_gref, count));

    P(IOCTL_EVTCHN_BIND_INTERDOMAIN);
    P(IOCTL_EVTCHN_BIND_UNBOUND_PORT);
    P(sizeof(struct ioctl_evtchn_bind_unbound_port));
    P(offsetof(struct ioctl_evtchn_bind_unbound_port, remote_domain));
    P(IOCTL_EVTCHN_UNBIND);
    P(IOCTL_EVTCHN_NOTIFY);
    P(sizeof(struct ioctl_evtchn_bind_interdomain));
    P(offsetof(struct ioctl_evtchn_bind_interdomain, remote_domain));
    P(offsetof(struct ioctl_evtchn_bind_interdomain, remote_port));
    P(sizeof(struct ioctl_evtchn_unbind));
    P(offsetof(struct ioctl_evtchn_unbind, port));
    P(sizeof(struct ioctl_evtchn_notify));
    P(offsetof(struct ioctl_evtchn_notify, port));
    return 0;
}
"#;

/// What the C compiler says, by expression (as printed by `P`); compiled once per run.
fn c_facts() -> &'static HashMap<String, u64> {
    static FACTS: OnceLock<HashMap<String, u64>> = OnceLock::new();
    FACTS.get_or_init(probe)
}

fn probe() -> HashMap<String, u64> {
    for header in HEADERS {
        assert!(
            Path::new(header).exists(),
            "{header} is missing: install the Debian package libxen-dev \
             (`apt-get install libxen-dev`) to check the ioctl ABI against Linux's headers"
        );
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ioctl_abi");
    std::fs::create_dir_all(&dir).unwrap();
    let (source, binary) = (dir.join("probe.c"), dir.join("probe"));
    std::fs::write(&source, PROBE).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=gnu11", "-Wall", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run the C compiler `{cc}`: {e}: install the Debian package gcc \
                 (`apt-get install gcc`), or point CC at a C compiler"
            )
        });
    assert!(
        out.status.success(),
        "`{cc}` could not compile the probe against libxen-dev's headers \
         (is the Debian package libxen-dev installed and complete?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&binary).output().unwrap();
    assert!(run.status.success(), "the probe failed: {run:?}");
    String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').expect("`name value` lines");
            (name.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// Compare each `(C expression, Rust value)` pair, reporting every mismatch at once.
fn check(facts: &HashMap<String, u64>, expected: &[(&str, u64)]) {
    let wrong: Vec<String> = expected
        .iter()
        .filter_map(|(name, rust)| match facts.get(*name) {
            Some(c) if c == rust => None,
            Some(c) => Some(format!("{name}: C says {c:#x}, Rust says {rust:#x}")),
            None => Some(format!("{name}: not printed by the probe")),
        })
        .collect();
    assert!(wrong.is_empty(), "ABI mismatch:\n{}", wrong.join("\n"));
}

#[test]
fn gntdev_ioctls_match_linux() {
    check(
        c_facts(),
        &[
            (
                "IOCTL_GNTDEV_MAP_GRANT_REF",
                gnt::IOCTL_GNTDEV_MAP_GRANT_REF as u64,
            ),
            (
                "IOCTL_GNTDEV_UNMAP_GRANT_REF",
                gnt::IOCTL_GNTDEV_UNMAP_GRANT_REF as u64,
            ),
            (
                "sizeof(struct ioctl_gntdev_grant_ref)",
                size_of::<gnt::GrantRef>() as u64,
            ),
            (
                "offsetof(struct ioctl_gntdev_grant_ref, domid)",
                offset_of!(gnt::GrantRef, domid) as u64,
            ),
            (
                "offsetof(struct ioctl_gntdev_grant_ref, ref)",
                offset_of!(gnt::GrantRef, gref) as u64,
            ),
            (
                "sizeof(struct ioctl_gntdev_map_grant_ref)",
                size_of::<gnt::MapGrantRef>() as u64,
            ),
            (
                "offsetof(struct ioctl_gntdev_map_grant_ref, count)",
                offset_of!(gnt::MapGrantRef, count) as u64,
            ),
            (
                "offsetof(struct ioctl_gntdev_map_grant_ref, index)",
                offset_of!(gnt::MapGrantRef, index) as u64,
            ),
            (
                "offsetof(struct ioctl_gntdev_map_grant_ref, refs)",
                offset_of!(gnt::MapGrantRef, refs) as u64,
            ),
            (
                "sizeof(struct ioctl_gntdev_unmap_grant_ref)",
                size_of::<gnt::UnmapGrantRef>() as u64,
            ),
            (
                "offsetof(struct ioctl_gntdev_unmap_grant_ref, index)",
                offset_of!(gnt::UnmapGrantRef, index) as u64,
            ),
            (
                "offsetof(struct ioctl_gntdev_unmap_grant_ref, count)",
                offset_of!(gnt::UnmapGrantRef, count) as u64,
            ),
        ],
    );
}

#[test]
fn gntalloc_ioctls_match_linux() {
    check(
        c_facts(),
        &[
            (
                "IOCTL_GNTALLOC_ALLOC_GREF",
                gnt::IOCTL_GNTALLOC_ALLOC_GREF as u64,
            ),
            (
                "IOCTL_GNTALLOC_DEALLOC_GREF",
                gnt::IOCTL_GNTALLOC_DEALLOC_GREF as u64,
            ),
            ("GNTALLOC_FLAG_WRITABLE", gnt::GNTALLOC_FLAG_WRITABLE.into()),
            (
                "sizeof(struct ioctl_gntalloc_alloc_gref)",
                size_of::<gnt::AllocGref>() as u64,
            ),
            (
                "offsetof(struct ioctl_gntalloc_alloc_gref, domid)",
                offset_of!(gnt::AllocGref, domid) as u64,
            ),
            (
                "offsetof(struct ioctl_gntalloc_alloc_gref, flags)",
                offset_of!(gnt::AllocGref, flags) as u64,
            ),
            (
                "offsetof(struct ioctl_gntalloc_alloc_gref, count)",
                offset_of!(gnt::AllocGref, count) as u64,
            ),
            (
                "offsetof(struct ioctl_gntalloc_alloc_gref, index)",
                offset_of!(gnt::AllocGref, index) as u64,
            ),
            (
                "offsetof(struct ioctl_gntalloc_alloc_gref, gref_ids)",
                offset_of!(gnt::AllocGref, gref_ids) as u64,
            ),
            (
                "sizeof(((struct ioctl_gntalloc_alloc_gref *)0)->domid)",
                size_of::<u16>() as u64,
            ),
            (
                "sizeof(((struct ioctl_gntalloc_alloc_gref *)0)->flags)",
                size_of::<u16>() as u64,
            ),
            (
                "sizeof(struct ioctl_gntalloc_dealloc_gref)",
                size_of::<gnt::DeallocGref>() as u64,
            ),
            (
                "offsetof(struct ioctl_gntalloc_dealloc_gref, index)",
                offset_of!(gnt::DeallocGref, index) as u64,
            ),
            (
                "offsetof(struct ioctl_gntalloc_dealloc_gref, count)",
                offset_of!(gnt::DeallocGref, count) as u64,
            ),
        ],
    );
}

#[test]
fn evtchn_ioctls_match_linux() {
    check(
        c_facts(),
        &[
            (
                "IOCTL_EVTCHN_BIND_INTERDOMAIN",
                ev::IOCTL_EVTCHN_BIND_INTERDOMAIN as u64,
            ),
            (
                "IOCTL_EVTCHN_BIND_UNBOUND_PORT",
                ev::IOCTL_EVTCHN_BIND_UNBOUND_PORT as u64,
            ),
            (
                "sizeof(struct ioctl_evtchn_bind_unbound_port)",
                size_of::<ev::BindUnboundPort>() as u64,
            ),
            (
                "offsetof(struct ioctl_evtchn_bind_unbound_port, remote_domain)",
                offset_of!(ev::BindUnboundPort, remote_domain) as u64,
            ),
            ("IOCTL_EVTCHN_UNBIND", ev::IOCTL_EVTCHN_UNBIND as u64),
            ("IOCTL_EVTCHN_NOTIFY", ev::IOCTL_EVTCHN_NOTIFY as u64),
            (
                "sizeof(struct ioctl_evtchn_bind_interdomain)",
                size_of::<ev::BindInterdomain>() as u64,
            ),
            (
                "offsetof(struct ioctl_evtchn_bind_interdomain, remote_domain)",
                offset_of!(ev::BindInterdomain, remote_domain) as u64,
            ),
            (
                "offsetof(struct ioctl_evtchn_bind_interdomain, remote_port)",
                offset_of!(ev::BindInterdomain, remote_port) as u64,
            ),
            (
                "sizeof(struct ioctl_evtchn_unbind)",
                size_of::<ev::Unbind>() as u64,
            ),
            (
                "offsetof(struct ioctl_evtchn_unbind, port)",
                offset_of!(ev::Unbind, port) as u64,
            ),
            (
                "sizeof(struct ioctl_evtchn_notify)",
                size_of::<ev::Notify>() as u64,
            ),
            (
                "offsetof(struct ioctl_evtchn_notify, port)",
                offset_of!(ev::Notify, port) as u64,
            ),
        ],
    );
}

#[test]
fn the_numbers_are_the_well_known_ones() {
    // Independent of the headers: the values every x86-64/arm64 Xen tool uses (0x184700 is
    // `_IOC(_IOC_NONE, 'G', 0, 24)`), so a broken probe cannot make both sides agree on nonsense.
    if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        assert_eq!(gnt::IOCTL_GNTDEV_MAP_GRANT_REF as u64, 0x18_4700);
        assert_eq!(gnt::IOCTL_GNTDEV_UNMAP_GRANT_REF as u64, 0x10_4701);
        assert_eq!(gnt::IOCTL_GNTALLOC_ALLOC_GREF as u64, 0x18_4705);
        assert_eq!(gnt::IOCTL_GNTALLOC_DEALLOC_GREF as u64, 0x10_4706);
        assert_eq!(ev::IOCTL_EVTCHN_BIND_INTERDOMAIN as u64, 0x08_4501);
        assert_eq!(ev::IOCTL_EVTCHN_BIND_UNBOUND_PORT as u64, 0x04_4502);
        assert_eq!(ev::IOCTL_EVTCHN_UNBIND as u64, 0x04_4503);
        assert_eq!(ev::IOCTL_EVTCHN_NOTIFY as u64, 0x04_4504);
    }
}
