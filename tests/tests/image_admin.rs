//! Image administration as a library: the registry's one owner per image (snapshots through
//! it, deletion refused while a tree is in use), `du`'s shared and unique space across
//! snapshots and forks, `check` on whole, damaged and malformed images, and the admin
//! operations' specific errors. (envoy-xl against a real envoyd: dom0-agent/tests/images.rs.)

use std::sync::Arc;

use bytes::Bytes;
use envoy::image::admin::{self, AdminError, Outcome, Request};
use envoy::image::check::{self, Report};
use envoy::image::engine::{BLOCK, Engine, NewNode, ROOT_INO};
use envoy::image::fs::ImageFs;
use envoy::image::inode::{self, Content, Entry};
use envoy::image::objects::Objects;
use envoy::image::registry::{Images, Tree};
use envoy::image::usage::{self, Usage};
use envoy::vfs::{Creds, Errno, FileSystem};
use envoy_objstore::{LocalStore, ObjectId, StoreOptions};

fn open_store(dir: &std::path::Path) -> Arc<LocalStore> {
    Arc::new(LocalStore::open(dir, StoreOptions::default()).unwrap())
}

/// One block of content unique to `seed`.
fn block(seed: u8) -> Vec<u8> {
    (0..BLOCK)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Write `data` at `offset` of the file at `path` (directories and the file created as
/// needed), then close it: committed.
fn write(fs: &ImageFs, path: &[&str], offset: u64, data: &[u8]) {
    let c = Creds::root();
    let (mut dir, _) = fs.attach(&c, "").unwrap();
    let (last, dirs) = path.split_last().unwrap();
    for d in dirs {
        let (steps, err) = fs.walk(&c, &dir, &[d.to_string()]);
        dir = match err {
            None => steps.into_iter().next().unwrap().0,
            Some(_) => {
                fs.mkdir(&c, &dir, d, 0o755, None).unwrap();
                fs.walk(&c, &dir, &[d.to_string()]).0.remove(0).0
            }
        };
    }
    let (steps, err) = fs.walk(&c, &dir, &[last.to_string()]);
    let file = match err {
        None => fs.open(&c, &steps[0].0, libc::O_RDWR).unwrap().0,
        Some(_) => {
            fs.create(&c, &dir, last, libc::O_RDWR, 0o644, None)
                .unwrap()
                .1
        }
    };
    assert_eq!(
        fs.write(&c, &file, offset, &bytes::Bytes::copy_from_slice(data))
            .unwrap(),
        data.len()
    );
}

fn row<'a>(u: &'a [Usage], image: &str, snapshot: Option<u64>) -> &'a Usage {
    u.iter()
        .find(|r| r.image == image && r.snapshot == snapshot)
        .unwrap_or_else(|| panic!("no row {image} {snapshot:?} in {u:#?}"))
}

/// `lo ≤ n ≤ lo + slack`: blocks dominate, tree nodes and roots add a little.
fn about(n: u64, lo: u64, what: &str) {
    let slack = 16 * 1024;
    assert!(
        (lo..=lo + slack).contains(&n),
        "{what}: {n} bytes, expected {lo} plus at most {slack}"
    );
}

/// a: f = 4 blocks, snapshot 1; block 3 changed, snapshot 2; b forks a@2 and adds g. Only a@1
/// holds the old block 3; b shares four blocks with a; a@2 is a's current state (nothing
/// unique). Deleting a leaves b the sole owner of what they shared.
#[test]
fn du_counts_what_each_image_and_snapshot_shares_and_holds_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let images = Images::new(store.clone());
    let a = images.create("a", 0, 0).unwrap();
    let b: Vec<u8> = (0..4u8).flat_map(block).collect();
    write(&a, &["f"], 0, &b);
    assert_eq!(images.snapshot("a", None).unwrap().0, 1);
    write(&a, &["f"], 3 * BLOCK as u64, &block(9));
    assert_eq!(images.snapshot("a", None).unwrap().0, 2);
    drop(a);
    images.fork("a", 2, "b").unwrap();
    write(
        &images.open(&Tree::current("b")).unwrap(),
        &["g"],
        0,
        &block(20),
    );

    // What du reads is the records: the admin operations settle the open images first.
    images.settle(None).unwrap();
    let catalog = images.catalog().unwrap();
    let u = usage::usage(&*store, &catalog, None);
    let blk = BLOCK as u64;
    let ua = row(&u, "a", None);
    assert_eq!((ua.contents.files, ua.contents.logical), (1, 4 * blk));
    about(ua.referenced, 5 * blk, "a referenced");
    about(ua.unique, blk, "a unique (the old block 3)");
    assert_eq!(ua.shared, ua.referenced - ua.unique);
    about(ua.shared, 4 * blk, "a shared with b");
    about(row(&u, "a", Some(1)).unique, blk, "a@1 unique");
    about(row(&u, "a", Some(1)).referenced, 4 * blk, "a@1 referenced");
    assert_eq!(row(&u, "a", Some(2)).unique, 0, "a@2 is a's current state");
    let ub = row(&u, "b", None);
    assert_eq!((ub.contents.files, ub.contents.logical), (2, 5 * blk));
    about(ub.unique, blk, "b unique (g)");
    about(ub.shared, 4 * blk, "b shared with a");
    assert!(u.iter().all(|r| r.unreadable == 0));
    // Rows: each image, then its snapshots; `only` picks one image.
    let order: Vec<(String, Option<u64>)> =
        u.iter().map(|r| (r.image.clone(), r.snapshot)).collect();
    assert_eq!(
        order,
        [
            ("a".into(), None),
            ("a".into(), Some(1)),
            ("a".into(), Some(2)),
            ("b".into(), None)
        ]
    );
    assert_eq!(usage::usage(&*store, &catalog, Some("b")).len(), 1);

    // Deleting a: b alone holds everything it reaches.
    assert_eq!(
        images.remove(&Tree::current("a")).unwrap(),
        [
            Tree::snapshot("a", 1),
            Tree::snapshot("a", 2),
            Tree::current("a")
        ]
    );
    let u = usage::usage(&*store, &images.catalog().unwrap(), None);
    assert_eq!(u.len(), 1);
    about(u[0].unique, 5 * blk, "b unique once a is gone");
    assert_eq!(u[0].shared, 0);
}

fn problems(r: &Report) -> Vec<String> {
    r.problems.iter().map(ToString::to_string).collect()
}

/// A whole image (current state and a snapshot) passes; a deleted block and a corrupted one
/// are reported in both trees, each naming the file that loses data and the object.
#[test]
fn check_passes_a_whole_image_and_names_the_file_of_a_missing_or_corrupt_block() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let images = Images::new(store.clone());
    let fs = images.create("c", 0, 0).unwrap();
    let data: Vec<u8> = (10..13u8).flat_map(block).collect();
    write(&fs, &["dir", "f"], 0, &data);
    write(&fs, &["small"], 0, b"hello");
    let c = Creds::root();
    let (root, _) = fs.attach(&c, "").unwrap();
    let f = fs
        .walk(&c, &root, &["dir".into(), "f".into()])
        .0
        .remove(1)
        .0;
    let small = fs.walk(&c, &root, &["small".into()]).0.remove(0).0;
    fs.link(&c, &root, "hard", &small).unwrap();
    fs.symlink(&c, &root, "l", "dir/f", None).unwrap();
    fs.sync().unwrap();
    images.snapshot("c", Some(1)).unwrap();
    drop((fs, root, f, small));
    let info = images.info("c").unwrap();
    let r = check::check(&*store, &info);
    assert_eq!(problems(&r), Vec::<String>::new());
    assert_eq!(r.trees, ["c", "c@1"]);
    assert!(r.bytes >= 3 * BLOCK as u64 && r.objects >= 6, "{r:?}");

    // Block 1 of /dir/f deleted from the store.
    let gone = ObjectId::of(&block(11));
    assert_eq!(store.delete(&[gone], u64::MAX).unwrap(), 1);
    let r = check::check(&*store, &info);
    let p = problems(&r);
    assert_eq!(p.len(), 2, "{p:#?}");
    for (line, tree) in p.iter().zip(["c", "c@1"]) {
        assert!(
            line.starts_with(&format!("{tree}: /dir/f (inode "))
                && line.contains("block 1 missing")
                && line.contains(&gone.to_string()),
            "{line}"
        );
    }
    assert_eq!(r.problems[0].object, Some(gone));

    // Block 2 corrupted on disk (store closed meanwhile, so nothing is cached).
    let bad = ObjectId::of(&block(12));
    let (path, offset) = store.locate(&bad).unwrap().unwrap();
    drop(images);
    drop(store);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset as usize + 100] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let store = open_store(dir.path());
    let r = check::check(&*store, &info);
    let p = problems(&r);
    assert!(
        p.iter()
            .any(|l| l.starts_with("c: /dir/f") && l.contains("block 2 corrupt")),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|l| l.starts_with("c: /dir/f") && l.contains("block 1 missing"))
    );
    // Shared by both trees: each names it.
    assert!(
        p.iter()
            .any(|l| l.starts_with("c@1: /dir/f") && l.contains("block 2"))
    );
    assert_eq!(p.len(), 4, "{p:#?}");
}

/// Structure that does not hold together: a link count no entry count backs, blocks past the
/// end of a file, an inode no directory names, a tree leaf with its keys out of order, entries
/// naming inodes that do not exist.
#[test]
fn check_reports_link_counts_sizes_and_orphans_that_do_not_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let objects: Arc<dyn Objects> = store.clone();
    let mut e = Engine::format(objects.clone(), 0, 0, 0o755).unwrap();
    let file = NewNode::new(libc::S_IFREG | 0o644, 0, 0);
    let f = e.create(ROOT_INO, "f", &file).unwrap();
    e.write(
        f,
        0,
        &bytes::Bytes::copy_from_slice(&[block(1), block(2)].concat()),
    )
    .unwrap();
    e.tamper(f, |n| {
        n.nlink = 3;
        n.size = 10;
    })
    .unwrap();
    // An inode whose last entry goes while its link count says another remains.
    let o = e.create(ROOT_INO, "o", &file).unwrap();
    e.tamper(o, |n| n.nlink = 2).unwrap();
    e.unlink(ROOT_INO, "o", false).unwrap();
    let d = e
        .create(ROOT_INO, "d", &NewNode::new(libc::S_IFDIR | 0o755, 0, 0))
        .unwrap();
    e.tamper(d, |n| n.nlink = 7).unwrap();
    // A directory whose one tree leaf holds its keys in descending order, naming an inode
    // that does not exist.
    let x = e
        .create(ROOT_INO, "x", &NewNode::new(libc::S_IFDIR | 0o755, 0, 0))
        .unwrap();
    let mut names = [("a", inode::name_key("a")), ("b", inode::name_key("b"))];
    names.sort_by_key(|(_, k)| std::cmp::Reverse(*k));
    let mut leaf = vec![0u8];
    leaf.extend_from_slice(&2u32.to_le_bytes());
    for (name, key) in names {
        let v = inode::encode_entries(&[Entry {
            name: name.into(),
            ino: 999,
            kind: libc::S_IFREG,
        }]);
        leaf.extend_from_slice(&key.to_le_bytes());
        leaf.extend_from_slice(&(v.len() as u32).to_le_bytes());
        leaf.extend_from_slice(&v);
    }
    let tree = objects.put(Bytes::from(leaf), vec![]).unwrap();
    e.tamper(x, |n| {
        n.content = Content::Tree(tree);
        n.size = 2;
    })
    .unwrap();
    let root = e.commit().unwrap();
    objects
        .cas("image/bad", 0, Bytes::copy_from_slice(&root.0), vec![root])
        .unwrap();
    let info = Images::new(objects.clone()).info("bad").unwrap();
    let p = problems(&check::check(&*store, &info));
    let has = |s: &str| p.iter().any(|l| l.contains(s));
    assert!(
        has("bad: /f (inode 2): link count 3 but 1 entries name it"),
        "{p:#?}"
    );
    assert!(
        has("/f (inode 2): block 1 lies past the end of the file (10 bytes)"),
        "{p:#?}"
    );
    assert!(
        has("/f (inode 2): block 0 holds 65536 bytes, more than the file's 10 there"),
        "{p:#?}"
    );
    assert!(has(&format!("inode {o}: orphan")), "{p:#?}");
    assert!(
        has(&format!("inode {o}: link count 1 but 0 entries name it")),
        "{p:#?}"
    );
    assert!(
        has("/d (inode 4): link count 7 but it has 0 subdirectories (expected 2)"),
        "{p:#?}"
    );
    assert!(has("/x (inode 5): key "), "{p:#?}");
    assert!(has(&format!("out of order in tree node {tree}")), "{p:#?}");
    assert!(
        has("/x (inode 5): entry \"a\" names inode 999, which does not exist"),
        "{p:#?}"
    );
    assert!(
        has("/x (inode 5): entry \"b\" names inode 999, which does not exist"),
        "{p:#?}"
    );
    assert_eq!(p.len(), 9, "{p:#?}");
}

/// One owner: a snapshot taken through the registry includes what was written through the
/// same owner and not synced; a tree somebody holds is busy; deleting removes the records
/// (tombstones stay in the store) and the name can be created again.
#[test]
fn the_registry_snapshots_through_the_owner_and_refuses_to_delete_what_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let images = Images::new(store.clone());
    let live = images.create("r", 0, 0).unwrap();
    // Written, file still open: not committed.
    let c = Creds::root();
    let (root, _) = live.attach(&c, "").unwrap();
    let (_, file, _) = live
        .create(&c, &root, "unsynced", libc::O_RDWR, 0o644, None)
        .unwrap();
    live.write(&c, &file, 0, &bytes::Bytes::copy_from_slice(b"not synced"))
        .unwrap();
    assert!(Arc::ptr_eq(
        &live,
        &images.open(&Tree::current("r")).unwrap()
    ));
    let (n, snap_root) = images.snapshot("r", None).unwrap();
    assert_eq!(n, 1);
    let mut e = Engine::open(store.clone() as Arc<dyn Objects>, &snap_root).unwrap();
    let entry = e
        .lookup(ROOT_INO, "unsynced")
        .unwrap()
        .expect("in the snapshot");
    assert_eq!(e.inode(entry.ino).unwrap().size, 10);
    assert_eq!(images.snapshot("r", Some(1)).unwrap_err(), Errno::EEXIST);
    images.snapshot("r", Some(5)).unwrap();

    // In use: the live image (held here) and a snapshot someone opened.
    assert_eq!(
        images.remove(&Tree::current("r")).unwrap_err(),
        Errno::EBUSY
    );
    drop((file, root, live));
    let held = images.open(&Tree::snapshot("r", 5)).unwrap();
    assert_eq!(
        images.remove(&Tree::current("r")).unwrap_err(),
        Errno::EBUSY
    );
    assert_eq!(
        images.remove(&Tree::snapshot("r", 5)).unwrap_err(),
        Errno::EBUSY
    );
    assert_eq!(
        images.remove(&Tree::snapshot("r", 1)).unwrap(),
        [Tree::snapshot("r", 1)]
    );
    drop(held);
    assert_eq!(
        images.remove(&Tree::snapshot("r", 1)).unwrap_err(),
        Errno::ENOENT
    );
    let keys: Vec<u64> = images
        .info("r")
        .unwrap()
        .snapshots
        .keys()
        .copied()
        .collect();
    assert_eq!(keys, [5]);
    images.remove(&Tree::current("r")).unwrap();
    assert_eq!(images.info("r").unwrap_err(), Errno::ENOENT);
    assert!(store.record("image/r").unwrap().is_none());
    assert!(store.record_copy("image/r").unwrap().unwrap().deleted);
    assert_eq!(images.open(&Tree::current("r")).err(), Some(Errno::ENOENT));
    // The name is free again.
    images.create("r", 0, 0).unwrap();
    assert_eq!(images.info("r").unwrap().snapshots.len(), 0);
}

/// Every failure is its own error, with the name it concerns.
#[test]
fn admin_operations_fail_with_specific_errors() {
    let dir = tempfile::tempdir().unwrap();
    let images = Images::new(open_store(dir.path()));
    let run = |r: Request| admin::run(&images, r);
    let create = |name: &str| Request::Create {
        name: name.into(),
        uid: 1000,
        gid: 100,
    };
    assert_eq!(run(create("x")), Ok(Outcome::Created { name: "x".into() }));
    assert_eq!(
        run(create("x")),
        Err(AdminError::ImageExists { image: "x".into() })
    );
    assert_eq!(
        run(create("a/b")),
        Err(AdminError::BadName { name: "a/b".into() })
    );
    let snap = |name: &str, n| Request::Snapshot {
        name: name.into(),
        n,
    };
    assert!(matches!(
        run(snap("x", None)),
        Ok(Outcome::Snapshot { n: 1, .. })
    ));
    assert_eq!(
        run(snap("x", Some(1))),
        Err(AdminError::SnapshotExists { tree: "x@1".into() })
    );
    assert_eq!(
        run(snap("nope", None)),
        Err(AdminError::NoImage {
            image: "nope".into()
        })
    );
    let fork = |s: &str, n: &str| Request::Fork {
        source: s.into(),
        new: n.into(),
    };
    assert_eq!(
        run(fork("x@9", "y")),
        Err(AdminError::NoSnapshot { tree: "x@9".into() })
    );
    assert_eq!(
        run(fork("x", "y")),
        Err(AdminError::BadTarget { target: "x".into() })
    );
    assert_eq!(
        run(fork("x@1", "x")),
        Err(AdminError::ImageExists { image: "x".into() })
    );
    assert!(run(fork("x@1", "y")).is_ok());
    let rm = |t: &str| Request::Rm { target: t.into() };
    assert_eq!(
        run(rm("x@7")),
        Err(AdminError::NoSnapshot { tree: "x@7".into() })
    );
    assert_eq!(
        run(rm("zz")),
        Err(AdminError::NoImage { image: "zz".into() })
    );
    assert_eq!(
        run(rm("x@y")),
        Err(AdminError::BadTarget {
            target: "x@y".into()
        })
    );
    assert_eq!(
        run(Request::Du {
            name: Some("zz".into())
        }),
        Err(AdminError::NoImage { image: "zz".into() })
    );
    assert_eq!(
        run(Request::Check { name: "zz".into() }),
        Err(AdminError::NoImage { image: "zz".into() })
    );
    // The root directory belongs to the uid/gid asked for.
    let fs = images.open(&Tree::current("x")).unwrap();
    let (root, _) = fs.attach(&Creds::root(), "").unwrap();
    let attr = fs.getattr(&Creds::root(), &root, None).unwrap();
    assert_eq!((attr.uid, attr.gid, attr.mode & 0o7777), (1000, 100, 0o755));
    // A list: both images, x with its snapshot.
    let Ok(Outcome::List { images: list }) = run(Request::List) else {
        panic!("list failed")
    };
    let names: Vec<(&str, &[u64])> = list
        .iter()
        .map(|i| (i.name.as_str(), &i.snapshots[..]))
        .collect();
    assert_eq!(names, [("x", &[1u64][..]), ("y", &[][..])]);
    // Outcomes and errors travel as JSON and read back the same.
    use envoy::image::control::{decode_reply, encode_reply};
    for r in [
        Err(AdminError::Busy { tree: "x".into() }),
        Ok(Outcome::Removed {
            trees: vec!["x@1".into(), "x".into()],
        }),
    ] {
        assert_eq!(decode_reply(&encode_reply(&r)).unwrap(), r);
    }
}

/// Trees several levels deep (a directory of thousands of entries, a sparse file of a
/// thousand blocks), changed after commits (entries removed, blocks truncated away), hold
/// together: no false alarm.
#[test]
fn check_finds_nothing_wrong_in_deep_trees_changed_after_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let objects: Arc<dyn Objects> = store.clone();
    let mut e = Engine::format(objects.clone(), 0, 0, 0o755).unwrap();
    let d = e
        .create(ROOT_INO, "d", &NewNode::new(libc::S_IFDIR | 0o755, 0, 0))
        .unwrap();
    let file = NewNode::new(libc::S_IFREG | 0o644, 0, 0);
    for i in 0..3000 {
        e.create(d, &format!("n{i}"), &file).unwrap();
    }
    let sparse = e.create(ROOT_INO, "sparse", &file).unwrap();
    for i in 0..1000u64 {
        e.write(
            sparse,
            i * BLOCK as u64,
            &bytes::Bytes::copy_from_slice(&i.to_le_bytes()),
        )
        .unwrap();
    }
    e.commit().unwrap();
    for i in (0..3000).step_by(3) {
        e.unlink(d, &format!("n{i}"), false).unwrap();
    }
    e.truncate(sparse, 600 * BLOCK as u64 + 1).unwrap();
    e.link(d, "again", sparse).unwrap();
    let root = e.commit().unwrap();
    objects
        .cas("image/deep", 0, Bytes::copy_from_slice(&root.0), vec![root])
        .unwrap();
    let info = Images::new(objects.clone()).info("deep").unwrap();
    let r = check::check(&*store, &info);
    assert_eq!(problems(&r), Vec::<String>::new());
    assert_eq!(r.inodes, 1 + 1 + 2000 + 1);
    // Multi-level: more tree nodes than the directory and the file could fit in one each.
    assert!(r.objects > 601 + 10, "{} objects", r.objects);
}
