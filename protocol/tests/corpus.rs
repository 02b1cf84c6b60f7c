//! Replays the fuzz seed corpus (`fuzz/corpus/decode/`, the byte vectors plus any crashers
//! found by `cargo fuzz`) through the fuzz entry point, so every regression stays fixed
//! without needing cargo-fuzz or a nightly compiler.

use std::path::Path;

#[test]
fn replay_fuzz_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/decode");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no corpus files", dir.display());
    for path in &files {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| envoy_protocol::fuzzing::decode(&data));
        assert!(
            outcome.is_ok(),
            "{} makes the decoder panic",
            path.display()
        );
    }
}
