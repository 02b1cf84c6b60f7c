//! Who an attach names: numeric `n_uname` (9P2000.u/.L) or a user name (9P2000), turned into
//! host credentials with the groups the host's user database gives that user.
//!
//! Users unknown to the host keep their numeric id and get the group `nogroup` (65534): a guest's
//! users need not exist in dom0, and an unknown user must not gain a group's rights.

use crate::vfs::{Creds, Errno, Result};
use envoy_protocol::consts::NONUNAME;
use nix::unistd::{Gid, Group, Uid, User};
use std::ffi::CString;
use std::sync::Arc;

/// The group given to users the host does not know.
pub const NOGROUP: u32 = 65534;

/// Credentials for an attach.
pub fn resolve(uname: &str, n_uname: u32) -> Result<Creds> {
    let user = if n_uname != NONUNAME {
        match User::from_uid(Uid::from_raw(n_uname)) {
            Ok(Some(u)) => Some(u),
            Ok(None) | Err(_) => return Ok(unknown(n_uname)),
        }
    } else if let Ok(uid) = uname.parse::<u32>() {
        match User::from_uid(Uid::from_raw(uid)) {
            Ok(Some(u)) => Some(u),
            _ => return Ok(unknown(uid)),
        }
    } else {
        User::from_name(uname).ok().flatten()
    };
    let Some(user) = user else {
        return Err(Errno::EACCES);
    };
    let mut groups: Vec<u32> = CString::new(user.name.as_str())
        .ok()
        .and_then(|name| nix::unistd::getgrouplist(&name, user.gid).ok())
        .unwrap_or_default()
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    if !groups.contains(&user.gid.as_raw()) {
        groups.push(user.gid.as_raw());
    }
    Ok(Creds {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups: Arc::from(groups),
    })
}

fn unknown(uid: u32) -> Creds {
    Creds {
        uid,
        gid: NOGROUP,
        groups: Arc::from(vec![NOGROUP]),
    }
}

/// A group id from a 9P2000 group name (numeric or from the host's database).
pub fn group_id(name: &str) -> Option<u32> {
    name.parse().ok().or_else(|| {
        Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    })
}

/// A user id from a 9P2000 user name (numeric or from the host's database).
pub fn user_id(name: &str) -> Option<u32> {
    name.parse()
        .ok()
        .or_else(|| User::from_name(name).ok().flatten().map(|u| u.uid.as_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_by_number_and_name() {
        let by_num = resolve("", 0).unwrap();
        assert_eq!((by_num.uid, by_num.gid), (0, 0));
        let by_name = resolve("root", NONUNAME).unwrap();
        assert_eq!(by_name.uid, 0);
        assert!(by_name.groups.contains(&0));
    }

    #[test]
    fn unknown_users() {
        let c = resolve("", 4_000_123).unwrap();
        assert_eq!((c.uid, c.gid), (4_000_123, NOGROUP));
        assert_eq!(resolve("no-such-user-envoy", NONUNAME), Err(Errno::EACCES));
    }
}
