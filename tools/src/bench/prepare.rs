//! `envoy-bench prepare`: build the file tree every workload reads, on the local disk.
//!
//! ```text
//! DIR/meta/dNNN/fNNNNN   --meta-files small files (64 bytes), --per-dir per directory
//! DIR/small/sNNNNN       --small-files files of --small-size bytes (4 KiB)
//! DIR/big                --big-mib MiB
//! DIR/scratch/           empty, mode 0777: create and seqwrite work here
//! ```
//!
//! Every file holds the bench pattern (the word at offset o is o), so `--verify` can check
//! any read. Files already present with the right size are kept: a re-run is quick.

use super::util::fill_pattern;
use anyhow::{Context, Result, bail};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

/// What to create.
pub struct Layout {
    /// Files under `meta/`.
    pub meta_files: u32,
    /// Files per `meta/dNNN` directory.
    pub per_dir: u32,
    /// Files under `small/`.
    pub small_files: u32,
    /// Size of each `small/` file.
    pub small_size: u32,
    /// Size of `big` in MiB.
    pub big_mib: u64,
}

/// Upper bounds, so a typo cannot fill the disk.
const MAX_FILES: u32 = 1_000_000;
const MAX_BIG_MIB: u64 = 64 * 1024;

/// Create (or complete) the tree under `dir`.
pub fn prepare(dir: &Path, l: &Layout) -> Result<()> {
    if l.meta_files > MAX_FILES || l.small_files > MAX_FILES || l.big_mib > MAX_BIG_MIB {
        bail!("at most {MAX_FILES} files per kind and a {MAX_BIG_MIB} MiB big file");
    }
    if l.per_dir == 0 || l.small_size > 64 << 20 {
        bail!("--per-dir must be positive and --small-size at most 64 MiB");
    }
    let t0 = Instant::now();
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let meta = dir.join("meta");
    let mut content = vec![0u8; 64];
    fill_pattern(&mut content, 0);
    for i in 0..l.meta_files {
        let sub = meta.join(format!("d{:03}", i / l.per_dir));
        if i % l.per_dir == 0 {
            fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
        }
        write_if_missing(&sub.join(format!("f{i:05}")), &content)?;
    }

    let small = dir.join("small");
    fs::create_dir_all(&small).with_context(|| format!("creating {}", small.display()))?;
    let mut content = vec![0u8; l.small_size as usize];
    fill_pattern(&mut content, 0);
    for i in 0..l.small_files {
        write_if_missing(&small.join(format!("s{i:05}")), &content)?;
    }

    let scratch = dir.join("scratch");
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    fs::set_permissions(&scratch, fs::Permissions::from_mode(0o777))?;

    let big = dir.join("big");
    let size = l.big_mib << 20;
    if fs::metadata(&big).map(|m| m.len()).ok() != Some(size) {
        let mut f =
            fs::File::create(&big).with_context(|| format!("creating {}", big.display()))?;
        let mut chunk = vec![0u8; 1 << 20];
        for mib in 0..l.big_mib {
            fill_pattern(&mut chunk, mib << 20);
            f.write_all(&chunk)
                .with_context(|| format!("writing {}", big.display()))?;
        }
    }
    println!(
        "envoy-bench: prepared {} ({} meta files, {} small files of {} B, big {} MiB) in {:.1} s",
        dir.display(),
        l.meta_files,
        l.small_files,
        l.small_size,
        l.big_mib,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn write_if_missing(path: &Path, content: &[u8]) -> Result<()> {
    if fs::metadata(path).map(|m| m.len()).ok() == Some(content.len() as u64) {
        return Ok(());
    }
    fs::write(path, content).with_context(|| format!("writing {}", path.display()))
}
