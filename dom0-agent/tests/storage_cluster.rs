//! The object layer across hosts: envoyd processes on loopback with separate data
//! directories, R = 2. Objects survive a host killed with -9; a replacement host brings every
//! object back to two copies (checked by listing each host's store); a corrupt copy is
//! detected, never served, and repaired from the good replica.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use envoy_objstore::wire::{AdminOp, HostState, REPLICATED};
use envoy_objstore::{ErrorCode, ObjectId, PutObject, StorageClient, StoreError};
use support::storage::{
    Host, content, flip_byte, free_port, nine_p, three_hosts, write_membership,
};

/// How many hosts' stores hold each object.
async fn copies(clients: &[&StorageClient]) -> HashMap<ObjectId, usize> {
    let mut n = HashMap::new();
    for c in clients {
        for o in c.list_all().await.expect("list") {
            *n.entry(o.id).or_insert(0) += 1;
        }
    }
    n
}

async fn read_back(c: &StorageClient, objects: &[(ObjectId, bytes::Bytes)]) {
    for (id, data) in objects {
        let got = c
            .get_object(id, REPLICATED)
            .await
            .unwrap_or_else(|e| panic!("{} cannot read {id}: {e}", c.peer()));
        assert_eq!(&got, data, "{id} read back different bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_survive_a_killed_host_and_a_replacement_restores_two_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("cluster.toml");
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    write_membership(
        &file,
        2,
        &[("a", ports[0]), ("b", ports[1]), ("c", ports[2])],
    );
    let mut a = Host::start("a", ports[0], &tmp.path().join("a"), Some(&file), &[]);
    let mut b = Host::start("b", ports[1], &tmp.path().join("b"), Some(&file), &[]);
    let mut c = Host::start("c", ports[2], &tmp.path().join("c"), Some(&file), &[]);
    let (ca, cb, cc) = (a.client().await, b.client().await, c.client().await);

    // 300 objects, 1 B to 64 KiB, and four of 3 MiB (sent in pieces when msize is smaller).
    let mut objects = Vec::new();
    for n in 0..304u64 {
        let len = if n >= 300 {
            3 << 20
        } else {
            1 + (n as usize * 997) % 65536
        };
        let data = content(n, len);
        let object = PutObject::new(data.clone(), Vec::new());
        let (_, copies) = ca.put(&object, REPLICATED).await.expect("replicated put");
        assert_eq!(copies, 2, "object {n} should be on two hosts");
        objects.push((object.id(), data));
    }
    let before = copies(&[&ca, &cb, &cc]).await;
    for (id, _) in &objects {
        assert_eq!(before.get(id), Some(&2), "{id} is not on exactly two hosts");
    }
    let on_c = cc.list_all().await.unwrap().len();
    assert!(
        on_c > 50,
        "placement should give c a share ({on_c} objects)"
    );

    // kill -9 c: every object is still readable, through either survivor.
    c.kill();
    read_back(&ca, &objects).await;
    read_back(&cb, &objects).await;
    // Writes go on with c down: the next host in each object's order takes its place.
    for n in 1000..1050u64 {
        let data = content(n, 4096);
        let object = PutObject::new(data.clone(), Vec::new());
        let (_, copies) = cb.put(&object, REPLICATED).await.expect("put with c down");
        assert_eq!(copies, 2);
        objects.push((object.id(), data));
    }

    // Replace c by d: a new host with an empty disk; the survivors reload the membership.
    write_membership(
        &file,
        2,
        &[("a", ports[0]), ("b", ports[1]), ("d", ports[3])],
    );
    let mut d = Host::start("d", ports[3], &tmp.path().join("d"), Some(&file), &[]);
    let cd = d.client().await;
    for client in [&ca, &cb] {
        let m = client.admin(AdminOp::Reload, 0).await.expect("reload");
        assert!(m.contains("3 hosts"), "{m}");
    }
    for client in [&ca, &cb, &cd] {
        client
            .admin(AdminOp::Repair, 1)
            .await
            .expect("re-replication pass");
    }
    let after = copies(&[&ca, &cb, &cd]).await;
    for (id, _) in &objects {
        let n = after.get(id).copied().unwrap_or(0);
        assert!(
            n >= 2,
            "{id} has {n} copies on the live hosts after re-replication"
        );
    }
    assert!(
        cd.list_all().await.unwrap().len() > 50,
        "the replacement should have received its share"
    );
    // The replacement serves everything; the admin view shows three live hosts.
    read_back(&cd, &objects).await;
    let (replicas, hosts) = cd.cluster().await.unwrap();
    assert_eq!(replicas, 2);
    assert_eq!(hosts.len(), 3);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, hosts) = cd.cluster().await.unwrap();
        if hosts
            .iter()
            .all(|h| h.state == HostState::Up && h.stats.is_some())
        {
            break;
        }
        assert!(Instant::now() < deadline, "hosts not all up: {hosts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every object's replica list (asked of the cluster) names two or more live hosts.
    for (id, _) in objects.iter().take(20) {
        let r = cd.replicas(id).await.unwrap();
        assert!(r.len() >= 2 && !r.contains(&"c".to_string()), "{id}: {r:?}");
    }
    drop((a, b, d));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_copy_is_detected_never_served_and_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let names = ["a", "b", "c"];
    let (mut hosts, mut clients) = three_hosts(tmp.path()).await;
    let data = content(7, 100_000);
    let object = PutObject::new(data.clone(), Vec::new());
    let id = object.id();
    clients[0].put(&object, REPLICATED).await.unwrap();
    let holders = clients[0].replicas(&id).await.unwrap();
    assert_eq!(holders.len(), 2, "{holders:?}");
    let idx = |name: &str| names.iter().position(|n| *n == name).unwrap();
    let (bad, good) = (idx(&holders[0]), idx(&holders[1]));

    // Corrupt the copy on `bad` (stopped meanwhile), then read through `bad` itself.
    hosts[bad].kill();
    flip_byte(&hosts[bad].store_dir(), &id);
    hosts[bad].restart();
    clients[bad] = hosts[bad].client().await;
    match clients[bad].get_object(&id, 0).await {
        Err(StoreError::Corrupt { .. }) => {}
        other => panic!("a local read of the corrupt copy must fail as Corrupt: {other:?}"),
    }
    // The corrupt copy is out of service; a cluster read serves the good replica...
    assert_eq!(
        clients[bad].get_object(&id, REPLICATED).await.unwrap(),
        data
    );
    // ...and puts a good copy back on the bad host.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !clients[bad].has(&[id]).await.unwrap()[0] {
        assert!(
            Instant::now() < deadline,
            "read repair did not restore the copy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(clients[bad].get_object(&id, 0).await.unwrap(), data);
    assert_eq!(clients[bad].stats().await.unwrap().local.quarantined, 1);

    // Scrub finds a silently corrupted copy of another object and repairs it from a replica.
    let other = PutObject::new(content(8, 50_000), Vec::new());
    clients[0].put(&other, REPLICATED).await.unwrap();
    let holder = idx(&clients[0].replicas(&other.id()).await.unwrap()[0]);
    hosts[holder].kill();
    flip_byte(&hosts[holder].store_dir(), &other.id());
    hosts[holder].restart();
    clients[holder] = hosts[holder].client().await;
    let msg = clients[holder].admin(AdminOp::Scrub, 1).await.unwrap();
    assert!(
        msg.contains("1 corrupt") && msg.contains("1 repaired"),
        "{msg}"
    );
    let s = clients[holder].stats().await.unwrap();
    assert_eq!(s.maintenance.scrub_corrupt, 1);
    assert_eq!(s.maintenance.scrub_repaired, 1);
    assert_eq!(s.maintenance.scrub_checked, s.maintenance.scrub_total);
    assert_eq!(
        clients[holder].get_object(&other.id(), 0).await.unwrap(),
        other.data()
    );

    // Both copies corrupt: an explicit checksum error, never wrong bytes.
    for i in [bad, good] {
        hosts[i].kill();
        flip_byte(&hosts[i].store_dir(), &id);
        hosts[i].restart();
        clients[i] = hosts[i].client().await;
    }
    let third = 3 - bad - good;
    match clients[third].get_object(&id, REPLICATED).await {
        Err(e) => assert_eq!(e.code(), ErrorCode::Corrupt, "{e}"),
        Ok(bytes) => panic!("served {} bytes of a corrupt object", bytes.len()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_replicated_and_gc_keeps_exactly_what_they_reach() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut hosts, mut clients) = three_hosts(tmp.path()).await;
    let c0 = clients[0].clone();

    // A tree: 20 leaves under 4 inner nodes under one root, referenced by a record; plus 30
    // objects nothing references.
    let mut live = Vec::new();
    let mut inner = Vec::new();
    for i in 0..4u64 {
        let mut children = Vec::new();
        for j in 0..5u64 {
            let leaf = PutObject::new(content(100 + i * 10 + j, 3000), Vec::new());
            c0.put(&leaf, REPLICATED).await.unwrap();
            children.push(leaf.id());
            live.push(leaf.id());
        }
        let node = PutObject::new(content(200 + i, 500), children);
        c0.put(&node, REPLICATED).await.unwrap();
        inner.push(node.id());
        live.push(node.id());
    }
    let root = PutObject::new(content(300, 100), inner);
    c0.put(&root, REPLICATED).await.unwrap();
    live.push(root.id());
    let mut garbage = Vec::new();
    for n in 0..30u64 {
        let g = PutObject::new(content(400 + n, 2000), Vec::new());
        c0.put(&g, REPLICATED).await.unwrap();
        garbage.push(g.id());
    }

    // Records: compare-and-set through the cluster; a stale expectation is a conflict that
    // names the current version; the value reads back through any host.
    let v1 = c0
        .cas(
            "image/root",
            0,
            bytes::Bytes::from_static(b"one"),
            vec![root.id()],
            REPLICATED,
        )
        .await
        .unwrap();
    assert_eq!(v1, 1);
    match clients[1]
        .cas(
            "image/root",
            0,
            bytes::Bytes::from_static(b"stale"),
            vec![],
            REPLICATED,
        )
        .await
    {
        Err(StoreError::Conflict { current, .. }) => assert_eq!(current, 1),
        other => panic!("a stale compare-and-set must conflict: {other:?}"),
    }
    for c in &clients {
        let r = c.record("image/root", REPLICATED).await.unwrap().unwrap();
        assert_eq!(
            (r.version, &r.value[..], &r.refs[..]),
            (1, &b"one"[..], &[root.id()][..])
        );
    }
    // With one replica of the record down, it is still read and advanced.
    let holders: Vec<usize> = {
        let mut v = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            if c.record("image/root", 0).await.unwrap().is_some() {
                v.push(i);
            }
        }
        v
    };
    assert_eq!(holders.len(), 2, "the record should be on two hosts");
    let down = holders[0];
    let other = (0..3).find(|i| *i != down).unwrap();
    hosts[down].kill();
    let r = clients[other]
        .record("image/root", REPLICATED)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.version, 1);
    hosts[down].restart();
    clients[down] = hosts[down].client().await;
    let c0 = clients[0].clone();

    // GC with no grace (stamps are whole seconds: let one pass first): the garbage goes from
    // every host, everything the record reaches stays, readable.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let msg = clients[other].admin(AdminOp::Gc, 0).await.unwrap();
    assert_eq!(msg, "gc done: 60 objects deleted", "30 objects x 2 copies");
    let left = copies(&clients.iter().collect::<Vec<_>>()).await;
    for id in &garbage {
        assert!(!left.contains_key(id), "garbage {id} survived GC");
    }
    for id in &live {
        assert_eq!(left.get(id), Some(&2), "live {id} lost copies to GC");
        c0.get_object(id, REPLICATED).await.unwrap();
    }
    // A grace period spares recent garbage.
    let fresh = PutObject::new(content(999, 100), Vec::new());
    c0.put(&fresh, REPLICATED).await.unwrap();
    let msg = c0.admin(AdminOp::Gc, 3600).await.unwrap();
    assert_eq!(msg, "gc done: 0 objects deleted");
    assert!(c0.get_object(&fresh.id(), REPLICATED).await.is_ok());
}

/// An image served by one host is durable on both: what a client fsync'd through host a is
/// served, whole, by host b after a is killed with -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_fsyncd_on_one_host_is_served_by_another_after_kill_9() {
    use envoy_protocol::consts::*;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("cluster.toml");
    let (pa, pb, p9a, p9b) = (free_port(), free_port(), free_port(), free_port());
    write_membership(&file, 2, &[("a", pa), ("b", pb)]);
    let serve = |p: u16| {
        vec![
            "--image".to_owned(),
            "vm".to_owned(),
            "--listen".to_owned(),
            format!("tcp:127.0.0.1:{p}"),
        ]
    };
    let extra_a = serve(p9a);
    let extra_a: Vec<&str> = extra_a.iter().map(String::as_str).collect();
    let mut a = Host::start("a", pa, &tmp.path().join("a"), Some(&file), &extra_a);
    let mut b = Host::start("b", pb, &tmp.path().join("b"), Some(&file), &[]);
    a.client().await;
    b.client().await;
    let c = nine_p(p9a).await;
    c.attach(1, "", "", 0).await.unwrap();
    let data: Vec<u8> = (0..700_000).map(|i| (i % 241) as u8).collect();
    c.walk(1, 2, &[]).await.unwrap();
    c.lcreate(2, "disk.img", P9_DOTL_RDWR, 0o644, 0)
        .await
        .unwrap();
    c.write(2, 0, &data).await.unwrap();
    c.fsync(2, false).await.unwrap();
    a.kill();
    drop(c);
    // Host b, restarted to serve the image too, has every object and the root record.
    b.kill();
    b.extra = serve(p9b);
    b.restart();
    let c = nine_p(p9b).await;
    c.attach(1, "", "", 0).await.unwrap();
    c.walk(1, 2, &["disk.img"]).await.unwrap();
    c.lopen(2, P9_DOTL_RDONLY).await.unwrap();
    let got = c.read(2, 0, data.len() + 1).await.unwrap();
    assert!(
        got[..] == data[..],
        "host b served other bytes ({} of {})",
        got.len(),
        data.len()
    );
}

/// A record deleted while one of its replicas is down stays deleted when that replica
/// returns with its old copy: a cluster read finds the tombstone newer (and copies it over
/// the stale copy), GC deletes the tombstone over stale copies before it marks, so what only
/// the deleted record reached is collected on every host; the name can be created again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_record_stays_deleted_when_a_stale_replica_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("cluster.toml");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let names = ["a", "b", "c"];
    let members: Vec<(&str, u16)> = names.iter().copied().zip(ports.iter().copied()).collect();
    write_membership(&file, 3, &members);
    let mut hosts: Vec<Host> = members
        .iter()
        .map(|(n, p)| Host::start(n, *p, &tmp.path().join(n), Some(&file), &[]))
        .collect();
    let mut clients = Vec::new();
    for h in &mut hosts {
        clients.push(h.client().await);
    }
    let only_gone = PutObject::new(content(500, 4000), Vec::new());
    let kept = PutObject::new(content(501, 4000), Vec::new());
    for o in [&only_gone, &kept] {
        let (_, copies) = clients[0].put(o, REPLICATED).await.unwrap();
        assert_eq!(copies, 3);
    }
    let one = bytes::Bytes::from_static(b"one");
    for (name, refs) in [
        ("image/gone", vec![only_gone.id()]),
        ("image/gone2", vec![]),
        ("image/kept", vec![kept.id()]),
    ] {
        let v = clients[0]
            .cas(name, 0, one.clone(), refs, REPLICATED)
            .await
            .unwrap();
        assert_eq!(v, 1);
    }
    // c misses the deletes (R = 3: a majority of two takes them).
    hosts[2].kill();
    for name in ["image/gone", "image/gone2"] {
        match clients[0].delete_record(name, 7, REPLICATED).await {
            Err(StoreError::Conflict { current: 1, .. }) => {}
            other => panic!("a stale delete must conflict: {other:?}"),
        }
        assert_eq!(
            clients[0].delete_record(name, 1, REPLICATED).await.unwrap(),
            2
        );
        assert!(clients[1].record(name, REPLICATED).await.unwrap().is_none());
    }
    hosts[2].restart();
    clients[2] = hosts[2].client().await;
    let stale = clients[2].record("image/gone2", 0).await.unwrap().unwrap();
    assert!(!stale.deleted && stale.version == 1, "{stale:?}");
    // A cluster read through the stale host: deleted, and its copy is a tombstone now.
    assert!(
        clients[2]
            .record("image/gone2", REPLICATED)
            .await
            .unwrap()
            .is_none()
    );
    let copy = clients[2].record("image/gone2", 0).await.unwrap().unwrap();
    assert!(copy.deleted && copy.version == 2, "{copy:?}");
    // GC: c's stale "image/gone" (whose refs name only_gone) is no root; only_gone goes from
    // all three hosts, kept stays.
    let stale = clients[2].record("image/gone", 0).await.unwrap().unwrap();
    assert_eq!(stale.refs, vec![only_gone.id()]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let msg = clients[0].admin(AdminOp::Gc, 0).await.unwrap();
    assert_eq!(msg, "gc done: 3 objects deleted");
    let copy = clients[2].record("image/gone", 0).await.unwrap().unwrap();
    assert!(copy.deleted, "GC left the stale copy: {copy:?}");
    for c in &clients {
        assert!(!c.has(&[only_gone.id()]).await.unwrap()[0]);
        assert!(c.has(&[kept.id()]).await.unwrap()[0]);
    }
    // The name can be used again: its versions go on past the tombstone.
    let v = clients[2]
        .cas("image/gone", 0, one.clone(), vec![], REPLICATED)
        .await
        .unwrap();
    assert_eq!(v, 3);
    assert_eq!(
        clients[1]
            .record("image/gone", REPLICATED)
            .await
            .unwrap()
            .map(|r| r.version),
        Some(3)
    );
}
