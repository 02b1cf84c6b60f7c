//! Xenbus device states, as both ends of a split driver publish them in their `state` nodes.
//!
//! Values from Xen's `xen/include/public/io/xenbus.h`.

use std::fmt;

/// The state of one end of a xenbus device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum XenbusState {
    /// 0: not yet known (also what a missing or unreadable node means).
    Unknown,
    /// 1: setting up.
    Initialising,
    /// 2: the backend published its features and waits for the frontend's details.
    InitWait,
    /// 3: the frontend published its rings and waits for the backend to connect.
    Initialised,
    /// 4: both ends may talk.
    Connected,
    /// 5: shutting down.
    Closing,
    /// 6: shut down.
    Closed,
    /// 7: reconfiguring (not used by 9pfs).
    Reconfiguring,
    /// 8: reconfigured (not used by 9pfs).
    Reconfigured,
}

impl XenbusState {
    /// The state for a node's text (`"4"`); anything else is [`XenbusState::Unknown`].
    pub fn parse(text: &str) -> XenbusState {
        match text.trim_end_matches('\0').trim() {
            "1" => XenbusState::Initialising,
            "2" => XenbusState::InitWait,
            "3" => XenbusState::Initialised,
            "4" => XenbusState::Connected,
            "5" => XenbusState::Closing,
            "6" => XenbusState::Closed,
            "7" => XenbusState::Reconfiguring,
            "8" => XenbusState::Reconfigured,
            _ => XenbusState::Unknown,
        }
    }

    /// The number written to the `state` node.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The text written to the `state` node.
    pub fn as_node(self) -> String {
        self.number().to_string()
    }

    /// Closing or closed.
    pub fn is_closing(self) -> bool {
        matches!(self, XenbusState::Closing | XenbusState::Closed)
    }
}

impl fmt::Display for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({})", self, self.number())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_xenbus_h() {
        for (n, s) in [
            (1, XenbusState::Initialising),
            (2, XenbusState::InitWait),
            (3, XenbusState::Initialised),
            (4, XenbusState::Connected),
            (5, XenbusState::Closing),
            (6, XenbusState::Closed),
        ] {
            assert_eq!(s.number(), n);
            assert_eq!(XenbusState::parse(&n.to_string()), s);
        }
        assert_eq!(XenbusState::parse("9"), XenbusState::Unknown);
        assert_eq!(XenbusState::parse(""), XenbusState::Unknown);
        assert!(XenbusState::Closed.is_closing() && !XenbusState::Connected.is_closing());
    }
}
