//! `envoy-xl image` and `envoy-xl check`: Envoy images as an admin sees them — the catalog,
//! the space each image and snapshot takes, and whether an image is whole.
//!
//! The operations run in envoyd (through its image admin socket, where each image has its one
//! owner); this module turns their outcomes into tables and one-line messages. The formatting
//! is pure so that tests check it.

use envoy::image::admin::{ImageSummary, Outcome};
use envoy::image::check::Report;
use envoy::image::usage::Usage;

use crate::storage::{align, human_bytes};

/// The first 16 hex digits of a root: enough to tell roots apart in a table.
fn short(root: &str) -> &str {
    &root[..root.len().min(16)]
}

/// The `envoy-xl image list` table.
pub fn format_list(images: &[ImageSummary]) -> String {
    if images.is_empty() {
        return "no images\n".into();
    }
    let mut rows = vec![
        ["IMAGE", "SNAPSHOTS", "FILES", "SIZE", "ROOT"]
            .map(String::from)
            .to_vec(),
    ];
    for i in images {
        let snaps: Vec<String> = i.snapshots.iter().map(u64::to_string).collect();
        rows.push(vec![
            i.name.clone(),
            if snaps.is_empty() {
                "-".into()
            } else {
                snaps.join(",")
            },
            i.contents.files.to_string(),
            human_bytes(i.contents.logical),
            short(&i.root).to_owned(),
        ]);
    }
    align(&rows)
}

/// The `envoy-xl image du` table: each image (its current state and snapshots together), then
/// each of its snapshots; UNIQUE is what deleting it and a GC would give back.
pub fn format_usage(usage: &[Usage]) -> String {
    if usage.is_empty() {
        return "no images\n".into();
    }
    let mut rows = vec![
        [
            "IMAGE",
            "FILES",
            "LOGICAL",
            "REFERENCED",
            "UNIQUE",
            "SHARED",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let mut unreadable = 0;
    for u in usage {
        let name = match u.snapshot {
            None => u.image.clone(),
            Some(n) => format!("  {}@{n}", u.image),
        };
        rows.push(vec![
            name,
            u.contents.files.to_string(),
            human_bytes(u.contents.logical),
            human_bytes(u.referenced),
            human_bytes(u.unique),
            human_bytes(u.shared),
        ]);
        unreadable += u.unreadable;
    }
    let mut out = align(&rows);
    if unreadable > 0 {
        out.push_str(&format!(
            "warning: {unreadable} objects could not be read or sized and are not counted; run envoy-xl check\n"
        ));
    }
    out
}

/// `envoy-xl check`'s output: every problem on its own line, then a summary line.
pub fn format_check(r: &Report) -> String {
    let mut out = String::new();
    for p in &r.problems {
        out.push_str(&format!("{p}\n"));
    }
    let verdict = match r.problems.len() {
        0 => "OK".to_owned(),
        1 => "1 problem".to_owned(),
        n => format!("{n} problems"),
    };
    out.push_str(&format!(
        "check {}: {} ({}): {} objects ({}) verified, {} inodes: {verdict}\n",
        r.image,
        match r.trees.len() {
            1 => "1 tree".to_owned(),
            n => format!("{n} trees"),
        },
        r.trees.join(", "),
        r.objects,
        human_bytes(r.bytes),
        r.inodes,
    ));
    out
}

/// The one line that reports an operation done (tables for list, du and check).
pub fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Created { name } => format!("image {name} created"),
        Outcome::Snapshot { name, n, root } => {
            format!("snapshot {name}@{n} taken (root {})", short(root))
        }
        Outcome::Forked { source, new } => format!("image {new} forked from {source}"),
        Outcome::Removed { trees } => format!(
            "removed {}; the space nothing else shares is reclaimed by the next envoy-xl storage gc",
            trees.join(", ")
        ),
        Outcome::List { images } => format_list(images).trim_end().to_owned(),
        Outcome::Usage { usage } => format_usage(usage).trim_end().to_owned(),
        Outcome::Checked { report } => format_check(report).trim_end().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy::image::check::Problem;
    use envoy::image::usage::Contents;

    #[test]
    fn list_and_du_tables() {
        let images = vec![
            ImageSummary {
                name: "vm1".into(),
                root: "ab".repeat(32),
                snapshots: vec![1, 2],
                contents: Contents {
                    files: 3,
                    dirs: 1,
                    logical: 3 << 20,
                },
            },
            ImageSummary {
                name: "vm2".into(),
                root: "cd".repeat(32),
                snapshots: vec![],
                contents: Contents::default(),
            },
        ];
        let t = format_list(&images);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "IMAGE  SNAPSHOTS  FILES  SIZE     ROOT");
        assert_eq!(
            lines[1],
            "vm1    1,2        3      3.0 MiB  abababababababab"
        );
        assert_eq!(
            lines[2],
            "vm2    -          0      0 B      cdcdcdcdcdcdcdcd"
        );
        assert_eq!(format_list(&[]), "no images\n");
        let u = |snapshot, unique, unreadable| Usage {
            image: "vm1".into(),
            snapshot,
            contents: Contents {
                files: 1,
                dirs: 1,
                logical: 1 << 20,
            },
            objects: 20,
            referenced: 2 << 20,
            unique,
            shared: (2 << 20) - unique,
            unreadable,
        };
        let t = format_usage(&[u(None, 1 << 20, 0), u(Some(1), 0, 2)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "IMAGE    FILES  LOGICAL  REFERENCED  UNIQUE   SHARED"
        );
        assert_eq!(
            lines[1],
            "vm1      1      1.0 MiB  2.0 MiB     1.0 MiB  1.0 MiB"
        );
        assert_eq!(
            lines[2],
            "  vm1@1  1      1.0 MiB  2.0 MiB     0 B      2.0 MiB"
        );
        assert!(lines[3].starts_with("warning: 2 objects"), "{t}");
    }

    #[test]
    fn check_output_lists_problems_then_a_verdict() {
        let mut r = Report {
            image: "vm1".into(),
            trees: vec!["vm1".into(), "vm1@1".into()],
            objects: 12,
            bytes: 3 << 20,
            inodes: 9,
            problems: vec![],
        };
        assert_eq!(
            format_check(&r),
            "check vm1: 2 trees (vm1, vm1@1): 12 objects (3.0 MiB) verified, 9 inodes: OK\n"
        );
        r.problems.push(Problem {
            tree: "vm1@1".into(),
            path: Some("/etc/motd".into()),
            ino: Some(7),
            object: None,
            what: "block 0 missing".into(),
        });
        let t = format_check(&r);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "vm1@1: /etc/motd (inode 7): block 0 missing");
        assert!(lines[1].ends_with("9 inodes: 1 problem"), "{t}");
    }
}
