//! The storage dialect: the messages envoyds, tools and tests exchange with a storage service.
//!
//! Framed like 9P (`size[4] type[1] tag[2] body`, little-endian, `size` counting itself), so
//! that it runs over every transport unchanged; a T-message of type `t` is answered by type
//! `t + 1` or by `Rerror`, with the request's tag. `Tversion` (tag `NOTAG`) opens a
//! connection and fixes the largest frame either side sends.
//!
//! Fields: integers little-endian; an id is 32 raw bytes; a string is `len[2] utf8[len]`; a
//! list is `n[2]` (or `n[4]` where marked) elements; `data` is the rest of the frame (no
//! length), so object content is a zero-copy slice of the received frame.
//!
//! | T | fields | R | fields |
//! | --- | --- | --- | --- |
//! | 100 Tversion | `msize[4] version[s]` | 101 | `msize[4] version[s]` |
//! |  |  | 107 Rerror | `code[1] version[8] message[s]` |
//! | 130 Tput | `flags[1] id[32] total[8] offset[8] refs[n] data` | 131 | `outcome[1] copies[1]` |
//! | 132 Tget | `flags[1] id[32] offset[8] count[4]` | 133 | `total[8] data` |
//! | 134 Thas | `ids[n]` | 135 | `present[n] (one byte each)` |
//! | 136 Tlist | `after?[1] after[32] max[4]` | 137 | `more[1] n[4]×(id[32] size[8] stamp[8])` |
//! | 138 Trefs | `ids[n]` | 139 | `n × refs[n]` |
//! | 140 Tdelete | `cutoff[8] ids[n]` | 141 | `deleted[8]` |
//! | 142 Trecord | `flags[1] name[s]` | 143 | `present[1] record` |
//! | 144 Tcas | `flags[1] name[s] expected[8] refs[n] value` | 145 | `version[8]` |
//! | 146 Tstorerecord | `name[s] record` | 147 | `stored[1]` |
//! | 148 Trecords | `after[s] max[4]` | 149 | `more[1] n[4]×(name[s] record)` |
//! | 150 Tstats | — | 151 | host stats |
//! | 152 Tcluster | — | 153 | `replicas[1] n × host view` |
//! | 154 Tadmin | `op[1] arg[8]` | 155 | `message[s]` |
//! | 156 Treplicas | `id[32]` | 157 | `hosts: n × name[s]` |
//! | 158 Tdelrecord | `flags[1] name[s] expected[8]` | 159 | `version[8]` |
//!
//! A record is `version[8] deleted[1] refs[n] vlen[4] value[vlen]`; `deleted` marks a
//! tombstone (no refs, no value): `Trecord` without [`REPLICATED`], `Trecords` and
//! `Tstorerecord` carry tombstones, so that replicas compare versions whatever they hold. A put of an object larger than one
//! frame is sent as several `Tput`s of the same id, `offset` rising from 0 to `total`, in
//! order on one connection; the last one is answered when the object is stored, the others
//! at once. `flags` bit 0 ([`REPLICATED`]) asks the receiving envoyd to act for the whole
//! cluster (place, replicate, fail over) instead of on its own disk only.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::local::{LocalStats, ObjectInfo, PutOutcome, Record};
use crate::{ErrorCode, ObjectId, StoreError};

/// The version string of this dialect.
pub const VERSION: &str = "Envoy.storage.2";
/// The tag of `Tversion`.
pub const NOTAG: u16 = 0xFFFF;
/// Room for every header in front of an object's content in a `Tput`/`Rget`.
pub const HEADER_ROOM: u32 = 64 * 1024;
/// The largest frame either side may ask for: a 16 MiB object in one frame.
pub const MAX_MSIZE: u32 = (16 << 20) + HEADER_ROOM;
/// The smallest frame size a connection may settle on.
pub const MIN_MSIZE: u32 = 64 * 1024;
/// Flag: act for the cluster (placement, replicas, failover), not only on this host's disk.
pub const REPLICATED: u8 = 1;
/// Most ids in one `Thas`/`Trefs`/`Tdelete`.
pub const MAX_IDS: usize = 16 * 1024;

const HEADER: usize = 7;

/// Message type numbers.
mod ty {
    pub const TVERSION: u8 = 100;
    pub const RERROR: u8 = 107;
    pub const TPUT: u8 = 130;
    pub const TGET: u8 = 132;
    pub const THAS: u8 = 134;
    pub const TLIST: u8 = 136;
    pub const TREFS: u8 = 138;
    pub const TDELETE: u8 = 140;
    pub const TRECORD: u8 = 142;
    pub const TCAS: u8 = 144;
    pub const TSTORERECORD: u8 = 146;
    pub const TRECORDS: u8 = 148;
    pub const TSTATS: u8 = 150;
    pub const TCLUSTER: u8 = 152;
    pub const TADMIN: u8 = 154;
    pub const TREPLICAS: u8 = 156;
    pub const TDELRECORD: u8 = 158;
}

/// Maintenance work an admin can start on a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminOp {
    /// Re-hash every local object, repairing bad copies from replicas.
    Scrub = 1,
    /// Re-replicate: bring every local object to R copies on live hosts.
    Repair = 2,
    /// Collect garbage across the cluster; `arg` is the grace period in seconds.
    Gc = 3,
    /// Re-read the membership file.
    Reload = 4,
    /// Reclaim dead space in this host's segments.
    Compact = 5,
}

impl AdminOp {
    fn from_u8(b: u8) -> Option<AdminOp> {
        Some(match b {
            1 => AdminOp::Scrub,
            2 => AdminOp::Repair,
            3 => AdminOp::Gc,
            4 => AdminOp::Reload,
            5 => AdminOp::Compact,
            _ => return None,
        })
    }
}

/// A request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Open the connection: the largest frame the client accepts, and the dialect.
    Version {
        /// Largest frame.
        msize: u32,
        /// [`VERSION`].
        version: String,
    },
    /// Store an object (or the piece `offset..offset+data.len()` of one of `total` bytes).
    Put {
        /// [`REPLICATED`] or 0.
        flags: u8,
        /// The object's claimed id.
        id: ObjectId,
        /// Its whole size.
        total: u64,
        /// Where this piece starts.
        offset: u64,
        /// The objects it refers to (sent with the first piece).
        refs: Vec<ObjectId>,
        /// The piece.
        data: Bytes,
    },
    /// Read `count` bytes at `offset` of an object.
    Get {
        /// [`REPLICATED`] or 0.
        flags: u8,
        /// The object.
        id: ObjectId,
        /// Where to start.
        offset: u64,
        /// How many bytes at most.
        count: u32,
    },
    /// Which of these objects are stored here.
    Has {
        /// The objects.
        ids: Vec<ObjectId>,
    },
    /// Objects stored here, in id order after `after`.
    List {
        /// Start after this id (from the beginning if `None`).
        after: Option<ObjectId>,
        /// Most entries.
        max: u32,
    },
    /// The references of these objects (as stored here).
    Refs {
        /// The objects.
        ids: Vec<ObjectId>,
    },
    /// GC's sweep: drop these objects if last put before `cutoff` (Unix seconds).
    Delete {
        /// Spare objects put at or after this time.
        cutoff: u64,
        /// The objects.
        ids: Vec<ObjectId>,
    },
    /// Read a mutable record (without [`REPLICATED`]: this host's copy, a tombstone
    /// included).
    Record {
        /// [`REPLICATED`] or 0.
        flags: u8,
        /// Its name.
        name: String,
    },
    /// Compare-and-set a record.
    Cas {
        /// [`REPLICATED`] or 0.
        flags: u8,
        /// Its name.
        name: String,
        /// The version it must be at (0: absent).
        expected: u64,
        /// The objects the new value keeps alive.
        refs: Vec<ObjectId>,
        /// The new value.
        value: Bytes,
    },
    /// Replication: store a record if newer than the local one.
    StoreRecord {
        /// Its name.
        name: String,
        /// The record.
        record: Record,
    },
    /// Records stored here, in name order after `after`.
    Records {
        /// Start after this name ("" for the beginning).
        after: String,
        /// Most entries.
        max: u32,
    },
    /// This host's usage and maintenance progress.
    Stats,
    /// The cluster as this host sees it.
    Cluster,
    /// Start maintenance work.
    Admin {
        /// What.
        op: AdminOp,
        /// Its argument.
        arg: u64,
    },
    /// Which live hosts hold a copy of the object.
    Replicas {
        /// The object.
        id: ObjectId,
    },
    /// Delete a record at a version (compare-and-set): a tombstone takes its place.
    DeleteRecord {
        /// [`REPLICATED`] or 0.
        flags: u8,
        /// Its name.
        name: String,
        /// The version it must be at.
        expected: u64,
    },
}

/// Progress of a host's maintenance work.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// A scrub is running.
    pub scrub_running: bool,
    /// Objects the (last) scrub checks.
    pub scrub_total: u64,
    /// Objects it has checked.
    pub scrub_checked: u64,
    /// Bytes it has checked.
    pub scrub_bytes: u64,
    /// Corrupt copies it found.
    pub scrub_corrupt: u64,
    /// Corrupt copies repaired from replicas.
    pub scrub_repaired: u64,
    /// Scrubs finished since start.
    pub scrubs_done: u64,
    /// A re-replication pass is running.
    pub repair_running: bool,
    /// Objects the (last) pass examined.
    pub repair_scanned: u64,
    /// Copies it made.
    pub repair_copied: u64,
    /// Objects it could not bring to R copies.
    pub repair_failed: u64,
    /// Passes finished since start.
    pub repairs_done: u64,
    /// A GC is running (coordinated from here).
    pub gc_running: bool,
    /// Objects the last GC deleted.
    pub gc_deleted: u64,
    /// GCs finished since start.
    pub gcs_done: u64,
}

/// One host's state: its usage and maintenance progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostStats {
    /// The host's name in the membership.
    pub host: String,
    /// Its store's figures.
    pub local: LocalStats,
    /// Its maintenance progress.
    pub maintenance: Maintenance,
}

/// How a host looks from the coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostState {
    /// Answering.
    Up = 1,
    /// Not answering (its copies are skipped, new writes go to the next host).
    Down = 2,
    /// Declared lost: out of placement; its objects are re-replicated elsewhere.
    Lost = 3,
}

/// One host in [`Reply::Cluster`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostView {
    /// Its name.
    pub name: String,
    /// Its storage endpoint.
    pub endpoint: String,
    /// Up, down or lost.
    pub state: HostState,
    /// Round-trip time of the last probe, microseconds (0 if unknown).
    pub rtt_us: u32,
    /// Its figures (when up).
    pub stats: Option<HostStats>,
    /// Why it is down (when down).
    pub error: String,
}

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The settled frame size and dialect (`"unknown"` if refused).
    Version {
        /// Largest frame.
        msize: u32,
        /// The dialect.
        version: String,
    },
    /// A failure.
    Error {
        /// Its class.
        code: ErrorCode,
        /// The current version of a record, for conflicts.
        version: u64,
        /// What happened, for humans.
        message: String,
    },
    /// The put is done (or, for a piece of a larger object, accepted).
    Put {
        /// Stored or already there.
        outcome: PutOutcome,
        /// Copies now held (1 for a local put).
        copies: u8,
    },
    /// Object bytes.
    Get {
        /// The object's size.
        total: u64,
        /// The bytes asked for.
        data: Bytes,
    },
    /// Presence, one per id asked.
    Has {
        /// Presence.
        present: Vec<bool>,
    },
    /// A page of objects.
    List {
        /// The entries.
        objects: Vec<ObjectInfo>,
        /// More follow.
        more: bool,
    },
    /// References, one list per id asked.
    Refs {
        /// The lists.
        refs: Vec<Vec<ObjectId>>,
    },
    /// Objects dropped.
    Delete {
        /// How many.
        deleted: u64,
    },
    /// A record, if present.
    Record {
        /// It.
        record: Option<Record>,
    },
    /// The compare-and-set succeeded with this version.
    Cas {
        /// The new version.
        version: u64,
    },
    /// Whether a replicated record was newer and stored.
    StoreRecord {
        /// Stored.
        stored: bool,
    },
    /// A page of records.
    Records {
        /// The records by name.
        records: Vec<(String, Record)>,
        /// More follow.
        more: bool,
    },
    /// This host's figures.
    Stats(HostStats),
    /// The cluster's hosts.
    Cluster {
        /// Replicas per object.
        replicas: u8,
        /// Every host of the membership.
        hosts: Vec<HostView>,
    },
    /// Maintenance started (or why not).
    Admin {
        /// What happened.
        message: String,
    },
    /// Hosts holding a copy.
    Replicas {
        /// Their names.
        hosts: Vec<String>,
    },
    /// The record is deleted: its tombstone's version.
    DeleteRecord {
        /// The tombstone's version.
        version: u64,
    },
}

impl Reply {
    /// The error reply for `e`.
    pub fn error(e: &StoreError) -> Reply {
        Reply::Error {
            code: e.code(),
            version: e.version(),
            message: e.to_string(),
        }
    }
}

fn bad(what: impl Into<String>) -> StoreError {
    StoreError::Protocol(what.into())
}

/// Reads fields from the front of a frame, checking every length first.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize, what: &str) -> Result<(), StoreError> {
        if self.0.remaining() < n {
            Err(bad(format!("truncated {what}")))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self, what: &str) -> Result<u8, StoreError> {
        self.need(1, what)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self, what: &str) -> Result<u16, StoreError> {
        self.need(2, what)?;
        Ok(self.0.get_u16_le())
    }
    fn u32(&mut self, what: &str) -> Result<u32, StoreError> {
        self.need(4, what)?;
        Ok(self.0.get_u32_le())
    }
    fn u64(&mut self, what: &str) -> Result<u64, StoreError> {
        self.need(8, what)?;
        Ok(self.0.get_u64_le())
    }
    fn bool(&mut self, what: &str) -> Result<bool, StoreError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(bad(format!("{what} is {b}, not 0 or 1"))),
        }
    }
    fn id(&mut self, what: &str) -> Result<ObjectId, StoreError> {
        self.need(32, what)?;
        let mut id = [0u8; 32];
        self.0.copy_to_slice(&mut id);
        Ok(ObjectId(id))
    }
    fn str(&mut self, what: &str) -> Result<String, StoreError> {
        let n = usize::from(self.u16(what)?);
        self.need(n, what)?;
        let b = self.0.split_to(n);
        String::from_utf8(b.to_vec()).map_err(|_| bad(format!("{what} is not UTF-8")))
    }
    /// A counted list of ids (`n[2]`), at most [`MAX_IDS`].
    fn ids(&mut self, what: &str) -> Result<Vec<ObjectId>, StoreError> {
        let n = usize::from(self.u16(what)?);
        if n > MAX_IDS {
            return Err(bad(format!("{n} {what} (at most {MAX_IDS})")));
        }
        self.need(32 * n, what)?;
        (0..n).map(|_| self.id(what)).collect()
    }
    fn bytes(&mut self, n: usize, what: &str) -> Result<Bytes, StoreError> {
        self.need(n, what)?;
        Ok(self.0.split_to(n))
    }
    fn record(&mut self) -> Result<Record, StoreError> {
        let version = self.u64("record version")?;
        let deleted = self.bool("record deleted")?;
        let refs = self.ids("record refs")?;
        let n = self.u32("record value length")? as usize;
        let value = self.bytes(n, "record value")?;
        if deleted && (!refs.is_empty() || !value.is_empty()) {
            return Err(bad("a tombstone with refs or a value"));
        }
        Ok(Record {
            version,
            value,
            refs,
            deleted,
        })
    }
    /// A count (`n[4]`) of elements at least `min` bytes each: refused if the frame is too
    /// short to hold them, before anything is allocated for them.
    fn count(&mut self, min: usize, what: &str) -> Result<usize, StoreError> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min) > self.0.remaining() {
            return Err(bad(format!("{n} {what} do not fit in the frame")));
        }
        Ok(n)
    }
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.0)
    }
    fn end(&self, what: &str) -> Result<(), StoreError> {
        if self.0.has_remaining() {
            Err(bad(format!(
                "{} bytes after the end of {what}",
                self.0.remaining()
            )))
        } else {
            Ok(())
        }
    }
}

/// Appends fields to a frame.
struct Writer(BytesMut);

impl Writer {
    fn new(ty: u8, tag: u16, capacity: usize) -> Writer {
        let mut buf = BytesMut::with_capacity(HEADER + capacity);
        buf.put_u32_le(0);
        buf.put_u8(ty);
        buf.put_u16_le(tag);
        Writer(buf)
    }
    fn u8(&mut self, v: u8) {
        self.0.put_u8(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.put_u16_le(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.put_u32_le(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.put_u64_le(v);
    }
    fn id(&mut self, id: &ObjectId) {
        self.0.put_slice(&id.0);
    }
    fn str(&mut self, s: &str) {
        let mut end = s.len().min(usize::from(u16::MAX));
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16);
        self.0.put_slice(&s.as_bytes()[..end]);
    }
    fn ids(&mut self, ids: &[ObjectId]) {
        let n = ids.len().min(MAX_IDS);
        self.u16(n as u16);
        for id in &ids[..n] {
            self.id(id);
        }
    }
    fn record(&mut self, r: &Record) {
        self.u64(r.version);
        self.u8(u8::from(r.deleted));
        self.ids(&r.refs);
        self.u32(r.value.len() as u32);
        self.0.put_slice(&r.value);
    }
    /// The frame, its size field filled in.
    fn finish(mut self) -> BytesMut {
        let size = self.0.len() as u32;
        self.0[..4].copy_from_slice(&size.to_le_bytes());
        self.0
    }
}

/// Split a frame into its type, tag and body (the transport has checked its size field).
fn header(frame: Bytes) -> Result<(u8, u16, Reader), StoreError> {
    if frame.len() < HEADER {
        return Err(bad(format!("frame of {} bytes", frame.len())));
    }
    let size = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    if size != frame.len() {
        return Err(bad(format!(
            "size field {size} for a frame of {}",
            frame.len()
        )));
    }
    let ty = frame[4];
    let tag = u16::from_le_bytes([frame[5], frame[6]]);
    Ok((ty, tag, Reader(frame.slice(HEADER..))))
}

/// The tag of a frame, if its header is whole (to answer even an undecodable request).
pub fn peek_tag(frame: &[u8]) -> Option<u16> {
    (frame.len() >= HEADER).then(|| u16::from_le_bytes([frame[5], frame[6]]))
}

impl Request {
    /// Decode a request frame into its tag and request. An error names what is malformed.
    pub fn decode(frame: Bytes) -> Result<(u16, Request), StoreError> {
        let (ty, tag, mut r) = header(frame)?;
        let req = match ty {
            ty::TVERSION => Request::Version {
                msize: r.u32("msize")?,
                version: r.str("version")?,
            },
            ty::TPUT => {
                let flags = r.u8("flags")?;
                let id = r.id("id")?;
                let total = r.u64("total")?;
                let offset = r.u64("offset")?;
                let refs = r.ids("refs")?;
                let data = r.rest();
                if offset
                    .checked_add(data.len() as u64)
                    .is_none_or(|end| end > total)
                {
                    return Err(bad(format!(
                        "put piece {offset}+{} beyond the object's {total} bytes",
                        data.len()
                    )));
                }
                Request::Put {
                    flags,
                    id,
                    total,
                    offset,
                    refs,
                    data,
                }
            }
            ty::TGET => Request::Get {
                flags: r.u8("flags")?,
                id: r.id("id")?,
                offset: r.u64("offset")?,
                count: r.u32("count")?,
            },
            ty::THAS => Request::Has { ids: r.ids("ids")? },
            ty::TLIST => {
                let some = r.bool("after flag")?;
                let id = r.id("after")?;
                Request::List {
                    after: some.then_some(id),
                    max: r.u32("max")?,
                }
            }
            ty::TREFS => Request::Refs { ids: r.ids("ids")? },
            ty::TDELETE => Request::Delete {
                cutoff: r.u64("cutoff")?,
                ids: r.ids("ids")?,
            },
            ty::TRECORD => Request::Record {
                flags: r.u8("flags")?,
                name: r.str("name")?,
            },
            ty::TCAS => Request::Cas {
                flags: r.u8("flags")?,
                name: r.str("name")?,
                expected: r.u64("expected")?,
                refs: r.ids("refs")?,
                value: r.rest(),
            },
            ty::TSTORERECORD => Request::StoreRecord {
                name: r.str("name")?,
                record: r.record()?,
            },
            ty::TRECORDS => Request::Records {
                after: r.str("after")?,
                max: r.u32("max")?,
            },
            ty::TSTATS => Request::Stats,
            ty::TCLUSTER => Request::Cluster,
            ty::TADMIN => {
                let op = r.u8("op")?;
                Request::Admin {
                    op: AdminOp::from_u8(op).ok_or_else(|| bad(format!("admin op {op}")))?,
                    arg: r.u64("arg")?,
                }
            }
            ty::TREPLICAS => Request::Replicas { id: r.id("id")? },
            ty::TDELRECORD => Request::DeleteRecord {
                flags: r.u8("flags")?,
                name: r.str("name")?,
                expected: r.u64("expected")?,
            },
            other => return Err(bad(format!("unknown request type {other}"))),
        };
        r.end("the request")?;
        Ok((tag, req))
    }

    /// Encode with `tag`.
    pub fn encode(&self, tag: u16) -> Bytes {
        let w = match self {
            Request::Version { msize, version } => {
                let mut w = Writer::new(ty::TVERSION, tag, 6 + version.len());
                w.u32(*msize);
                w.str(version);
                w
            }
            Request::Put {
                flags,
                id,
                total,
                offset,
                refs,
                data,
            } => {
                let mut w = Writer::new(ty::TPUT, tag, 59 + 32 * refs.len() + data.len());
                w.u8(*flags);
                w.id(id);
                w.u64(*total);
                w.u64(*offset);
                w.ids(refs);
                w.0.put_slice(data);
                w
            }
            Request::Get {
                flags,
                id,
                offset,
                count,
            } => {
                let mut w = Writer::new(ty::TGET, tag, 45);
                w.u8(*flags);
                w.id(id);
                w.u64(*offset);
                w.u32(*count);
                w
            }
            Request::Has { ids } => {
                let mut w = Writer::new(ty::THAS, tag, 2 + 32 * ids.len());
                w.ids(ids);
                w
            }
            Request::List { after, max } => {
                let mut w = Writer::new(ty::TLIST, tag, 37);
                w.u8(u8::from(after.is_some()));
                w.id(&after.unwrap_or(ObjectId([0; 32])));
                w.u32(*max);
                w
            }
            Request::Refs { ids } => {
                let mut w = Writer::new(ty::TREFS, tag, 2 + 32 * ids.len());
                w.ids(ids);
                w
            }
            Request::Delete { cutoff, ids } => {
                let mut w = Writer::new(ty::TDELETE, tag, 10 + 32 * ids.len());
                w.u64(*cutoff);
                w.ids(ids);
                w
            }
            Request::Record { flags, name } => {
                let mut w = Writer::new(ty::TRECORD, tag, 3 + name.len());
                w.u8(*flags);
                w.str(name);
                w
            }
            Request::Cas {
                flags,
                name,
                expected,
                refs,
                value,
            } => {
                let mut w = Writer::new(
                    ty::TCAS,
                    tag,
                    13 + name.len() + 32 * refs.len() + value.len(),
                );
                w.u8(*flags);
                w.str(name);
                w.u64(*expected);
                w.ids(refs);
                w.0.put_slice(value);
                w
            }
            Request::StoreRecord { name, record } => {
                let mut w = Writer::new(
                    ty::TSTORERECORD,
                    tag,
                    16 + name.len() + 32 * record.refs.len() + record.value.len(),
                );
                w.str(name);
                w.record(record);
                w
            }
            Request::Records { after, max } => {
                let mut w = Writer::new(ty::TRECORDS, tag, 6 + after.len());
                w.str(after);
                w.u32(*max);
                w
            }
            Request::Stats => Writer::new(ty::TSTATS, tag, 0),
            Request::Cluster => Writer::new(ty::TCLUSTER, tag, 0),
            Request::Admin { op, arg } => {
                let mut w = Writer::new(ty::TADMIN, tag, 9);
                w.u8(*op as u8);
                w.u64(*arg);
                w
            }
            Request::Replicas { id } => {
                let mut w = Writer::new(ty::TREPLICAS, tag, 32);
                w.id(id);
                w
            }
            Request::DeleteRecord {
                flags,
                name,
                expected,
            } => {
                let mut w = Writer::new(ty::TDELRECORD, tag, 11 + name.len());
                w.u8(*flags);
                w.str(name);
                w.u64(*expected);
                w
            }
        };
        w.finish().freeze()
    }

    /// The type number of this request (its reply is one more).
    fn ty(&self) -> u8 {
        match self {
            Request::Version { .. } => ty::TVERSION,
            Request::Put { .. } => ty::TPUT,
            Request::Get { .. } => ty::TGET,
            Request::Has { .. } => ty::THAS,
            Request::List { .. } => ty::TLIST,
            Request::Refs { .. } => ty::TREFS,
            Request::Delete { .. } => ty::TDELETE,
            Request::Record { .. } => ty::TRECORD,
            Request::Cas { .. } => ty::TCAS,
            Request::StoreRecord { .. } => ty::TSTORERECORD,
            Request::Records { .. } => ty::TRECORDS,
            Request::Stats => ty::TSTATS,
            Request::Cluster => ty::TCLUSTER,
            Request::Admin { .. } => ty::TADMIN,
            Request::Replicas { .. } => ty::TREPLICAS,
            Request::DeleteRecord { .. } => ty::TDELRECORD,
        }
    }
}

fn stats_write(w: &mut Writer, s: &HostStats) {
    w.str(&s.host);
    let l = &s.local;
    for v in [
        l.objects,
        l.bytes,
        l.disk_bytes,
        l.fs_total,
        l.fs_free,
        l.quarantined,
        l.records,
    ] {
        w.u64(v);
    }
    let m = &s.maintenance;
    for b in [m.scrub_running, m.repair_running, m.gc_running] {
        w.u8(u8::from(b));
    }
    for v in [
        m.scrub_total,
        m.scrub_checked,
        m.scrub_bytes,
        m.scrub_corrupt,
        m.scrub_repaired,
        m.scrubs_done,
        m.repair_scanned,
        m.repair_copied,
        m.repair_failed,
        m.repairs_done,
        m.gc_deleted,
        m.gcs_done,
    ] {
        w.u64(v);
    }
}

fn stats_read(r: &mut Reader) -> Result<HostStats, StoreError> {
    let host = r.str("host")?;
    let mut u = || r.u64("stats");
    let local = LocalStats {
        objects: u()?,
        bytes: u()?,
        disk_bytes: u()?,
        fs_total: u()?,
        fs_free: u()?,
        quarantined: u()?,
        records: u()?,
    };
    let scrub_running = r.bool("scrub running")?;
    let repair_running = r.bool("repair running")?;
    let gc_running = r.bool("gc running")?;
    let mut u = || r.u64("maintenance");
    let maintenance = Maintenance {
        scrub_running,
        repair_running,
        gc_running,
        scrub_total: u()?,
        scrub_checked: u()?,
        scrub_bytes: u()?,
        scrub_corrupt: u()?,
        scrub_repaired: u()?,
        scrubs_done: u()?,
        repair_scanned: u()?,
        repair_copied: u()?,
        repair_failed: u()?,
        repairs_done: u()?,
        gc_deleted: u()?,
        gcs_done: u()?,
    };
    Ok(HostStats {
        host,
        local,
        maintenance,
    })
}

impl Reply {
    /// Encode as the answer to `request` with `tag`.
    pub fn encode(&self, request_ty: RequestType, tag: u16) -> Bytes {
        let ty = match self {
            Reply::Error { .. } => ty::RERROR,
            _ => request_ty.0 + 1,
        };
        let mut w = match self {
            Reply::Get { data, .. } => Writer::new(ty, tag, 8 + data.len()),
            _ => Writer::new(ty, tag, 64),
        };
        match self {
            Reply::Version { msize, version } => {
                w.u32(*msize);
                w.str(version);
            }
            Reply::Error {
                code,
                version,
                message,
            } => {
                w.u8(*code as u8);
                w.u64(*version);
                w.str(message);
            }
            Reply::Put { outcome, copies } => {
                w.u8(match outcome {
                    PutOutcome::Stored => 0,
                    PutOutcome::Present => 1,
                });
                w.u8(*copies);
            }
            Reply::Get { total, data } => {
                w.u64(*total);
                w.0.put_slice(data);
            }
            Reply::Has { present } => {
                w.u16(present.len() as u16);
                for p in present {
                    w.u8(u8::from(*p));
                }
            }
            Reply::List { objects, more } => {
                w.u8(u8::from(*more));
                w.u32(objects.len() as u32);
                for o in objects {
                    w.id(&o.id);
                    w.u64(o.size);
                    w.u64(o.stamp);
                }
            }
            Reply::Refs { refs } => {
                w.u16(refs.len() as u16);
                for r in refs {
                    w.ids(r);
                }
            }
            Reply::Delete { deleted } => w.u64(*deleted),
            Reply::Record { record } => match record {
                Some(r) => {
                    w.u8(1);
                    w.record(r);
                }
                None => w.u8(0),
            },
            Reply::Cas { version } => w.u64(*version),
            Reply::StoreRecord { stored } => w.u8(u8::from(*stored)),
            Reply::Records { records, more } => {
                w.u8(u8::from(*more));
                w.u32(records.len() as u32);
                for (name, r) in records {
                    w.str(name);
                    w.record(r);
                }
            }
            Reply::Stats(s) => stats_write(&mut w, s),
            Reply::Cluster { replicas, hosts } => {
                w.u8(*replicas);
                w.u16(hosts.len() as u16);
                for h in hosts {
                    w.str(&h.name);
                    w.str(&h.endpoint);
                    w.u8(h.state as u8);
                    w.u32(h.rtt_us);
                    w.str(&h.error);
                    match &h.stats {
                        Some(s) => {
                            w.u8(1);
                            stats_write(&mut w, s);
                        }
                        None => w.u8(0),
                    }
                }
            }
            Reply::Admin { message } => w.str(message),
            Reply::Replicas { hosts } => {
                w.u16(hosts.len() as u16);
                for h in hosts {
                    w.str(h);
                }
            }
            Reply::DeleteRecord { version } => w.u64(*version),
        }
        w.finish().freeze()
    }

    /// Decode the reply to a request of type `request`: its tag and the reply. A frame of the
    /// wrong type for the request, or malformed, is an error.
    pub fn decode(frame: Bytes, request: RequestType) -> Result<(u16, Reply), StoreError> {
        let (ty, tag, mut r) = header(frame)?;
        if ty == ty::RERROR {
            let code = ErrorCode::from_u8(r.u8("error code")?);
            let version = r.u64("error version")?;
            let message = r.str("error message")?;
            r.end("Rerror")?;
            return Ok((
                tag,
                Reply::Error {
                    code,
                    version,
                    message,
                },
            ));
        }
        if ty != request.0 + 1 {
            return Err(bad(format!(
                "reply type {ty} to a request of type {}",
                request.0
            )));
        }
        let reply = match request.0 {
            ty::TVERSION => Reply::Version {
                msize: r.u32("msize")?,
                version: r.str("version")?,
            },
            ty::TPUT => Reply::Put {
                outcome: if r.bool("outcome")? {
                    PutOutcome::Present
                } else {
                    PutOutcome::Stored
                },
                copies: r.u8("copies")?,
            },
            ty::TGET => Reply::Get {
                total: r.u64("total")?,
                data: r.rest(),
            },
            ty::THAS => {
                let n = usize::from(r.u16("count")?);
                r.need(n, "presence")?;
                let present = (0..n)
                    .map(|_| r.bool("presence"))
                    .collect::<Result<_, _>>()?;
                Reply::Has { present }
            }
            ty::TLIST => {
                let more = r.bool("more")?;
                let n = r.count(48, "list entries")?;
                let mut objects = Vec::with_capacity(n);
                for _ in 0..n {
                    objects.push(ObjectInfo {
                        id: r.id("id")?,
                        size: r.u64("size")?,
                        stamp: r.u64("stamp")?,
                    });
                }
                Reply::List { objects, more }
            }
            ty::TREFS => {
                let n = usize::from(r.u16("count")?);
                r.need(2 * n, "refs")?;
                let refs = (0..n).map(|_| r.ids("refs")).collect::<Result<_, _>>()?;
                Reply::Refs { refs }
            }
            ty::TDELETE => Reply::Delete {
                deleted: r.u64("deleted")?,
            },
            ty::TRECORD => Reply::Record {
                record: if r.bool("present")? {
                    Some(r.record()?)
                } else {
                    None
                },
            },
            ty::TCAS => Reply::Cas {
                version: r.u64("version")?,
            },
            ty::TSTORERECORD => Reply::StoreRecord {
                stored: r.bool("stored")?,
            },
            ty::TRECORDS => {
                let more = r.bool("more")?;
                let n = r.count(16, "records")?;
                let mut records = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = r.str("name")?;
                    records.push((name, r.record()?));
                }
                Reply::Records { records, more }
            }
            ty::TSTATS => Reply::Stats(stats_read(&mut r)?),
            ty::TCLUSTER => {
                let replicas = r.u8("replicas")?;
                let n = usize::from(r.u16("hosts")?);
                r.need(n * 12, "hosts")?;
                let mut hosts = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = r.str("name")?;
                    let endpoint = r.str("endpoint")?;
                    let state = match r.u8("state")? {
                        1 => HostState::Up,
                        2 => HostState::Down,
                        3 => HostState::Lost,
                        s => return Err(bad(format!("host state {s}"))),
                    };
                    let rtt_us = r.u32("rtt")?;
                    let error = r.str("error")?;
                    let stats = if r.bool("stats flag")? {
                        Some(stats_read(&mut r)?)
                    } else {
                        None
                    };
                    hosts.push(HostView {
                        name,
                        endpoint,
                        state,
                        rtt_us,
                        stats,
                        error,
                    });
                }
                Reply::Cluster { replicas, hosts }
            }
            ty::TADMIN => Reply::Admin {
                message: r.str("message")?,
            },
            ty::TREPLICAS => {
                let n = usize::from(r.u16("hosts")?);
                r.need(2 * n, "hosts")?;
                let hosts = (0..n).map(|_| r.str("host")).collect::<Result<_, _>>()?;
                Reply::Replicas { hosts }
            }
            ty::TDELRECORD => Reply::DeleteRecord {
                version: r.u64("version")?,
            },
            other => return Err(bad(format!("no reply defined for type {other}"))),
        };
        r.end("the reply")?;
        Ok((tag, reply))
    }
}

/// The type of a request, kept to decode and encode its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestType(u8);

impl RequestType {
    /// The type of `request`.
    pub fn of(request: &Request) -> RequestType {
        RequestType(request.ty())
    }

    /// The type of a raw request frame, if known (to answer an undecodable one).
    pub fn peek(frame: &[u8]) -> RequestType {
        RequestType(frame.get(4).copied().unwrap_or(0))
    }
}

/// Turn an error reply back into the error it was raised as (as far as its class allows):
/// `about` is the object or record the request was about, for the variants that name one.
pub fn error_from_reply(
    code: ErrorCode,
    version: u64,
    message: String,
    about: About<'_>,
) -> StoreError {
    match (code, about) {
        (ErrorCode::NotFound, About::Object(id)) => StoreError::NotFound(*id),
        (ErrorCode::Corrupt, About::Object(id)) => StoreError::Corrupt {
            id: *id,
            detail: message,
        },
        (ErrorCode::Conflict, About::Record(name)) => StoreError::Conflict {
            name: name.to_owned(),
            expected: 0,
            current: version,
        },
        (ErrorCode::Protocol, _) => StoreError::Protocol(message),
        (code, _) => StoreError::Remote { code, message },
    }
}

/// What a request was about, to rebuild typed errors from replies.
#[derive(Clone, Copy, Debug)]
pub enum About<'a> {
    /// An object.
    Object(&'a ObjectId),
    /// A record.
    Record(&'a str),
    /// Nothing in particular.
    Nothing,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests() -> Vec<Request> {
        let id = ObjectId::of(b"x");
        vec![
            Request::Version {
                msize: 1 << 20,
                version: VERSION.into(),
            },
            Request::Put {
                flags: REPLICATED,
                id,
                total: 10,
                offset: 4,
                refs: vec![id, ObjectId([7; 32])],
                data: Bytes::from_static(b"abcdef"),
            },
            Request::Get {
                flags: 0,
                id,
                offset: 3,
                count: 99,
            },
            Request::Has { ids: vec![id; 3] },
            Request::List {
                after: Some(id),
                max: 5,
            },
            Request::List {
                after: None,
                max: 5,
            },
            Request::Refs { ids: vec![id] },
            Request::Delete {
                cutoff: 77,
                ids: vec![id, id],
            },
            Request::Record {
                flags: 1,
                name: "image/root".into(),
            },
            Request::Cas {
                flags: 0,
                name: "r".into(),
                expected: 4,
                refs: vec![id],
                value: Bytes::from_static(b"v"),
            },
            Request::StoreRecord {
                name: "r".into(),
                record: Record {
                    version: 9,
                    value: Bytes::from_static(b"val"),
                    refs: vec![id],
                    deleted: false,
                },
            },
            Request::Records {
                after: "a".into(),
                max: 10,
            },
            Request::Stats,
            Request::Cluster,
            Request::Admin {
                op: AdminOp::Gc,
                arg: 3600,
            },
            Request::Replicas { id },
            Request::DeleteRecord {
                flags: REPLICATED,
                name: "image/vm1@2".into(),
                expected: 3,
            },
            Request::StoreRecord {
                name: "gone".into(),
                record: Record::tombstone(4),
            },
        ]
    }

    fn replies() -> Vec<(Request, Reply)> {
        let id = ObjectId::of(b"y");
        let stats = HostStats {
            host: "h".into(),
            local: LocalStats {
                objects: 1,
                bytes: 2,
                disk_bytes: 3,
                fs_total: 4,
                fs_free: 5,
                quarantined: 6,
                records: 7,
            },
            maintenance: Maintenance {
                scrub_running: true,
                scrub_total: 8,
                repair_copied: 9,
                gcs_done: 10,
                ..Maintenance::default()
            },
        };
        let r = requests();
        vec![
            (
                r[0].clone(),
                Reply::Version {
                    msize: 65536,
                    version: VERSION.into(),
                },
            ),
            (
                r[1].clone(),
                Reply::Put {
                    outcome: PutOutcome::Present,
                    copies: 2,
                },
            ),
            (
                r[2].clone(),
                Reply::Get {
                    total: 100,
                    data: Bytes::from_static(b"data"),
                },
            ),
            (
                r[3].clone(),
                Reply::Has {
                    present: vec![true, false, true],
                },
            ),
            (
                r[4].clone(),
                Reply::List {
                    objects: vec![ObjectInfo {
                        id,
                        size: 3,
                        stamp: 4,
                    }],
                    more: true,
                },
            ),
            (
                r[6].clone(),
                Reply::Refs {
                    refs: vec![vec![id], vec![]],
                },
            ),
            (r[7].clone(), Reply::Delete { deleted: 2 }),
            (
                r[8].clone(),
                Reply::Record {
                    record: Some(Record {
                        version: 1,
                        value: Bytes::from_static(b"q"),
                        refs: vec![id],
                        deleted: false,
                    }),
                },
            ),
            (r[8].clone(), Reply::Record { record: None }),
            (
                r[8].clone(),
                Reply::Record {
                    record: Some(Record::tombstone(7)),
                },
            ),
            (r[16].clone(), Reply::DeleteRecord { version: 4 }),
            (r[9].clone(), Reply::Cas { version: 5 }),
            (r[10].clone(), Reply::StoreRecord { stored: true }),
            (
                r[11].clone(),
                Reply::Records {
                    records: vec![("n".into(), Record::default())],
                    more: false,
                },
            ),
            (r[12].clone(), Reply::Stats(stats.clone())),
            (
                r[13].clone(),
                Reply::Cluster {
                    replicas: 2,
                    hosts: vec![
                        HostView {
                            name: "a".into(),
                            endpoint: "tcp:127.0.0.1:1".into(),
                            state: HostState::Up,
                            rtt_us: 12,
                            stats: Some(stats),
                            error: String::new(),
                        },
                        HostView {
                            name: "b".into(),
                            endpoint: "tcp:127.0.0.1:2".into(),
                            state: HostState::Lost,
                            rtt_us: 0,
                            stats: None,
                            error: "refused".into(),
                        },
                    ],
                },
            ),
            (
                r[14].clone(),
                Reply::Admin {
                    message: "ok".into(),
                },
            ),
            (
                r[15].clone(),
                Reply::Replicas {
                    hosts: vec!["a".into(), "b".into()],
                },
            ),
            (
                r[2].clone(),
                Reply::Error {
                    code: ErrorCode::Corrupt,
                    version: 0,
                    message: "bad".into(),
                },
            ),
        ]
    }

    /// `frame` cut to `len` bytes with its size field rewritten to match.
    fn cut(frame: &Bytes, len: usize) -> Bytes {
        let mut f = frame[..len].to_vec();
        if len >= 4 {
            f[..4].copy_from_slice(&(len as u32).to_le_bytes());
        }
        Bytes::from(f)
    }

    #[test]
    fn every_request_round_trips_and_every_truncation_is_an_error() {
        for (i, req) in requests().into_iter().enumerate() {
            let frame = req.encode(i as u16);
            let (tag, back) = Request::decode(frame.clone()).expect("decode");
            assert_eq!((tag, &back), (i as u16, &req));
            // Data-carrying requests (Put, Cas) accept any tail as their data; the others must
            // refuse every truncation.
            if !matches!(req, Request::Put { .. } | Request::Cas { .. }) {
                for len in 0..frame.len() {
                    assert!(
                        Request::decode(cut(&frame, len)).is_err(),
                        "{req:?} cut to {len} bytes decoded"
                    );
                }
            }
            let mut long = frame.to_vec();
            long.push(0);
            let n = long.len() as u32;
            long[..4].copy_from_slice(&n.to_le_bytes());
            if !matches!(req, Request::Put { .. } | Request::Cas { .. }) {
                assert!(
                    Request::decode(Bytes::from(long)).is_err(),
                    "{req:?} + 1 byte"
                );
            }
        }
    }

    #[test]
    fn every_reply_round_trips_and_truncations_never_panic() {
        for (req, reply) in replies() {
            let ty = RequestType::of(&req);
            let frame = reply.encode(ty, 42);
            let (tag, back) = Reply::decode(frame.clone(), ty).expect("decode");
            assert_eq!((tag, &back), (42, &reply));
            for len in 0..frame.len() {
                let _ = Reply::decode(cut(&frame, len), ty);
            }
            // A reply of another request's type is refused.
            if !matches!(reply, Reply::Error { .. }) {
                let other = RequestType::of(&Request::Stats);
                if other != ty {
                    assert!(Reply::decode(frame, other).is_err());
                }
            }
        }
    }

    #[test]
    fn hostile_counts_are_refused_before_allocation() {
        // Rlist claiming 2^32-1 entries in a 20-byte frame.
        let ty = RequestType::of(&Request::List {
            after: None,
            max: 1,
        });
        let mut f = vec![0u8; 7];
        f[4] = ty::TLIST + 1;
        f.push(0);
        f.extend_from_slice(&u32::MAX.to_le_bytes());
        let n = f.len() as u32;
        f[..4].copy_from_slice(&n.to_le_bytes());
        assert!(Reply::decode(Bytes::from(f), ty).is_err());
        // Thas claiming more ids than the limit.
        let mut f = vec![0u8; 7];
        f[4] = ty::THAS;
        f.extend_from_slice(&u16::MAX.to_le_bytes());
        let n = f.len() as u32;
        f[..4].copy_from_slice(&n.to_le_bytes());
        assert!(Request::decode(Bytes::from(f)).is_err());
        // A put piece reaching past the object's end.
        let p = Request::Put {
            flags: 0,
            id: ObjectId([1; 32]),
            total: 3,
            offset: 2,
            refs: Vec::new(),
            data: Bytes::from_static(b"abc"),
        };
        assert!(Request::decode(p.encode(1)).is_err());
    }
}
