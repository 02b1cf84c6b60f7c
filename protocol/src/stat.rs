//! The 9P2000 / 9P2000.u stat structure, as carried by Rstat, Twstat and directory reads.

use crate::consts::NONUNAME;
use crate::dialect::Dialect;
use crate::error::DecodeError;
use crate::qid::Qid;
use crate::wire::{WireFormat, need};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of the fixed part of a stat after its size field: `type[2] dev[4] qid[13] mode[4]
/// atime[4] mtime[4] length[8]`.
const FIXED_LEN: usize = 2 + 4 + Qid::LEN + 4 + 4 + 4 + 8;

/// A file's metadata (stat(5)): `size[2] type[2] dev[4] qid[13] mode[4] atime[4] mtime[4]
/// length[8] name[s] uid[s] gid[s] muid[s]`, and in 9P2000.u (and whenever
/// [`Dialect::extended`]) `extension[s] n_uid[4] n_gid[4] n_muid[4]` after that.
///
/// The leading `size[2]` is computed on encode and checked on decode: it must cover
/// exactly the fields. Decoding a base-dialect stat leaves the extension empty and the
/// numeric ids at [`NONUNAME`], which is also what [`Stat::default`] holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// For kernel use (Plan 9 device type).
    pub ty: u16,
    /// For kernel use (Plan 9 device instance).
    pub dev: u32,
    /// The file's qid.
    pub qid: Qid,
    /// Permissions and `DM*` flags.
    pub mode: u32,
    /// Last access time, seconds since the epoch.
    pub atime: u32,
    /// Last modification time, seconds since the epoch.
    pub mtime: u32,
    /// File length in bytes (0 for directories).
    pub length: u64,
    /// Last path element (`"/"` for the root).
    pub name: String,
    /// Owner name.
    pub uid: String,
    /// Group name.
    pub gid: String,
    /// Name of the user who last modified the file.
    pub muid: String,
    /// 9P2000.u: symlink target, `"b MAJ MIN"`/`"c MAJ MIN"` for devices, else empty.
    pub extension: String,
    /// 9P2000.u: numeric owner.
    pub n_uid: u32,
    /// 9P2000.u: numeric group.
    pub n_gid: u32,
    /// 9P2000.u: numeric id of the last modifier.
    pub n_muid: u32,
}

impl Default for Stat {
    /// Zero integers, empty strings and [`NONUNAME`] numeric ids.
    fn default() -> Stat {
        Stat {
            ty: 0,
            dev: 0,
            qid: Qid::default(),
            mode: 0,
            atime: 0,
            mtime: 0,
            length: 0,
            name: String::new(),
            uid: String::new(),
            gid: String::new(),
            muid: String::new(),
            extension: String::new(),
            n_uid: NONUNAME,
            n_gid: NONUNAME,
            n_muid: NONUNAME,
        }
    }
}

impl Stat {
    /// The Twstat "don't touch" value (stat(5)): every integer all ones, every string
    /// empty. A client sets only the fields it wants changed.
    pub fn dont_touch() -> Stat {
        Stat {
            ty: !0,
            dev: !0,
            qid: Qid {
                ty: !0,
                version: !0,
                path: !0,
            },
            mode: !0,
            atime: !0,
            mtime: !0,
            length: !0,
            name: String::new(),
            uid: String::new(),
            gid: String::new(),
            muid: String::new(),
            extension: String::new(),
            n_uid: !0,
            n_gid: !0,
            n_muid: !0,
        }
    }

    /// Encoded size in dialect `d`, including the leading `size[2]`.
    pub fn encoded_len(&self, d: Dialect) -> usize {
        let strings = [&self.name, &self.uid, &self.gid, &self.muid];
        let mut len = 2 + FIXED_LEN + strings.iter().map(|s| s.encoded_len(d)).sum::<usize>();
        if d.extended() {
            len += self.extension.encoded_len(d) + 12;
        }
        len
    }

    /// Append the encoding (leading `size[2]` included) to `buf`.
    ///
    /// # Panics
    ///
    /// If the stat does not fit its `size[2]` field (more than 65535 bytes of strings).
    pub fn encode(&self, buf: &mut BytesMut, d: Dialect) {
        let size = u16::try_from(self.encoded_len(d) - 2).expect("stat larger than 65535 bytes");
        buf.put_u16_le(size);
        self.ty.encode(buf, d);
        self.dev.encode(buf, d);
        self.qid.encode(buf, d);
        self.mode.encode(buf, d);
        self.atime.encode(buf, d);
        self.mtime.encode(buf, d);
        self.length.encode(buf, d);
        self.name.encode(buf, d);
        self.uid.encode(buf, d);
        self.gid.encode(buf, d);
        self.muid.encode(buf, d);
        if d.extended() {
            self.extension.encode(buf, d);
            self.n_uid.encode(buf, d);
            self.n_gid.encode(buf, d);
            self.n_muid.encode(buf, d);
        }
    }

    /// Read one stat (leading `size[2]` included) from the front of `buf`, advancing it.
    ///
    /// The size must cover exactly the fields of dialect `d`
    /// ([`DecodeError::BadStat`] otherwise); a buffer shorter than the size is
    /// [`DecodeError::Truncated`].
    pub fn decode(buf: &mut Bytes, d: Dialect) -> Result<Stat, DecodeError> {
        need(buf, 2)?;
        let size = usize::from(buf.get_u16_le());
        need(buf, size)?;
        let mut body = buf.split_to(size);
        let stat = Stat::decode_fields(&mut body, d).map_err(|e| match e {
            DecodeError::Truncated => DecodeError::BadStat("size field smaller than the fields"),
            e => e,
        })?;
        if !body.is_empty() {
            return Err(DecodeError::BadStat("size field larger than the fields"));
        }
        Ok(stat)
    }

    fn decode_fields(b: &mut Bytes, d: Dialect) -> Result<Stat, DecodeError> {
        let mut stat = Stat {
            ty: u16::decode(b, d)?,
            dev: u32::decode(b, d)?,
            qid: Qid::decode(b, d)?,
            mode: u32::decode(b, d)?,
            atime: u32::decode(b, d)?,
            mtime: u32::decode(b, d)?,
            length: u64::decode(b, d)?,
            name: String::decode(b, d)?,
            uid: String::decode(b, d)?,
            gid: String::decode(b, d)?,
            muid: String::decode(b, d)?,
            ..Stat::default()
        };
        if d.extended() {
            stat.extension = String::decode(b, d)?;
            stat.n_uid = u32::decode(b, d)?;
            stat.n_gid = u32::decode(b, d)?;
            stat.n_muid = u32::decode(b, d)?;
        }
        Ok(stat)
    }
}

impl WireFormat for Stat {
    fn encoded_len(&self, d: Dialect) -> usize {
        Stat::encoded_len(self, d)
    }
    fn encode(&self, buf: &mut BytesMut, d: Dialect) {
        Stat::encode(self, buf, d)
    }
    fn decode(buf: &mut Bytes, d: Dialect) -> Result<Self, DecodeError> {
        Stat::decode(buf, d)
    }
}

/// The `n[2] stat[n]` form in which Rstat and Twstat carry a stat (stat(5): the stat has
/// its own size as well). `n` must equal the stat's size plus two.
pub(crate) struct CountedStat;

impl CountedStat {
    pub(crate) fn encoded_len(stat: &Stat, d: Dialect) -> usize {
        2 + stat.encoded_len(d)
    }

    pub(crate) fn encode(stat: &Stat, buf: &mut BytesMut, d: Dialect) {
        let n = u16::try_from(stat.encoded_len(d)).expect("stat larger than 65535 bytes");
        buf.put_u16_le(n);
        stat.encode(buf, d);
    }

    pub(crate) fn decode(buf: &mut Bytes, d: Dialect) -> Result<Stat, DecodeError> {
        need(buf, 2)?;
        let n = usize::from(buf.get_u16_le());
        need(buf, n)?;
        let mut inner = buf.split_to(n);
        let stat = Stat::decode(&mut inner, d).map_err(|e| match e {
            DecodeError::Truncated => DecodeError::BadStat("outer count smaller than the stat"),
            e => e,
        })?;
        if !inner.is_empty() {
            return Err(DecodeError::BadStat("outer count larger than the stat"));
        }
        Ok(stat)
    }
}

/// Decode the packed stat records of a 9P2000/9P2000.u directory read (an Rread's data).
pub fn decode_stats(mut data: Bytes, d: Dialect) -> Result<Vec<Stat>, DecodeError> {
    let mut stats = Vec::new();
    while !data.is_empty() {
        stats.push(Stat::decode(&mut data, d)?);
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Stat {
        Stat {
            ty: 1,
            dev: 2,
            qid: Qid {
                ty: 0x80,
                version: 3,
                path: 4,
            },
            mode: 0x8000_01ed,
            atime: 5,
            mtime: 6,
            length: 7,
            name: "n".into(),
            uid: "u".into(),
            gid: "g".into(),
            muid: "m".into(),
            extension: "e".into(),
            n_uid: 8,
            n_gid: 9,
            n_muid: 10,
        }
    }

    #[test]
    fn lengths() {
        let s = sample();
        assert_eq!(s.encoded_len(Dialect::P9P2000), 2 + 39 + 4 * 3);
        assert_eq!(s.encoded_len(Dialect::P9P2000U), 2 + 39 + 4 * 3 + 3 + 12);
        for d in Dialect::ALL {
            let mut b = BytesMut::new();
            s.encode(&mut b, d);
            assert_eq!(b.len(), s.encoded_len(d));
            assert_eq!(usize::from(u16::from_le_bytes([b[0], b[1]])), b.len() - 2);
        }
    }

    #[test]
    fn base_decode_defaults_the_extension() {
        let mut b = BytesMut::new();
        sample().encode(&mut b, Dialect::P9P2000);
        let got = Stat::decode(&mut b.freeze(), Dialect::P9P2000).unwrap();
        let want = Stat {
            extension: String::new(),
            n_uid: !0,
            n_gid: !0,
            n_muid: !0,
            ..sample()
        };
        assert_eq!(got, want);
    }

    #[test]
    fn dialect_mismatch_is_bad_stat() {
        let mut b = BytesMut::new();
        sample().encode(&mut b, Dialect::P9P2000U);
        let e = Stat::decode(&mut b.clone().freeze(), Dialect::P9P2000).unwrap_err();
        assert_eq!(e, DecodeError::BadStat("size field larger than the fields"));
        let mut b = BytesMut::new();
        sample().encode(&mut b, Dialect::P9P2000);
        let e = Stat::decode(&mut b.freeze(), Dialect::P9P2000U).unwrap_err();
        assert_eq!(
            e,
            DecodeError::BadStat("size field smaller than the fields")
        );
    }

    #[test]
    fn dont_touch_is_all_ones() {
        let s = Stat::dont_touch();
        let mut b = BytesMut::new();
        s.encode(&mut b, Dialect::P9P2000U);
        // size 61, then 39 bytes of 0xff, four empty strings, an empty extension, 12 x 0xff.
        let mut want = vec![61, 0];
        want.extend([0xff; 39]);
        want.extend([0; 10]);
        want.extend([0xff; 12]);
        assert_eq!(&b[..], &want[..]);
    }

    #[test]
    fn stats_in_a_directory_read() {
        let mut b = BytesMut::new();
        sample().encode(&mut b, Dialect::P9P2000U);
        Stat::default().encode(&mut b, Dialect::P9P2000U);
        let all = decode_stats(b.clone().freeze(), Dialect::P9P2000U).unwrap();
        assert_eq!(all, vec![sample(), Stat::default()]);
        b.truncate(b.len() - 1);
        assert_eq!(
            decode_stats(b.freeze(), Dialect::P9P2000U),
            Err(DecodeError::Truncated)
        );
    }
}
