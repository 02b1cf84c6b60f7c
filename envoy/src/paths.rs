//! Where envoyd keeps its state by default, shared by envoyd and the tools that talk to it.

use std::path::{Path, PathBuf};

/// The default state directory: `/var/lib/envoy` as root, else `$XDG_DATA_HOME/envoy`
/// (`~/.local/share/envoy`).
pub fn default_data_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/envoy");
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("envoy")
}

/// The storage service's local admin socket in a state directory.
pub fn storage_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("storage.sock")
}

/// The image service's local admin socket in a state directory (`envoy-xl image`, `envoy-xl
/// check`).
pub fn image_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("images.sock")
}
