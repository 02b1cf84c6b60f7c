//! The client against a scripted fake server on an in-memory stream: each test plays the
//! server's side message by message.

use super::*;
use envoy_protocol::consts::*;
use envoy_protocol::*;
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

/// The server end of the connection, driven by the test.
struct Fake {
    rx: StreamRx<ReadHalf<DuplexStream>>,
    tx: StreamTx<WriteHalf<DuplexStream>>,
    dialect: Dialect,
}

impl Fake {
    fn new(stream: DuplexStream, dialect: Dialect) -> Fake {
        let (r, w) = tokio::io::split(stream);
        let mut rx = StreamRx::new(r);
        rx.set_max_frame(1 << 24);
        Fake {
            rx,
            tx: StreamTx::new(w),
            dialect,
        }
    }

    async fn recv(&mut self) -> (u16, Fcall) {
        let frame = self.rx.recv().await.unwrap().expect("a frame");
        decode(frame, self.dialect).expect("client sent a valid frame")
    }

    async fn send(&mut self, tag: u16, msg: impl Into<Fcall>) {
        let mut b = BytesMut::new();
        msg.into().encode(tag, self.dialect, &mut b);
        self.tx.send(&mut vec![b.freeze()]).await.unwrap();
    }

    /// True once the client has closed its side.
    async fn eof(&mut self) -> bool {
        matches!(self.rx.recv().await, Ok(None))
    }
}

/// A client that proposed `dialect`/`msize`, with the server agreeing to `reply` and
/// `server_msize`.
async fn pair_with(
    dialect: Dialect,
    msize: u32,
    reply: &str,
    server_msize: u32,
) -> (Result<Client>, Fake) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let mut fake = Fake::new(b, dialect);
    let server = async {
        let (tag, msg) = fake.recv().await;
        assert_eq!(tag, NOTAG);
        assert_eq!(
            msg,
            Fcall::Tversion(Tversion {
                msize,
                version: dialect.as_str().into()
            })
        );
        fake.send(
            NOTAG,
            Rversion {
                msize: server_msize,
                version: reply.into(),
            },
        )
        .await;
        if let Some(d) = Dialect::from_version(reply) {
            fake.dialect = d;
        }
    };
    let (client, ()) = tokio::join!(Client::over_stream(a, dialect, msize), server);
    (client, fake)
}

async fn pair(dialect: Dialect, msize: u32) -> (Client, Fake) {
    let (c, f) = pair_with(dialect, msize, dialect.as_str(), msize).await;
    (c.unwrap(), f)
}

#[tokio::test]
async fn version_negotiation() {
    let (c, _f) = pair_with(Dialect::P9P2000L, 65536, "9P2000.L", 8192).await;
    let c = c.unwrap();
    assert_eq!(
        (c.msize(), c.dialect(), c.max_io()),
        (8192, Dialect::P9P2000L, 8192 - 24)
    );
    // A server may not raise the msize.
    let (c, _f) = pair_with(Dialect::P9P2000L, 4096, "9P2000.L", 1 << 20).await;
    assert_eq!(c.unwrap().msize(), 4096);
}

#[tokio::test]
async fn version_rejections() {
    let (c, _f) = pair_with(Dialect::P9P2000L, 8192, "unknown", 8192).await;
    assert!(matches!(c, Err(ClientError::VersionRejected(v)) if v == "unknown"));
    let (c, _f) = pair_with(Dialect::P9P2000L, 8192, "9P2000.X", 8192).await;
    assert!(matches!(c, Err(ClientError::VersionRejected(v)) if v == "9P2000.X"));
    let (c, _f) = pair_with(Dialect::P9P2000L, 8192, "9P2000.L", 24).await;
    assert!(matches!(c, Err(ClientError::VersionRejected(_))));
}

#[tokio::test]
async fn downgrade_to_the_base_dialect() {
    let (c, mut f) = pair_with(Dialect::P9P2000U, 8192, "9P2000", 8192).await;
    let c = c.unwrap();
    assert_eq!(c.dialect(), Dialect::P9P2000);
    let (attach, server) = tokio::join!(c.attach(1, "glenda", "", 1000), async {
        let (tag, msg) = f.recv().await;
        // Decoded as 9P2000: no n_uname on the wire.
        let want = Tattach {
            fid: 1,
            afid: NOFID,
            uname: "glenda".into(),
            aname: "".into(),
            n_uname: NONUNAME,
        };
        assert_eq!(msg, Fcall::Tattach(want));
        f.send(
            tag,
            Rattach {
                qid: Qid {
                    ty: QTDIR,
                    version: 0,
                    path: 1,
                },
            },
        )
        .await;
    });
    let () = server;
    assert_eq!(attach.unwrap().path, 1);
}

#[tokio::test]
async fn replies_are_matched_by_tag_in_any_order() {
    let (c, mut f) = pair(Dialect::P9P2000L, 8192).await;
    let server = async {
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(f.recv().await);
        }
        let tags: Vec<u16> = got.iter().map(|(t, _)| *t).collect();
        assert!(tags.iter().all(|t| *t != NOTAG));
        assert_eq!(tags.len(), 3);
        assert!(tags[0] != tags[1] && tags[1] != tags[2] && tags[0] != tags[2]);
        for (tag, msg) in got.into_iter().rev() {
            let Fcall::Tgetattr(g) = msg else {
                panic!("{msg:?}")
            };
            if g.fid == 2 {
                f.send(tag, Rlerror { ecode: 2 }).await;
            } else {
                f.send(tag, Rwrite { count: g.fid }).await;
            }
        }
    };
    let get = |fid| {
        c.rpc(Tgetattr {
            fid,
            request_mask: GETATTR_ALL,
        })
    };
    let (a, b, d, ()) = tokio::join!(get(1), get(2), get(3), server);
    assert_eq!(a.unwrap(), Fcall::Rwrite(Rwrite { count: 1 }));
    let e = b.unwrap_err();
    assert_eq!(e.errno(), Some(2));
    assert!(
        matches!(&e, ClientError::Remote { ename, .. } if ename == "No such file or directory"),
        "{e}"
    );
    assert_eq!(d.unwrap(), Fcall::Rwrite(Rwrite { count: 3 }));
    assert_eq!(c.in_flight(), 0);
}

#[tokio::test]
async fn rerror_becomes_remote() {
    let (c, mut f) = pair(Dialect::P9P2000U, 8192).await;
    let (r, ()) = tokio::join!(c.clunk(9), async {
        let (tag, _) = f.recv().await;
        f.send(
            tag,
            Rerror {
                ename: "boom".into(),
                errno: 5,
            },
        )
        .await;
    });
    match r {
        Err(ClientError::Remote { errno, ename }) => {
            assert_eq!((errno, ename.as_str()), (5, "boom"))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn wrong_reply_kind() {
    let (c, mut f) = pair(Dialect::P9P2000L, 8192).await;
    let (r, ()) = tokio::join!(c.clunk(9), async {
        let (tag, _) = f.recv().await;
        f.send(tag, Rremove {}).await;
    });
    assert!(
        matches!(
            r,
            Err(ClientError::UnexpectedReply {
                request: "Tclunk",
                ..
            })
        ),
        "{r:?}"
    );
}

#[tokio::test]
async fn tags_are_reused_and_never_notag() {
    let (c, mut f) = pair(Dialect::P9P2000L, 8192).await;
    let server = async {
        let mut tags = Vec::new();
        for _ in 0..3 {
            let (tag, _) = f.recv().await;
            tags.push(tag);
            f.send(tag, Rclunk {}).await;
        }
        tags
    };
    let client = async {
        for fid in 0..3 {
            c.clunk(fid).await.unwrap();
        }
    };
    let (tags, ()) = tokio::join!(server, client);
    assert_eq!(tags, vec![tags[0]; 3], "a freed tag is reused");
    assert_ne!(tags[0], NOTAG);
}

#[tokio::test]
async fn many_requests_in_flight() {
    let (c, mut f) = pair(Dialect::P9P2000L, 8192).await;
    let mut pending = Vec::new();
    for fid in 0..500u32 {
        pending.push(c.start(Tclunk { fid }).await.unwrap());
    }
    assert_eq!(c.in_flight(), 500);
    let mut tags = std::collections::HashSet::new();
    for _ in 0..500 {
        let (tag, _) = f.recv().await;
        assert!(tags.insert(tag), "tag {tag} used twice");
        assert_ne!(tag, NOTAG);
        f.send(tag, Rclunk {}).await;
    }
    for p in pending {
        assert_eq!(p.wait().await.unwrap(), Fcall::Rclunk(Rclunk {}));
    }
    assert_eq!(c.in_flight(), 0);
}

#[tokio::test]
async fn flush_before_the_reply_fails_the_request() {
    let (c, mut f) = pair(Dialect::P9P2000L, 8192).await;
    let read = c
        .start(Tread {
            fid: 1,
            offset: 0,
            count: 10,
        })
        .await
        .unwrap();
    let (tag, _) = f.recv().await;
    assert_eq!(tag, read.tag());
    let (flushed, ()) = tokio::join!(c.flush(tag), async {
        let (ftag, msg) = f.recv().await;
        assert_eq!(msg, Fcall::Tflush(Tflush { oldtag: tag }));
        f.send(ftag, Rflush {}).await;
    });
    flushed.unwrap();
    assert!(matches!(read.wait().await, Err(ClientError::Flushed)));
    assert_eq!(c.in_flight(), 0);
}

#[tokio::test]
async fn flush_after_the_reply_keeps_the_reply() {
    let (c, mut f) = pair(Dialect::P9P2000L, 8192).await;
    let read = c
        .start(Tread {
            fid: 1,
            offset: 0,
            count: 10,
        })
        .await
        .unwrap();
    let (tag, _) = f.recv().await;
    let (flushed, ()) = tokio::join!(c.flush(tag), async {
        let (ftag, _) = f.recv().await;
        f.send(
            tag,
            Rread {
                data: Bytes::from_static(b"late"),
            },
        )
        .await;
        f.send(ftag, Rflush {}).await;
    });
    flushed.unwrap();
    assert_eq!(
        read.wait().await.unwrap(),
        Fcall::Rread(Rread {
            data: Bytes::from_static(b"late")
        })
    );
}

#[tokio::test]
async fn reads_are_chunked_to_the_msize() {
    let (c, mut f) = pair(Dialect::P9P2000L, 100).await;
    assert_eq!(c.max_io(), 76);
    let file: Vec<u8> = (0..124u8).collect();
    let server = async {
        let mut asked = Vec::new();
        loop {
            let (tag, msg) = f.recv().await;
            let Fcall::Tread(r) = msg else {
                panic!("{msg:?}")
            };
            asked.push((r.offset, r.count));
            let start = (r.offset as usize).min(file.len());
            let end = (start + r.count as usize).min(file.len());
            f.send(
                tag,
                Rread {
                    data: Bytes::copy_from_slice(&file[start..end]),
                },
            )
            .await;
            if start == end {
                return asked;
            }
        }
    };
    let (data, asked) = tokio::join!(c.read(7, 0, 1000), server);
    assert_eq!(&data.unwrap()[..], &file[..]);
    assert_eq!(asked, vec![(0, 76), (76, 76), (124, 76)]);
    // A read that stops at `count` asks for no more than that.
    let (data, ()) = tokio::join!(c.read(7, 10, 5), async {
        let (tag, msg) = f.recv().await;
        assert_eq!(
            msg,
            Fcall::Tread(Tread {
                fid: 7,
                offset: 10,
                count: 5
            })
        );
        f.send(
            tag,
            Rread {
                data: Bytes::from_static(b"abcde"),
            },
        )
        .await;
    });
    assert_eq!(&data.unwrap()[..], b"abcde");
}

#[tokio::test]
async fn writes_are_chunked_to_the_msize() {
    let (c, mut f) = pair(Dialect::P9P2000U, 100).await;
    let data: Vec<u8> = (0..200u8).collect();
    let server = async {
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        while got.len() < 200 {
            let (tag, msg) = f.recv().await;
            let Fcall::Twrite(w) = msg else {
                panic!("{msg:?}")
            };
            assert_eq!(w.offset as usize, got.len());
            sizes.push(w.data.len());
            got.extend_from_slice(&w.data);
            f.send(
                tag,
                Rwrite {
                    count: w.data.len() as u32,
                },
            )
            .await;
        }
        (got, sizes)
    };
    let (n, (got, sizes)) = tokio::join!(c.write(3, 0, &data), server);
    assert_eq!(n.unwrap(), 200);
    assert_eq!(got, data);
    assert_eq!(sizes, vec![76, 76, 48]);
}

#[tokio::test]
async fn readdir_follows_offsets_to_the_end() {
    let (c, mut f) = pair(Dialect::P9P2000L, 8192).await;
    let entry = |off: u64, name: &str| Dirent {
        qid: Qid::default(),
        offset: off,
        ty: 8,
        name: name.into(),
    };
    let server = async {
        let batches = [
            vec![entry(1, "."), entry(2, "..")],
            vec![entry(3, "a")],
            vec![],
        ];
        for (i, batch) in batches.iter().enumerate() {
            let (tag, msg) = f.recv().await;
            let want_offset = [0, 2, 3][i];
            assert_eq!(
                msg,
                Fcall::Treaddir(Treaddir {
                    fid: 4,
                    offset: want_offset,
                    count: 8192 - 24
                })
            );
            let mut b = BytesMut::new();
            batch.iter().for_each(|e| e.encode(&mut b));
            f.send(tag, Rreaddir { data: b.freeze() }).await;
        }
    };
    let (entries, ()) = tokio::join!(c.readdir(4), server);
    let names: Vec<String> = entries.unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, [".", "..", "a"]);
}

#[tokio::test]
async fn deep_paths_take_several_walks() {
    let (c, mut f) = pair(Dialect::P9P2000L, 8192).await;
    let path = (0..20)
        .map(|i| format!("d{i}"))
        .collect::<Vec<_>>()
        .join("/");
    let server = async {
        let (tag, msg) = f.recv().await;
        let Fcall::Twalk(w) = msg else { panic!() };
        assert_eq!((w.fid, w.newfid, w.wnames.len()), (1, 2, 16));
        f.send(
            tag,
            Rwalk {
                wqids: vec![Qid::default(); 16],
            },
        )
        .await;
        let (tag, msg) = f.recv().await;
        let Fcall::Twalk(w) = msg else { panic!() };
        assert_eq!((w.fid, w.newfid, w.wnames.len()), (2, 2, 4));
        assert_eq!(w.wnames[3], "d19");
        f.send(
            tag,
            Rwalk {
                wqids: vec![Qid::default(); 4],
            },
        )
        .await;
    };
    let path = format!("/{path}/");
    let (qids, ()) = tokio::join!(c.walk_path(1, 2, &path), server);
    assert_eq!(qids.unwrap().len(), 20);
    // A short walk is an error.
    let (r, ()) = tokio::join!(c.walk_path(1, 3, "a/b/c"), async {
        let (tag, _) = f.recv().await;
        f.send(
            tag,
            Rwalk {
                wqids: vec![Qid::default()],
            },
        )
        .await;
    });
    assert!(
        matches!(
            r,
            Err(ClientError::WalkIncomplete {
                walked: 1,
                requested: 3
            })
        ),
        "{r:?}"
    );
}

#[tokio::test]
async fn raw_frames() {
    let (c, mut f) = pair(Dialect::P9P2000L, 8192).await;
    // rpc_raw: the tag bytes are replaced by a free tag.
    let frame = [11, 0, 0, 0, TCLUNK, 0xaa, 0xbb, 5, 0, 0, 0];
    let (r, ()) = tokio::join!(c.rpc_raw(&frame), async {
        let (tag, msg) = f.recv().await;
        assert_ne!(tag, 0xbbaa);
        assert_eq!(msg, Fcall::Tclunk(Tclunk { fid: 5 }));
        f.send(tag, Rlerror { ecode: 9 }).await;
    });
    assert_eq!(r.unwrap_err().errno(), Some(9));
    // send_raw: bytes go out verbatim; the reply is unsolicited.
    c.send_raw(Bytes::from_static(&[
        11, 0, 0, 0, TCLUNK, 0x34, 0x12, 6, 0, 0, 0,
    ]))
    .await
    .unwrap();
    let (tag, msg) = f.recv().await;
    assert_eq!((tag, msg), (0x1234, Fcall::Tclunk(Tclunk { fid: 6 })));
    f.send(0x1234, Rclunk {}).await;
    // Round-trip something to be sure the unsolicited reply was processed.
    let (r, ()) = tokio::join!(c.clunk(1), async {
        let (tag, _) = f.recv().await;
        f.send(tag, Rclunk {}).await;
    });
    r.unwrap();
    assert_eq!(c.unsolicited_replies(), 1);
}

#[tokio::test]
async fn server_hangup_fails_pending_and_later_requests() {
    let (c, mut f) = pair(Dialect::P9P2000L, 8192).await;
    let pending = c.start(Tclunk { fid: 1 }).await.unwrap();
    let _ = f.recv().await;
    drop(f);
    assert!(matches!(pending.wait().await, Err(ClientError::Closed)));
    assert!(matches!(c.clunk(2).await, Err(ClientError::Closed)));
}

#[tokio::test]
async fn oversized_reply_closes_the_connection() {
    let (c, mut f) = pair(Dialect::P9P2000L, 100).await;
    let pending = c
        .start(Tread {
            fid: 1,
            offset: 0,
            count: 10,
        })
        .await
        .unwrap();
    let (tag, _) = f.recv().await;
    f.send(
        tag,
        Rread {
            data: Bytes::from(vec![0; 200]),
        },
    )
    .await;
    assert!(matches!(pending.wait().await, Err(ClientError::Closed)));
}

#[tokio::test]
async fn dropping_the_client_closes_the_stream() {
    let (c, mut f) = pair(Dialect::P9P2000L, 8192).await;
    c.send_raw(Bytes::from_static(&[11, 0, 0, 0, TCLUNK, 1, 0, 6, 0, 0, 0]))
        .await
        .unwrap();
    drop(c);
    // Queued frames still go out, then the stream ends.
    assert_eq!(f.recv().await, (1, Fcall::Tclunk(Tclunk { fid: 6 })));
    assert!(f.eof().await);
}

#[tokio::test]
async fn close_waits_for_the_writer() {
    let (c, mut f) = pair(Dialect::P9P2000L, 8192).await;
    c.send_raw(Bytes::from_static(&[11, 0, 0, 0, TCLUNK, 1, 0, 6, 0, 0, 0]))
        .await
        .unwrap();
    c.close().await;
    assert_eq!(f.recv().await, (1, Fcall::Tclunk(Tclunk { fid: 6 })));
    assert!(f.eof().await);
}
