//! The three protocol dialects and which message types each one has.

use crate::consts::*;
use std::fmt;

/// A 9P dialect, as negotiated by Tversion/Rversion.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// Plan 9's 9P2000.
    P9P2000,
    /// 9P2000.u, the Unix extension: numeric ids, errno in Rerror, special files.
    P9P2000U,
    /// 9P2000.L, the Linux variant: its own operations plus a subset of 9P2000.
    P9P2000L,
}

impl Dialect {
    /// Every dialect, base first.
    pub const ALL: [Dialect; 3] = [Dialect::P9P2000, Dialect::P9P2000U, Dialect::P9P2000L];

    /// The dialect for an exact version string (`"9P2000"`, `"9P2000.u"`, `"9P2000.L"`).
    pub fn from_version(version: &str) -> Option<Dialect> {
        match version {
            VERSION_9P2000 => Some(Dialect::P9P2000),
            VERSION_9P2000_U => Some(Dialect::P9P2000U),
            VERSION_9P2000_L => Some(Dialect::P9P2000L),
            _ => None,
        }
    }

    /// The version string of this dialect.
    pub fn as_str(&self) -> &'static str {
        match self {
            Dialect::P9P2000 => VERSION_9P2000,
            Dialect::P9P2000U => VERSION_9P2000_U,
            Dialect::P9P2000L => VERSION_9P2000_L,
        }
    }

    /// Whether the 9P2000.u extension fields (`n_uname`, Rerror's `errno`, Tcreate's
    /// `extension`, the stat tail) are on the wire: true for .u and .L.
    pub fn extended(&self) -> bool {
        !matches!(self, Dialect::P9P2000)
    }

    /// Whether message type `ty` exists and belongs to this dialect.
    ///
    /// 9P2000 and 9P2000.u have the types 100..=127 (Rerror included). 9P2000.L has its own
    /// operations (7..=77) plus version, auth, attach, flush, walk, read, write, clunk and
    /// remove; it answers errors with Rlerror, so Rerror is not part of it (though
    /// [`decode`](crate::decode) accepts an Rerror in any dialect so a client can read it).
    pub fn has_type(&self, ty: u8) -> bool {
        if !crate::messages::is_known_type(ty) {
            return false;
        }
        match self {
            Dialect::P9P2000 | Dialect::P9P2000U => (TVERSION..=RWSTAT).contains(&ty),
            Dialect::P9P2000L => {
                (RLERROR..=RUNLINKAT).contains(&ty)
                    || matches!(
                        ty,
                        TVERSION
                            | RVERSION
                            | TAUTH
                            | RAUTH
                            | TATTACH
                            | RATTACH
                            | TFLUSH
                            | RFLUSH
                            | TWALK
                            | RWALK
                            | TREAD
                            | RREAD
                            | TWRITE
                            | RWRITE
                            | TCLUNK
                            | RCLUNK
                            | TREMOVE
                            | RREMOVE
                    )
            }
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_strings_are_exact() {
        for d in Dialect::ALL {
            assert_eq!(Dialect::from_version(d.as_str()), Some(d));
        }
        assert_eq!(Dialect::from_version("9P2000.l"), None);
        assert_eq!(Dialect::from_version("9P2000.U"), None);
        assert_eq!(Dialect::from_version("9P2000 "), None);
        assert_eq!(Dialect::from_version("unknown"), None);
        assert!(!Dialect::P9P2000.extended());
        assert!(Dialect::P9P2000U.extended());
        assert!(Dialect::P9P2000L.extended());
    }

    #[test]
    fn dialect_membership() {
        let base: Vec<u8> = (0..=255)
            .filter(|&t| Dialect::P9P2000.has_type(t))
            .collect();
        let expected: Vec<u8> = (100..=127).filter(|&t| t != TERROR).collect();
        assert_eq!(base, expected);
        assert_eq!(
            (0..=255).filter(|&t| Dialect::P9P2000U.has_type(t)).count(),
            27
        );
        let dotl: Vec<u8> = (0..=255)
            .filter(|&t| Dialect::P9P2000L.has_type(t))
            .collect();
        assert_eq!(dotl.len(), 39 + 18);
        for t in [TOPEN, TCREATE, TSTAT, TWSTAT, RERROR, TERROR, TLERROR] {
            assert!(!dotl.contains(&t), "{t} must not be in .L");
        }
        for t in [
            RLERROR, TSTATFS, TUNLINKAT, RUNLINKAT, TVERSION, TREMOVE, RREMOVE,
        ] {
            assert!(dotl.contains(&t), "{t} must be in .L");
        }
    }
}
