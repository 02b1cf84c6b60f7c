//! Object names: the BLAKE3 hash of an object's content.
//!
//! Naming an object by its hash makes identical content one object (blocks shared between
//! images are stored once), makes a cached copy never stale, and lets every read check that
//! the bytes are the ones named.

use std::fmt;
use std::str::FromStr;

/// The name of an immutable object: the BLAKE3 hash of its content (32 bytes, shown in hex).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    /// The id of `content`.
    pub fn of(content: &[u8]) -> ObjectId {
        ObjectId(*blake3::hash(content).as_bytes())
    }

    /// The id in `bytes`, if they are exactly 32 long.
    pub fn try_from_slice(bytes: &[u8]) -> Option<ObjectId> {
        <[u8; 32]>::try_from(bytes).ok().map(ObjectId)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 bytes as a number: enough to spread ids over directories, shards or hosts.
    pub fn prefix_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(b)
    }
}

impl fmt::Display for ObjectId {
    /// 64 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ObjectId {
    /// The first 16 hex digits: enough to tell ids apart in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.to_string();
        write!(f, "ObjectId({}…)", &s[..16])
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an object id (64 hex digits)")]
pub struct BadObjectId(pub String);

impl FromStr for ObjectId {
    type Err = BadObjectId;

    fn from_str(s: &str) -> Result<ObjectId, BadObjectId> {
        let bad = || BadObjectId(s.to_owned());
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(ObjectId(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_known_hash() {
        let id = ObjectId::of(b"");
        // BLAKE3 of the empty input (from the BLAKE3 specification's test vectors).
        assert_eq!(
            id.to_string(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(id.to_string().parse::<ObjectId>().unwrap(), id);
        assert!("xyz".parse::<ObjectId>().is_err());
        assert!("g".repeat(64).parse::<ObjectId>().is_err());
    }
}
