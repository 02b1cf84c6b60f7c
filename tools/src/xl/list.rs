//! `list`: every 9pfs device of one guest or of all, with both ends' states and any error
//! report, read from one consistent snapshot.

use envoy_xen::xenbus::XenbusState;
use envoy_xen::xenstore::Xenstore;

use super::detach::{devids_of, locate};
use super::{
    DevicePaths, Domain, Ends, READ_ONLY_NODE, XlError, children, frontend_path, parse_id,
    printable, read_only, state_name,
};

/// One device as `list` shows it. Texts are as found (unescaped); [`format_table`] escapes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The guest.
    pub domid: u32,
    /// The device index.
    pub devid: u32,
    /// Where its backend is, if known.
    pub paths: Option<DevicePaths>,
    /// The frontend's tag.
    pub tag: Option<String>,
    /// The backend's `path`.
    pub path: Option<String>,
    /// [`READ_ONLY_NODE`] is set.
    pub read_only: bool,
    /// Both ends' states and error reports.
    pub ends: Ends,
}

/// The devices of `domain`, or of every domain, sorted by domain and index.
pub async fn list(xs: &Xenstore, domain: Option<&Domain>) -> Result<Vec<DeviceInfo>, XlError> {
    read_only(xs, async |tx| {
        let mut domids: Vec<u32> = match domain {
            Some(d) => vec![d.domid],
            None => children(tx, "/local/domain")
                .await?
                .iter()
                .filter_map(|n| parse_id(n))
                .collect(),
        };
        domids.sort_unstable();
        let mut found = Vec::new();
        for d in domids {
            for devid in devids_of(tx, d).await? {
                let paths = locate(tx, d, devid).await?;
                let frontend = frontend_path(d, devid);
                let tag = tx.try_read_string(&format!("{frontend}/tag")).await?;
                let (path, read_only, ends) = match &paths {
                    Some(p) => {
                        let be = p.backend();
                        let ro = tx
                            .try_read_string(&format!("{be}/{READ_ONLY_NODE}"))
                            .await?;
                        (
                            tx.try_read_string(&format!("{be}/path")).await?,
                            ro.is_some_and(|v| v.trim() == "1"),
                            Ends::read_in(tx, p).await?,
                        )
                    }
                    None => (
                        None,
                        false,
                        Ends {
                            frontend: super::read_state(tx, &frontend).await?,
                            ..Ends::default()
                        },
                    ),
                };
                found.push(DeviceInfo {
                    domid: d,
                    devid,
                    paths,
                    tag,
                    path,
                    read_only,
                    ends,
                });
            }
        }
        Ok(found)
    })
    .await
}

/// The table `envoy-xl list` prints: a header, then one line per device.
pub fn format_table(devices: &[DeviceInfo]) -> String {
    let text = |v: &Option<String>| v.as_deref().map_or("-".to_owned(), printable);
    let state = |s: Option<XenbusState>| state_name(s);
    let mut rows: Vec<Vec<String>> = vec![
        [
            "Domid", "Devid", "Kind", "Tag", "Path", "Mode", "Backend", "Frontend", "Error",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for d in devices {
        rows.push(vec![
            d.domid.to_string(),
            d.devid.to_string(),
            d.paths.map_or("?".to_owned(), |p| p.kind.to_string()),
            text(&d.tag),
            text(&d.path),
            if d.read_only { "ro" } else { "rw" }.to_owned(),
            state(d.ends.backend),
            state(d.ends.frontend),
            d.ends.errors(),
        ]);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(
                    ' ',
                    widths[c] - cell.chars().count() + 2,
                ));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xl::Kind;

    #[test]
    fn table() {
        let dev = DeviceInfo {
            domid: 5,
            devid: 0,
            paths: Some(DevicePaths {
                domid: 5,
                devid: 0,
                backend_domid: 0,
                kind: Kind::Qemu,
            }),
            tag: Some("share\x1b".into()),
            path: Some("/srv/guest5".into()),
            read_only: true,
            ends: Ends {
                backend: Some(XenbusState::Closing),
                frontend: Some(XenbusState::Connected),
                backend_error: Some("bad ring".into()),
                frontend_error: None,
            },
        };
        let t = format_table(&[dev]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2, "{t}");
        assert!(lines[0].starts_with("Domid  Devid  Kind  Tag"), "{t}");
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "5",
                "0",
                "9pfs",
                "share\\u{1b}",
                "/srv/guest5",
                "ro",
                "Closing",
                "Connected",
                "backend",
                "error:",
                "bad",
                "ring"
            ]
        );
    }
}
