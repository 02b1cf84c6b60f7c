//! Unit tests that need the store's insides: an append that fails half-way (the disk filling
//! up under a write) is cut back and the store goes on; the records of an index from before
//! `records.redb` are moved out of it.

use super::*;

#[test]
fn a_failed_append_is_cut_back_and_the_store_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = PutObject::new(Bytes::from(vec![7u8; 50_000]), vec![]);
    let b = PutObject::new(Bytes::from(vec![8u8; 60_000]), vec![ObjectId::of(b"child")]);
    let seg;
    let good_len;
    {
        let s = LocalStore::open(dir.path(), StoreOptions::default()).expect("open");
        assert_eq!(s.put(a.clone()).expect("put a"), PutOutcome::Stored);
        seg = s.locate(&a.id).expect("locate").expect("here").0;
        good_len = std::fs::metadata(&seg).expect("stat").len();

        s.shared.fail_next_append.store(true, Ordering::SeqCst);
        match s.put(b.clone()) {
            Err(StoreError::NoSpace { needed, dir: d, .. }) => {
                assert_eq!(d, dir.path());
                assert!(needed > 60_000);
            }
            other => panic!("expected NoSpace, got {other:?}"),
        }
        // Nothing partial is left, nothing is indexed, the acknowledged object reads fine.
        assert_eq!(std::fs::metadata(&seg).expect("stat").len(), good_len);
        assert_eq!(s.has(&[b.id]).expect("has"), vec![false]);
        assert_eq!(s.get(&a.id).expect("get a"), a.data);

        // The next put succeeds without a reopen.
        assert_eq!(s.put(b.clone()).expect("put b"), PutOutcome::Stored);
        assert_eq!(s.get(&b.id).expect("get b"), b.data);
        assert_eq!(s.refs(&b.id).expect("refs"), vec![ObjectId::of(b"child")]);
    }
    let s = LocalStore::open(dir.path(), StoreOptions::default()).expect("reopen");
    assert_eq!(s.get(&a.id).expect("get a"), a.data);
    assert_eq!(s.get(&b.id).expect("get b"), b.data);
    let st = s.stats().expect("stats");
    assert_eq!((st.objects, st.bytes), (2, 110_000));
}

#[test]
fn segments_roll_over_and_a_huge_object_gets_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        segment_size: 100_000,
        ..StoreOptions::default()
    };
    let s = LocalStore::open(dir.path(), opts).expect("open");
    let small: Vec<PutObject> = (0..10u8)
        .map(|i| PutObject::new(Bytes::from(vec![i; 30_000]), vec![]))
        .collect();
    for r in s.put_many(small.clone()) {
        r.expect("put");
    }
    let huge = PutObject::new(Bytes::from(vec![0xEE; 300_000]), vec![]);
    s.put(huge.clone()).expect("put huge");
    let segs = files::list_segments(dir.path()).expect("list");
    // 3 records of ~30 KB per 100 KB segment: 4 segments, then the huge one alone.
    assert_eq!(segs.len(), 5, "{segs:?}");
    for seq in &segs {
        let len = std::fs::metadata(files::segment_path(dir.path(), *seq))
            .expect("stat")
            .len();
        assert!(
            len <= 100_000 || *seq == *segs.last().expect("last"),
            "{seq}: {len}"
        );
    }
    let huge_seg = s.locate(&huge.id).expect("locate").expect("here").0;
    assert_eq!(
        huge_seg,
        files::segment_path(dir.path(), *segs.last().expect("last"))
    );
    for o in small.iter().chain([&huge]) {
        assert_eq!(s.get(&o.id).expect("get"), o.data);
    }
    assert_eq!(
        s.shared.active_seq.load(Ordering::SeqCst),
        *segs.last().expect("last")
    );
}

#[test]
fn records_in_an_old_index_move_to_their_own_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = |version, value: &'static [u8]| Record {
        version,
        value: Bytes::from_static(value),
        refs: vec![ObjectId::of(value)],
        deleted: false,
    };
    {
        let s = LocalStore::open(dir.path(), StoreOptions::default()).expect("open");
        // A copy here older than the index's: as if a move had been cut short by a crash.
        s.store_record("a", rec(1, b"stale")).expect("store");
        s.store_record("c", rec(5, b"newer here")).expect("store");
    }
    // The index as an older store kept it: a records table of its own.
    {
        let db = redb::Database::open(dir.path().join("index.redb")).expect("open index");
        let txn = db.begin_write().expect("txn");
        {
            let mut t = txn.open_table(index::RECORDS).expect("table");
            for (name, r) in [
                ("a", rec(2, b"root")),
                ("b", Record::tombstone(3)),
                ("c", rec(4, b"older")),
            ] {
                t.insert(name, &index::encode_record(&r)[..])
                    .expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    for _ in 0..2 {
        let s = LocalStore::open(dir.path(), StoreOptions::default()).expect("reopen");
        assert_eq!(s.record("a").expect("a"), Some(rec(2, b"root")));
        assert_eq!(s.record("b").expect("b"), None);
        assert_eq!(s.record_copy("b").expect("b"), Some(Record::tombstone(3)));
        assert_eq!(s.record("c").expect("c"), Some(rec(5, b"newer here")));
        assert_eq!(s.stats().expect("stats").records, 3);
        let txn = s.shared.db.begin_read().expect("read");
        assert!(matches!(
            txn.open_table(index::RECORDS),
            Err(redb::TableError::TableDoesNotExist(_))
        ));
    }
}
