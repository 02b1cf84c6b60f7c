//! Envoy's operator and test tools.
//!
//! - [`client`]: an async 9P client (all three dialects, many requests in flight) used by
//!   the integration tests, the `envoy-9p` debug command and benchmarks.
//! - [`xl`]: hot-plugging 9pfs shares into running Xen guests through xenstore, as libxl
//!   writes them (the `envoy-xl` command).
//! - [`storage`]: the object layer's status tables (`envoy-xl storage`).
//! - [`image`]: Envoy images' tables and messages (`envoy-xl image`, `envoy-xl check`).
//! - [`xenfront`]: a 9pfs frontend, correct or hostile, run in a Xen domain against a real
//!   backend through gntalloc and evtchn (the `envoy-xen-frontend` command).
//!
//! The binaries live in `src/bin/`: `envoy-9p` lists, reads, writes and removes files on a
//! running server from the command line; `envoy-xl` attaches, detaches and lists Xen 9pfs
//! devices; `envoy-xen-frontend` plays a device's frontend to test a backend.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod client;
pub mod image;
pub mod storage;
pub mod xenfront;
pub mod xl;

/// Parse the command line of a tool that exits 1 on any failure: on a usage error print it and
/// return the exit code to end with (`--help` and `--version` are not failures: 0).
pub fn parse_args<C: clap::Parser>() -> Result<C, std::process::ExitCode> {
    C::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            std::process::ExitCode::FAILURE
        } else {
            std::process::ExitCode::SUCCESS
        }
    })
}
