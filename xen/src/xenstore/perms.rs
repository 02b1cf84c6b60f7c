//! Node permissions as xenstored spells them: `n5` none, `r5` read, `w5` write, `b5` both.
//!
//! A node's list starts with its owner, who may do everything; the owner entry's access is also
//! what every domain *not* listed gets. dom0 (and any privileged domain) bypasses the checks.

use std::fmt;
use std::str::FromStr;

/// What a domain may do with a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// `n`: nothing.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

impl Access {
    /// The wire letter.
    pub fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }

    fn from_letter(c: u8) -> Option<Access> {
        Some(match c {
            b'n' => Access::None,
            b'r' => Access::Read,
            b'w' => Access::Write,
            b'b' => Access::Both,
            _ => return None,
        })
    }
}

/// One entry of a node's permission list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The domain.
    pub domid: u32,
    /// What it may do.
    pub access: Access,
}

impl Perm {
    /// A permission entry.
    pub fn new(domid: u32, access: Access) -> Perm {
        Perm { domid, access }
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.access.letter(), self.domid)
    }
}

/// A permission string that is not `[nrwb]<decimal domid>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad xenstore permission {0:?} (want n|r|w|b followed by a domid)")]
pub struct BadPerm(pub String);

impl FromStr for Perm {
    type Err = BadPerm;

    fn from_str(s: &str) -> Result<Perm, BadPerm> {
        let bad = || BadPerm(s.chars().take(32).collect());
        let (&first, rest) = s.as_bytes().split_first().ok_or_else(bad)?;
        let access = Access::from_letter(first).ok_or_else(bad)?;
        let digits = rest.strip_prefix(b"-").unwrap_or(rest);
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        // xenstored prints domids with `%i`: ids from 2^31 up come back negative.
        let domid = if rest.starts_with(b"-") {
            s[1..].parse::<i32>().map_err(|_| bad())? as u32
        } else {
            s[1..].parse::<u32>().map_err(|_| bad())?
        };
        Ok(Perm { domid, access })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse() {
        for s in ["n0", "r5", "w65535", "b4294967295"] {
            assert_eq!(s.parse::<Perm>().unwrap().to_string(), s);
        }
        assert_eq!("r5".parse::<Perm>().unwrap(), Perm::new(5, Access::Read));
        // as xenstored prints domids of 2^31 and above
        assert_eq!(
            "n-1".parse::<Perm>().unwrap(),
            Perm::new(u32::MAX, Access::None)
        );
        assert_eq!(
            "n-2147483648".parse::<Perm>().unwrap(),
            Perm::new(1 << 31, Access::None)
        );
        for bad in [
            "",
            "r",
            "x5",
            "r-",
            "r--1",
            "r-2147483649",
            "r 5",
            "r5x",
            "r4294967296",
            "é5",
        ] {
            assert!(bad.parse::<Perm>().is_err(), "{bad}");
        }
    }
}
