//! `envoy-xl storage`: the object layer as an admin sees it — per-host usage, replica health,
//! scrub and re-replication progress — and the commands that start maintenance.
//!
//! It talks to the local envoyd's storage admin socket (or any storage endpoint) in the
//! storage dialect; the formatting here is pure so that tests check the tables.

use envoy_objstore::wire::{HostState, HostStats, HostView};
use serde_json::{Value, json};

/// `1.5 GiB`-style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn state_name(s: HostState) -> &'static str {
    match s {
        HostState::Up => "up",
        HostState::Down => "down",
        HostState::Lost => "lost",
    }
}

/// The scrub column: `42% (420/1000)` while running, `done ×N, 1 repaired` after.
pub fn scrub_summary(s: &HostStats) -> String {
    let m = &s.maintenance;
    if m.scrub_running {
        let pct = (m.scrub_checked * 100)
            .checked_div(m.scrub_total)
            .unwrap_or(0);
        format!("{pct}% ({}/{})", m.scrub_checked, m.scrub_total)
    } else if m.scrubs_done == 0 {
        "never".into()
    } else {
        format!(
            "ok: {} corrupt, {} repaired",
            m.scrub_corrupt, m.scrub_repaired
        )
    }
}

/// The replica-health column: the last re-replication pass's outcome.
pub fn repair_summary(s: &HostStats) -> String {
    let m = &s.maintenance;
    if m.repair_running {
        format!("running: {} examined", m.repair_scanned)
    } else if m.repairs_done == 0 {
        "pending".into()
    } else if m.repair_failed > 0 {
        format!("{} under-replicated", m.repair_failed)
    } else {
        format!("ok ({} copies made)", m.repair_copied)
    }
}

/// The `envoy-xl storage status` table.
pub fn format_status(replicas: u8, hosts: &[HostView]) -> String {
    let mut rows = vec![
        [
            "HOST", "STATE", "RTT", "OBJECTS", "STORED", "FS FREE", "BAD", "SCRUB", "REPLICAS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for h in hosts {
        let rtt = if h.rtt_us == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}ms", f64::from(h.rtt_us) / 1000.0)
        };
        let mut row = vec![h.name.clone(), state_name(h.state).to_owned(), rtt];
        match &h.stats {
            Some(s) => row.extend([
                s.local.objects.to_string(),
                human_bytes(s.local.bytes),
                human_bytes(s.local.fs_free),
                s.local.quarantined.to_string(),
                scrub_summary(s),
                repair_summary(s),
            ]),
            None => {
                row.extend(["-", "-", "-", "-", "-"].map(String::from));
                row.push(if h.error.is_empty() {
                    "-".into()
                } else {
                    h.error.clone()
                });
            }
        }
        rows.push(row);
    }
    format!(
        "{} hosts, {replicas} replicas per object\n{}",
        hosts.len(),
        align(&rows)
    )
}

/// Rows as left-aligned columns two spaces apart, one line each (trailing blanks trimmed).
pub fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |cell| cell.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn stats_json(s: &HostStats) -> Value {
    let (l, m) = (&s.local, &s.maintenance);
    json!({
        "objects": l.objects, "bytes": l.bytes, "disk_bytes": l.disk_bytes,
        "fs_total": l.fs_total, "fs_free": l.fs_free, "quarantined": l.quarantined,
        "records": l.records,
        "scrub": {
            "running": m.scrub_running, "total": m.scrub_total, "checked": m.scrub_checked,
            "bytes": m.scrub_bytes, "corrupt": m.scrub_corrupt, "repaired": m.scrub_repaired,
            "done": m.scrubs_done,
        },
        "repair": {
            "running": m.repair_running, "examined": m.repair_scanned,
            "copied": m.repair_copied, "failed": m.repair_failed, "done": m.repairs_done,
        },
        "gc": { "running": m.gc_running, "deleted": m.gc_deleted, "done": m.gcs_done },
    })
}

/// `envoy-xl storage status --json`.
pub fn status_json(replicas: u8, hosts: &[HostView]) -> Value {
    json!({
        "replicas": replicas,
        "hosts": hosts.iter().map(|h| json!({
            "name": h.name,
            "endpoint": h.endpoint,
            "state": state_name(h.state),
            "rtt_us": h.rtt_us,
            "error": h.error,
            "stats": h.stats.as_ref().map(stats_json),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_objstore::LocalStats;
    use envoy_objstore::wire::Maintenance;

    #[test]
    fn status_table_shows_usage_health_and_scrub_progress() {
        let up = HostView {
            name: "a".into(),
            endpoint: "tcp:127.0.0.1:1".into(),
            state: HostState::Up,
            rtt_us: 0,
            error: String::new(),
            stats: Some(HostStats {
                host: "a".into(),
                local: LocalStats {
                    objects: 10,
                    bytes: 3 << 30,
                    fs_free: 1 << 20,
                    ..LocalStats::default()
                },
                maintenance: Maintenance {
                    scrub_running: true,
                    scrub_total: 10,
                    scrub_checked: 4,
                    repairs_done: 1,
                    repair_failed: 2,
                    ..Maintenance::default()
                },
            }),
        };
        let down = HostView {
            name: "b".into(),
            endpoint: "tcp:127.0.0.1:2".into(),
            state: HostState::Down,
            rtt_us: 0,
            error: "connection refused".into(),
            stats: None,
        };
        let t = format_status(2, &[up.clone(), down.clone()]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "2 hosts, 2 replicas per object");
        assert!(lines[2].starts_with("a "), "{t}");
        assert!(
            lines[2].contains("3.0 GiB") && lines[2].contains("40% (4/10)"),
            "{t}"
        );
        assert!(lines[2].contains("2 under-replicated"), "{t}");
        assert!(
            lines[3].contains("down") && lines[3].contains("connection refused"),
            "{t}"
        );
        let j = status_json(2, &[up, down]);
        assert_eq!(j["hosts"][0]["stats"]["scrub"]["checked"], 4);
        assert_eq!(j["hosts"][1]["state"], "down");
        assert!(j["hosts"][1]["stats"].is_null());
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }
}
