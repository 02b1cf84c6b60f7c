//! The local store against its contract: round trips, refusals, ranges, listing, records,
//! persistence, recovery from torn tails and lost index commits, corruption and quarantine,
//! scrub, delete and compaction (also under concurrent puts and reads), a full disk, and
//! exclusive opens.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use envoy_objstore::{
    LocalStore, ObjectId, PutObject, PutOutcome, Record, ScrubProgress, StoreError, StoreOptions,
};

/// Deterministic pseudo-random content, different per seed.
fn content(seed: u64, size: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(size + 8);
    while v.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(size);
    Bytes::from(v)
}

fn obj(seed: u64, size: usize) -> PutObject {
    PutObject::new(content(seed, size), Vec::new())
}

fn open(dir: &Path) -> LocalStore {
    LocalStore::open(dir, StoreOptions::default()).expect("open store")
}

fn open_with(dir: &Path, f: impl FnOnce(&mut StoreOptions)) -> LocalStore {
    let mut o = StoreOptions::default();
    f(&mut o);
    LocalStore::open(dir, o).expect("open store")
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
        .expect("segments dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs.pop().expect("a segment")
}

fn flip_byte(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open segment");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read byte");
    b[0] ^= 0x40;
    f.write_all_at(&b, offset).expect("write byte");
    f.sync_all().expect("sync");
}

#[test]
fn round_trip_small_large_empty_and_present_on_reput() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    for (seed, size) in [(1, 100), (2, 4 << 20), (3, 0)] {
        let o = obj(seed, size);
        let id = o.id();
        assert_eq!(s.put(o.clone()).expect("put"), PutOutcome::Stored);
        assert_eq!(s.get(&id).expect("get"), o.data());
        assert_eq!(
            s.info(&id).expect("info").expect("present").size,
            size as u64
        );
        assert_eq!(s.put(o).expect("re-put"), PutOutcome::Present);
    }
    assert_eq!(ObjectId::of(b""), obj(3, 0).id());
    let missing = ObjectId::of(b"missing");
    assert!(matches!(s.get(&missing), Err(StoreError::NotFound(id)) if id == missing));
    assert_eq!(s.info(&missing).expect("info"), None);
    assert_eq!(
        s.has(&[obj(1, 100).id(), missing]).expect("has"),
        vec![true, false]
    );

    // put_many: duplicates within one call and mixed refusals, answered in order.
    let a = obj(10, 1000);
    let bad = PutObject::claimed(
        obj(11, 10).id(),
        Bytes::from_static(b"not the content"),
        vec![],
    );
    let r = s.put_many(vec![a.clone(), bad, a.clone(), obj(1, 100)]);
    assert_eq!(r.len(), 4);
    assert_eq!(*r[0].as_ref().expect("a"), PutOutcome::Stored);
    assert!(matches!(r[1], Err(StoreError::HashMismatch { .. })));
    assert_eq!(*r[2].as_ref().expect("dup"), PutOutcome::Present);
    assert_eq!(*r[3].as_ref().expect("old"), PutOutcome::Present);
}

#[test]
fn hash_mismatch_and_too_large_are_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open_with(dir.path(), |o| o.max_object = 1024);
    let claimed = ObjectId::of(b"one thing");
    let r = s.put(PutObject::claimed(
        claimed,
        Bytes::from_static(b"another"),
        vec![],
    ));
    match r {
        Err(StoreError::HashMismatch { claimed: c, actual }) => {
            assert_eq!(c, claimed);
            assert_eq!(actual, ObjectId::of(b"another"));
        }
        other => panic!("expected HashMismatch, got {other:?}"),
    }
    assert_eq!(
        s.has(&[claimed, ObjectId::of(b"another")]).expect("has"),
        vec![false, false]
    );

    let big = obj(1, 2000);
    let big_id = big.id();
    match s.put(big) {
        Err(StoreError::TooLarge { size, max }) => assert_eq!((size, max), (2000, 1024)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(s.has(&[big_id]).expect("has"), vec![false]);
    assert_eq!(
        s.put(obj(2, 1024)).expect("at the limit"),
        PutOutcome::Stored
    );
    let st = s.stats().expect("stats");
    assert_eq!((st.objects, st.bytes), (1, 1024));
}

#[test]
fn ranges_clip_at_the_end_and_refuse_starts_past_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let o = obj(5, 1000);
    let id = o.id();
    s.put(o.clone()).expect("put");
    let (size, b) = s.get_range(&id, 10, 20).expect("range");
    assert_eq!((size, &b[..]), (1000, &o.data()[10..30]));
    let (size, b) = s.get_range(&id, 990, 100).expect("clipped");
    assert_eq!((size, &b[..]), (1000, &o.data()[990..]));
    let (_, b) = s.get_range(&id, 1000, 5).expect("at the end");
    assert!(b.is_empty());
    let (_, b) = s.get_range(&id, 0, u64::MAX).expect("everything");
    assert_eq!(b, o.data());
    match s.get_range(&id, 1001, 1) {
        Err(StoreError::BadRange { offset, size, .. }) => assert_eq!((offset, size), (1001, 1000)),
        other => panic!("expected BadRange, got {other:?}"),
    }
    assert!(matches!(
        s.get_range(&ObjectId::of(b"x"), 0, 1),
        Err(StoreError::NotFound(_))
    ));

    // A large object streamed in ranges reassembles exactly.
    let big = obj(6, 4 << 20);
    s.put(big.clone()).expect("put big");
    let mut got = Vec::new();
    let mut off = 0;
    loop {
        let (size, b) = s.get_range(&big.id(), off, 512 << 10).expect("range");
        assert_eq!(size, 4 << 20);
        if b.is_empty() {
            break;
        }
        off += b.len() as u64;
        got.extend_from_slice(&b);
    }
    assert_eq!(got, big.data()[..]);
}

#[test]
fn list_pages_through_ids_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let mut ids: Vec<ObjectId> = (0..25)
        .map(|i| obj(i, 10 + i as usize))
        .map(|o| {
            let id = o.id();
            s.put(o).expect("put");
            id
        })
        .collect();
    ids.sort();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s.list(after.as_ref(), 10).expect("list");
        assert!(page.len() <= 10);
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(page.into_iter().map(|i| i.id));
    }
    assert_eq!(seen, ids);
    assert!(s.list(None, 0).expect("empty page").is_empty());
    let first = s.list(None, 1).expect("first");
    assert_eq!(first[0].id, ids[0]);
    assert_eq!(
        first[0].size,
        s.info(&ids[0]).expect("info").expect("here").size
    );
}

#[test]
fn refs_are_kept_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let child1 = obj(1, 10);
    let child2 = obj(2, 10);
    let parent = PutObject::new(content(3, 64), vec![child1.id(), child2.id()]);
    {
        let s = open(dir.path());
        s.put_many(vec![child1.clone(), child2.clone(), parent.clone()])
            .into_iter()
            .for_each(|r| {
                r.expect("put");
            });
        assert_eq!(
            s.refs(&parent.id()).expect("refs"),
            vec![child1.id(), child2.id()]
        );
        assert!(s.refs(&child1.id()).expect("refs").is_empty());
        assert!(s.refs(&ObjectId::of(b"nope")).expect("refs").is_empty());
    }
    let s = open(dir.path());
    assert_eq!(
        s.refs(&parent.id()).expect("refs"),
        vec![child1.id(), child2.id()]
    );
}

#[test]
fn records_compare_and_set_and_store_if_newer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let root = ObjectId::of(b"root");
    assert_eq!(s.record("img").expect("record"), None);
    assert_eq!(
        s.cas_record("img", 0, Bytes::from_static(b"v1"), vec![root])
            .expect("create"),
        1
    );
    match s.cas_record("img", 0, Bytes::from_static(b"again"), vec![]) {
        Err(e @ StoreError::Conflict { .. }) => {
            assert_eq!(e.version(), 1);
            assert!(matches!(
                e,
                StoreError::Conflict {
                    expected: 0,
                    current: 1,
                    ..
                }
            ));
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(
        s.cas_record("img", 1, Bytes::from_static(b"v2"), vec![])
            .expect("update"),
        2
    );
    let r = s.record("img").expect("record").expect("exists");
    assert_eq!((r.version, &r.value[..], r.refs.len()), (2, &b"v2"[..], 0));

    let newer = Record {
        version: 5,
        value: Bytes::from_static(b"v5"),
        refs: vec![root],
        deleted: false,
    };
    assert!(s.store_record("img", newer.clone()).expect("newer"));
    assert!(!s.store_record("img", newer.clone()).expect("same"));
    let older = Record {
        version: 3,
        ..newer.clone()
    };
    assert!(!s.store_record("img", older).expect("older"));
    assert!(s.store_record("other", newer.clone()).expect("new name"));
    assert_eq!(s.record("img").expect("record"), Some(newer.clone()));
    let all = s.records().expect("records");
    assert_eq!(
        all.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        vec!["img", "other"]
    );
    assert!(matches!(
        s.cas_record("big", 0, Bytes::from(vec![0u8; 2 << 20]), vec![]),
        Err(StoreError::TooLarge { .. })
    ));
    assert_eq!(s.stats().expect("stats").records, 2);
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.record("img").expect("record"), Some(newer));
}

/// A delete is a compare-and-set that leaves a tombstone: the record is gone for readers and
/// listings, an older replicated copy cannot bring it back, a newer one can, and creating it
/// again continues its versions past the tombstone (so the new record outranks the deletion
/// on every replica).
#[test]
fn deleted_records_leave_tombstones_that_outrank_older_copies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let root = ObjectId::of(b"root");
    s.cas_record("img", 0, Bytes::from_static(b"v1"), vec![root])
        .expect("create");
    s.cas_record("keep", 0, Bytes::from_static(b"k"), vec![])
        .expect("create");
    // A stale expectation, or a record that is not there: Conflict naming the version.
    assert!(matches!(
        s.delete_record("img", 7),
        Err(StoreError::Conflict {
            expected: 7,
            current: 1,
            ..
        })
    ));
    assert!(matches!(
        s.delete_record("nothing", 0),
        Err(StoreError::Conflict { current: 0, .. })
    ));
    assert_eq!(s.delete_record("img", 1).expect("delete"), 2);
    assert_eq!(s.record("img").expect("record"), None);
    assert_eq!(
        s.record_copy("img").expect("copy"),
        Some(Record::tombstone(2))
    );
    let names = |all: Vec<(String, Record)>| all.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    assert_eq!(names(s.records().expect("records")), ["keep"]);
    assert_eq!(names(s.record_copies().expect("copies")), ["img", "keep"]);
    assert!(matches!(
        s.delete_record("img", 0),
        Err(StoreError::Conflict { current: 0, .. })
    ));
    // A stale replica's copy (version 1) does not resurrect it; a newer one would.
    let stale = Record {
        version: 1,
        value: Bytes::from_static(b"v1"),
        refs: vec![root],
        deleted: false,
    };
    assert!(!s.store_record("img", stale.clone()).expect("stale"));
    assert_eq!(s.record("img").expect("record"), None);
    // The tombstone survives a restart.
    drop(s);
    let s = open(dir.path());
    assert_eq!(
        s.record_copy("img").expect("copy"),
        Some(Record::tombstone(2))
    );
    // Created again (expected 0: it is absent): versions go on past the tombstone.
    assert_eq!(
        s.cas_record("img", 0, Bytes::from_static(b"again"), vec![])
            .expect("recreate"),
        3
    );
    assert_eq!(s.record("img").expect("record").map(|r| r.version), Some(3));
    // A tombstone replicated from elsewhere deletes a live copy older than it.
    assert!(s.store_record("keep", Record::tombstone(5)).expect("tomb"));
    assert_eq!(s.record("keep").expect("record"), None);
}

#[test]
fn stats_count_objects_bytes_and_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let st = s.stats().expect("stats");
    assert_eq!(
        (st.objects, st.bytes, st.quarantined, st.records),
        (0, 0, 0, 0)
    );
    assert!(st.fs_total > 0 && st.fs_free > 0 && st.fs_free <= st.fs_total);
    for i in 0..10 {
        s.put(obj(i, 1000)).expect("put");
    }
    s.put(obj(0, 1000)).expect("re-put");
    let st = s.stats().expect("stats");
    assert_eq!((st.objects, st.bytes), (10, 10_000));
    assert!(st.disk_bytes > 10_000, "disk bytes {}", st.disk_bytes);
    let seg_len = std::fs::metadata(last_segment(dir.path()))
        .expect("stat")
        .len();
    assert_eq!(st.disk_bytes, seg_len);
}

#[test]
fn everything_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let objs: Vec<PutObject> = (0..200)
        .map(|i| obj(i, (i as usize * 997) % 70_000))
        .collect();
    let stats = {
        let s = open_with(dir.path(), |o| o.segment_size = 2 << 20);
        for chunk in objs.chunks(17) {
            for r in s.put_many(chunk.to_vec()) {
                r.expect("put");
            }
        }
        s.stats().expect("stats")
    };
    let s = open_with(dir.path(), |o| o.segment_size = 2 << 20);
    for o in &objs {
        assert_eq!(s.get(&o.id()).expect("get after reopen"), o.data());
    }
    let again = s.stats().expect("stats");
    assert_eq!(
        (again.objects, again.bytes, again.disk_bytes),
        (stats.objects, stats.bytes, stats.disk_bytes)
    );
    assert!(
        std::fs::read_dir(dir.path().join("segments"))
            .expect("dir")
            .count()
            > 1
    );
}

#[test]
fn a_torn_tail_is_cut_off_and_acknowledged_objects_stay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let objs: Vec<PutObject> = (0..10).map(|i| obj(i, 5000 + i as usize)).collect();
    {
        let s = open(dir.path());
        for o in &objs {
            s.put(o.clone()).expect("put");
        }
    }
    let seg = last_segment(dir.path());
    let good_len = std::fs::metadata(&seg).expect("stat").len();

    // Garbage after the last record.
    {
        let mut f = OpenOptions::new().append(true).open(&seg).expect("open");
        f.write_all(&[0xA5; 3000]).expect("garbage");
        // A record header's magic followed by junk: still not a record.
        f.write_all(&0x4A42_4F45u32.to_le_bytes()).expect("magic");
        f.write_all(&[1, 0, 0, 0, 9, 9]).expect("junk");
    }
    {
        let s = open(dir.path());
        assert_eq!(std::fs::metadata(&seg).expect("stat").len(), good_len);
        for o in &objs {
            assert_eq!(s.get(&o.id()).expect("get"), o.data());
        }
        assert_eq!(s.put(obj(100, 777)).expect("new put"), PutOutcome::Stored);
    }

    // The last record's content cut short: a crash before its fdatasync returned, so the
    // index (here: its copy from before the put) never learned of it.
    let last = obj(101, 100_000);
    let saved = dir.path().join("index.saved");
    std::fs::copy(dir.path().join("index.redb"), &saved).expect("save index");
    let (seg, content_at) = {
        let s = open(dir.path());
        s.put(last.clone()).expect("put");
        s.locate(&last.id()).expect("locate").expect("here")
    };
    std::fs::rename(&saved, dir.path().join("index.redb")).expect("restore index");
    let f = OpenOptions::new().write(true).open(&seg).expect("open");
    f.set_len(content_at + 50_000).expect("truncate");
    drop(f);
    let s = open(dir.path());
    assert_eq!(s.has(&[last.id()]).expect("has"), vec![false]);
    // Cut back to the record's start (header 52 bytes, no refs).
    assert_eq!(
        std::fs::metadata(&seg).expect("stat").len(),
        content_at - 52
    );
    for o in objs.iter().chain([&obj(100, 777)]) {
        assert_eq!(s.get(&o.id()).expect("get"), o.data());
    }
    assert_eq!(s.put(last.clone()).expect("put again"), PutOutcome::Stored);
    assert_eq!(s.get(&last.id()).expect("get"), last.data());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("segments")).expect("mkdir");
    for name in ["index.redb", "records.redb", "LOCK"] {
        std::fs::copy(from.join(name), to.join(name)).expect("copy");
    }
    for e in std::fs::read_dir(from.join("segments")).expect("dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join("segments").join(e.file_name())).expect("copy seg");
    }
}

#[test]
fn replay_rebuilds_what_the_index_lost() {
    let base = tempfile::tempdir().expect("tempdir");
    let dir = base.path().join("live");
    let child = obj(1, 10);
    let first: Vec<PutObject> = (0..20).map(|i| obj(i + 10, 3000)).collect();
    let parent = PutObject::new(content(2, 300), vec![child.id()]);

    // 1. A copy taken while the store is open (index commits not yet durable, the record
    // naming the objects durable) replays.
    let s = open(&dir);
    for o in first.iter().chain([&child, &parent]) {
        s.put(o.clone()).expect("put");
    }
    s.cas_record("root", 0, Bytes::from_static(b"v1"), vec![parent.id()])
        .expect("record");
    let crashed = base.path().join("crashed");
    copy_dir(&dir, &crashed);
    {
        let c = open(&crashed);
        for o in first.iter().chain([&child, &parent]) {
            assert_eq!(c.get(&o.id()).expect("replayed"), o.data());
        }
        assert_eq!(c.refs(&parent.id()).expect("refs"), vec![child.id()]);
        assert_eq!(c.stats().expect("stats").objects, 22);
        let root = c.record("root").expect("record").expect("durable");
        assert_eq!(root.refs, vec![parent.id()]);
    }
    drop(s);

    // 2. An old copy of the index: what came after it is replayed.
    let old_index = base.path().join("old-index.redb");
    std::fs::copy(dir.join("index.redb"), &old_index).expect("save index");
    let second: Vec<PutObject> = (0..20).map(|i| obj(i + 100, 5000)).collect();
    {
        let s = open(&dir);
        for o in &second {
            s.put(o.clone()).expect("put");
        }
    }
    std::fs::copy(&old_index, dir.join("index.redb")).expect("restore old index");
    {
        let s = open(&dir);
        for o in first.iter().chain(&second) {
            assert_eq!(s.get(&o.id()).expect("after old index"), o.data());
        }
        assert_eq!(s.stats().expect("stats").objects, 42);
    }

    // 3. No index at all: rebuilt from the whole log (the records live apart and stay).
    std::fs::remove_file(dir.join("index.redb")).expect("remove index");
    let s = open(&dir);
    for o in first.iter().chain(&second).chain([&child, &parent]) {
        assert_eq!(s.get(&o.id()).expect("after rebuild"), o.data());
    }
    assert_eq!(s.refs(&parent.id()).expect("refs"), vec![child.id()]);
    let st = s.stats().expect("stats");
    assert_eq!(st.objects, 42);
    assert_eq!(st.bytes, 20 * 3000 + 20 * 5000 + 10 + 300);
    assert_eq!(st.records, 1);
    assert_eq!(
        &s.record("root").expect("record").expect("kept").value[..],
        b"v1"
    );
}

#[test]
fn a_corrupt_copy_is_never_served_and_is_quarantined() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let objs: Vec<PutObject> = (0..3).map(|i| obj(i, 10_000)).collect();
    for o in &objs {
        s.put(o.clone()).expect("put");
    }
    let bad = &objs[1];
    let (seg, off) = s.locate(&bad.id()).expect("locate").expect("here");
    flip_byte(&seg, off + 1234);
    match s.get(&bad.id()) {
        Err(StoreError::Corrupt { id, detail }) => {
            assert_eq!(id, bad.id());
            assert!(detail.contains("hashes to"), "{detail}");
            assert!(detail.contains(&seg.display().to_string()), "{detail}");
        }
        other => panic!("expected Corrupt, got {:?}", other.map(|b| b.len())),
    }
    assert_eq!(s.has(&[bad.id()]).expect("has"), vec![false]);
    assert!(matches!(s.get(&bad.id()), Err(StoreError::NotFound(_))));
    let st = s.stats().expect("stats");
    assert_eq!((st.quarantined, st.objects, st.bytes), (1, 2, 20_000));
    // The neighbours are fine.
    assert_eq!(s.get(&objs[0].id()).expect("get"), objs[0].data());
    assert_eq!(s.get(&objs[2].id()).expect("get"), objs[2].data());
    // A good copy can be put again and is served.
    assert_eq!(s.put(bad.clone()).expect("re-put"), PutOutcome::Stored);
    assert_eq!(s.get(&bad.id()).expect("get"), bad.data());
    let (_, b) = s.get_range(&bad.id(), 5, 5).expect("range");
    assert_eq!(&b[..], &bad.data()[5..10]);

    // A range read of a corrupt copy is refused too; so is a missing segment's.
    let other = obj(50, 20_000);
    s.put(other.clone()).expect("put");
    let (seg, off) = s.locate(&other.id()).expect("locate").expect("here");
    flip_byte(&seg, off);
    assert!(matches!(
        s.get_range(&other.id(), 0, 10),
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(s.stats().expect("stats").quarantined, 2);
}

#[test]
fn missing_or_short_segments_read_as_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = |o: &mut StoreOptions| o.segment_size = 100_000;
    let a = obj(1, 60_000);
    let b = obj(2, 60_000);
    let c = obj(3, 60_000);
    {
        let s = open_with(dir.path(), opts);
        for o in [&a, &b, &c] {
            s.put(o.clone()).expect("put");
        }
    }
    let (seg_a, _) = {
        let s = open_with(dir.path(), opts);
        s.locate(&a.id()).expect("locate").expect("here")
    };
    std::fs::remove_file(&seg_a).expect("remove a's segment");
    let s = open_with(dir.path(), opts);
    match s.get(&a.id()) {
        Err(StoreError::Corrupt { detail, .. }) => assert!(detail.contains("missing"), "{detail}"),
        other => panic!("expected Corrupt, got {:?}", other.map(|b| b.len())),
    }
    assert_eq!(s.has(&[a.id()]).expect("has"), vec![false]);
    // A segment cut short under an open store.
    let (seg_b, off_b) = s.locate(&b.id()).expect("locate").expect("here");
    let f = OpenOptions::new().write(true).open(&seg_b).expect("open");
    f.set_len(off_b + 10).expect("truncate");
    assert!(matches!(s.get(&b.id()), Err(StoreError::Corrupt { .. })));
    assert_eq!(s.get(&c.id()).expect("c is elsewhere"), c.data());
    assert_eq!(s.stats().expect("stats").quarantined, 2);
}

#[test]
fn the_store_is_send_sync_and_debug() {
    fn check<T: Send + Sync + std::fmt::Debug>() {}
    check::<LocalStore>();
}

#[test]
fn scrub_finds_the_one_bad_object_and_reports_progress() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let objs: Vec<PutObject> = (0..50).map(|i| obj(i, 2000 + i as usize)).collect();
    for r in s.put_many(objs.clone()) {
        r.expect("put");
    }
    let victim = &objs[17];
    let (seg, off) = s.locate(&victim.id()).expect("locate").expect("here");
    flip_byte(&seg, off + 7);
    let progress = ScrubProgress::default();
    let corrupt = s.scrub(&progress).expect("scrub");
    assert_eq!(corrupt, vec![victim.id()]);
    assert_eq!(progress.total.load(Ordering::SeqCst), 50);
    assert_eq!(progress.checked.load(Ordering::SeqCst), 50);
    assert_eq!(progress.corrupt.load(Ordering::SeqCst), 1);
    let good_bytes: u64 = objs
        .iter()
        .filter(|o| o.id() != victim.id())
        .map(|o| o.data().len() as u64)
        .sum();
    assert_eq!(progress.bytes.load(Ordering::SeqCst), good_bytes);
    assert!(!progress.running.load(Ordering::SeqCst));
    assert_eq!(s.stats().expect("stats").quarantined, 1);
    // A second scrub finds nothing.
    assert!(s.scrub(&progress).expect("scrub").is_empty());
    assert_eq!(progress.total.load(Ordering::SeqCst), 49);
}

#[test]
fn delete_spares_recent_stamps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let a = obj(1, 100);
    let b = obj(2, 200);
    s.put(a.clone()).expect("put");
    s.put(b.clone()).expect("put");
    let stamp = s.info(&b.id()).expect("info").expect("here").stamp;
    // A cutoff at (not after) b's stamp spares it.
    assert_eq!(s.delete(&[b.id()], stamp).expect("delete"), 0);
    assert_eq!(
        s.delete(&[a.id(), ObjectId::of(b"absent")], stamp + 1)
            .expect("delete"),
        1
    );
    assert!(matches!(s.get(&a.id()), Err(StoreError::NotFound(_))));
    assert_eq!(s.get(&b.id()).expect("get"), b.data());
    let st = s.stats().expect("stats");
    assert_eq!((st.objects, st.bytes), (1, 200));
    // Deleted stays deleted across a reopen; re-put brings it back.
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.has(&[a.id(), b.id()]).expect("has"), vec![false, true]);
    assert_eq!(s.put(a.clone()).expect("put"), PutOutcome::Stored);
    assert_eq!(s.get(&a.id()).expect("get"), a.data());
}

#[test]
fn compaction_gives_back_the_space_of_deleted_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small_segments = |o: &mut StoreOptions| o.segment_size = 1 << 20;
    let objs: Vec<PutObject> = (0..40).map(|i| obj(i, 100_000)).collect();
    let survivors: Vec<&PutObject> = objs.iter().step_by(4).collect();
    {
        let s = open_with(dir.path(), small_segments);
        for o in &objs {
            s.put(o.clone()).expect("put");
        }
        let doomed: Vec<ObjectId> = objs
            .iter()
            .skip(1)
            .filter(|o| !survivors.iter().any(|s| s.id() == o.id()))
            .map(|o| o.id())
            .collect();
        // Nothing to do before the deletes.
        assert_eq!(s.compact().expect("compact").segments_removed, 0);
        assert_eq!(s.delete(&doomed, u64::MAX).expect("delete"), 30);
        let before = s.stats().expect("stats").disk_bytes;
        let report = s.compact().expect("compact");
        let after = s.stats().expect("stats");
        assert!(report.segments_removed >= 3, "{report:?}");
        assert_eq!(report.objects_moved, report.objects_moved.min(10));
        assert!(
            after.disk_bytes < before / 2,
            "{before} -> {}",
            after.disk_bytes
        );
        assert!(report.bytes_freed > 0);
        assert_eq!(after.objects, 10);
        for o in &survivors {
            assert_eq!(s.get(&o.id()).expect("survivor"), o.data());
        }
    }
    let s = open_with(dir.path(), small_segments);
    for o in &survivors {
        assert_eq!(s.get(&o.id()).expect("survivor after reopen"), o.data());
    }
    assert_eq!(s.stats().expect("stats").objects, 10);
}

#[test]
fn puts_and_reads_run_safely_during_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Arc::new(open_with(dir.path(), |o| o.segment_size = 512 << 10));
    let old: Vec<PutObject> = (0..120).map(|i| obj(i, 30_000)).collect();
    for chunk in old.chunks(10) {
        for r in s.put_many(chunk.to_vec()) {
            r.expect("put");
        }
    }
    let (keep, doomed): (Vec<PutObject>, Vec<PutObject>) = old
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 3 == 0)
        .into_iter_pair();
    s.delete(&doomed.iter().map(|o| o.id()).collect::<Vec<_>>(), u64::MAX)
        .expect("delete");
    let keep = Arc::new(keep);

    std::thread::scope(|scope| {
        for t in 0..2u64 {
            let s = s.clone();
            scope.spawn(move || {
                for i in 0..60 {
                    let o = obj(10_000 + t * 1000 + i, 20_000 + i as usize);
                    assert_eq!(
                        s.put(o.clone()).expect("concurrent put"),
                        PutOutcome::Stored
                    );
                    assert_eq!(s.get(&o.id()).expect("read own put"), o.data());
                }
            });
        }
        for t in 0..2usize {
            let s = s.clone();
            let keep = keep.clone();
            scope.spawn(move || {
                for round in 0..6 {
                    for o in keep.iter().skip((t + round) % 2) {
                        assert_eq!(s.get(&o.id()).expect("read during compaction"), o.data());
                        let (_, b) = s.get_range(&o.id(), 100, 10).expect("range");
                        assert_eq!(&b[..], &o.data()[100..110]);
                    }
                }
            });
        }
        let mut removed = 0;
        for _ in 0..4 {
            removed += s.compact().expect("compact").segments_removed;
        }
        assert!(removed > 0);
    });
    for o in keep.iter() {
        assert_eq!(s.get(&o.id()).expect("after"), o.data());
    }
    assert_eq!(s.stats().expect("stats").objects, 40 + 120);
    assert!(
        s.scrub(&ScrubProgress::default())
            .expect("scrub")
            .is_empty()
    );
}

trait IntoIterPair<A> {
    fn into_iter_pair(self) -> (Vec<A>, Vec<A>);
}

impl<A> IntoIterPair<A> for (Vec<(usize, A)>, Vec<(usize, A)>) {
    fn into_iter_pair(self) -> (Vec<A>, Vec<A>) {
        (
            self.0.into_iter().map(|(_, a)| a).collect(),
            self.1.into_iter().map(|(_, a)| a).collect(),
        )
    }
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    match LocalStore::open(dir.path(), StoreOptions::default()) {
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("in use by another process"), "{msg}");
            assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        }
        Ok(_) => panic!("second open succeeded"),
    }
    drop(s);
    open(dir.path());
}

#[test]
fn a_damaged_index_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = open(dir.path());
        s.put(obj(1, 100)).expect("put");
    }
    let index = dir.path().join("index.redb");
    let len = std::fs::metadata(&index).expect("stat").len() as usize;
    std::fs::write(&index, vec![0x5Au8; len]).expect("overwrite");
    match LocalStore::open(dir.path(), StoreOptions::default()) {
        Err(StoreError::Index { path, .. }) => assert_eq!(path, index),
        Err(other) => panic!("expected an Index error, got {other}"),
        Ok(_) => panic!("a garbage index opened"),
    }
}

/// Unmounts a test file system, also when the test fails.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_refuses_puts_keeps_what_was_acknowledged_and_recovers() {
    let base = tempfile::tempdir().expect("tempdir");
    let mnt = base.path().join("fs");
    std::fs::create_dir(&mnt).expect("mkdir");
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&mnt)
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "skipped: cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("skipped: cannot run mount: {e}");
            return;
        }
    }
    let _guard = Unmount(mnt.clone());
    let dir = mnt.join("store");
    let opts = |o: &mut StoreOptions| {
        o.reserve = 512 << 10;
        o.segment_size = 2 << 20;
    };
    let mut acked = Vec::new();
    {
        let s = open_with(&dir, opts);
        let mut full = None;
        for i in 0..100 {
            let o = obj(i, 256 << 10);
            match s.put(o.clone()) {
                Ok(PutOutcome::Stored) => acked.push(o),
                Ok(PutOutcome::Present) => panic!("new object was present"),
                Err(e) => {
                    full = Some(e);
                    break;
                }
            }
        }
        match full {
            Some(StoreError::NoSpace {
                free,
                reserve,
                dir: d,
                ..
            }) => {
                assert_eq!(reserve, 512 << 10);
                assert!(free < 2 << 20, "free {free}");
                assert_eq!(d, dir);
            }
            other => panic!("expected NoSpace, got {other:?}"),
        }
        assert!(acked.len() > 10, "only {} puts fit", acked.len());
        for o in &acked {
            assert_eq!(s.get(&o.id()).expect("acknowledged object"), o.data());
        }
        // Present puts still work on a full disk.
        assert_eq!(
            s.put(acked[0].clone()).expect("present"),
            PutOutcome::Present
        );
    }
    {
        let s = open_with(&dir, opts);
        for o in &acked {
            assert_eq!(s.get(&o.id()).expect("after reopen"), o.data());
        }
        assert!(matches!(
            s.put(obj(1000, 256 << 10)),
            Err(StoreError::NoSpace { .. })
        ));
        // Room again: puts succeed without a reopen.
        let ok = std::process::Command::new("mount")
            .args(["-o", "remount,size=16m"])
            .arg(&mnt)
            .status()
            .expect("remount");
        assert!(ok.success());
        let o = obj(1000, 256 << 10);
        assert_eq!(
            s.put(o.clone()).expect("put after space returned"),
            PutOutcome::Stored
        );
        assert_eq!(s.get(&o.id()).expect("get"), o.data());
    }
    drop(open_with(&dir, opts));
}

#[test]
fn several_compare_and_sets_are_one_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let w = |name: &str, expected, v: &'static [u8]| {
        (name.to_owned(), expected, Bytes::from_static(v), vec![])
    };
    assert_eq!(
        s.cas_records(vec![w("a", 0, b"1"), w("b", 0, b"1")])
            .unwrap(),
        vec![1, 1]
    );
    // The second is stale: neither is written.
    match s.cas_records(vec![w("a", 1, b"2"), w("b", 0, b"2")]) {
        Err(StoreError::Conflict {
            name,
            expected: 0,
            current: 1,
        }) => assert_eq!(name, "b"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.record("a").unwrap().unwrap().value, &b"1"[..]);
    assert_eq!(
        s.cas_records(vec![w("a", 1, b"2"), w("b", 1, b"2")])
            .unwrap(),
        vec![2, 2]
    );
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.record("b").unwrap().unwrap().value, &b"2"[..]);
}
