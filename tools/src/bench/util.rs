//! Small helpers: a seeded PRNG, process CPU time from `/proc`, hand-written JSON.

use anyhow::{Context, Result, bail};
use std::fmt::Write as _;

/// SplitMix64: tiny, fast, good enough to pick files and offsets.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// User plus system CPU seconds used so far by process `pid` (all its threads, live and
/// exited), from `/proc/PID/stat`.
pub fn process_cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    cpu_from_stat(&text).with_context(|| format!("parsing {path}"))
}

/// CPU seconds used by this process.
pub fn self_cpu_seconds() -> Result<f64> {
    process_cpu_seconds(std::process::id())
}

/// CPU seconds the whole machine spent busy so far (every CPU: user, nice, system, irq,
/// softirq, steal), from the first line of `/proc/stat`.
pub fn machine_busy_seconds() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text.lines().next().unwrap_or("");
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().context("parsing /proc/stat"))
        .collect::<Result<_>>()?;
    if !line.starts_with("cpu ") || ticks.len() < 8 {
        bail!("unexpected /proc/stat line {line:?}");
    }
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7];
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(busy as f64 / hz as f64)
}

fn cpu_from_stat(text: &str) -> Result<f64> {
    // The command name (field 2) may hold spaces and parentheses: fields restart after
    // the last ')'. Field 3 (state) is then index 0, utime (14) index 11, stime (15) 12.
    let Some(close) = text.rfind(')') else {
        bail!("no ')' in stat line");
    };
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    if fields.len() < 13 {
        bail!("stat line too short");
    }
    let utime: u64 = fields[11].parse().context("utime")?;
    let stime: u64 = fields[12].parse().context("stime")?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok((utime + stime) as f64 / hz as f64)
}

/// A JSON value written by hand (the workspace has no serde).
pub enum Json {
    /// A string.
    Str(String),
    /// A number (non-finite values become `null`).
    Num(f64),
    /// An integer.
    Int(u64),
    /// `null`.
    Null,
}

impl From<&str> for Json {
    fn from(s: &str) -> Json {
        Json::Str(s.to_owned())
    }
}
impl From<String> for Json {
    fn from(s: String) -> Json {
        Json::Str(s)
    }
}
impl From<f64> for Json {
    fn from(v: f64) -> Json {
        Json::Num(v)
    }
}
impl From<u64> for Json {
    fn from(v: u64) -> Json {
        Json::Int(v)
    }
}
impl From<Option<f64>> for Json {
    fn from(v: Option<f64>) -> Json {
        v.map_or(Json::Null, Json::Num)
    }
}

/// One flat JSON object on one line, keys in the given order.
pub fn json_object(fields: Vec<(&str, Json)>) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(&mut out, k);
        out.push(':');
        match v {
            Json::Str(s) => push_str(&mut out, &s),
            Json::Num(n) if n.is_finite() => {
                let _ = write!(out, "{n}");
            }
            Json::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Json::Num(_) | Json::Null => out.push_str("null"),
        }
    }
    out.push('}');
    out
}

fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The bench's file pattern: the 8-byte little-endian word at file offset `o` (a multiple
/// of 8) holds `o`. `buf` is filled as the bytes starting at offset `start` (a multiple of 8).
pub fn fill_pattern(buf: &mut [u8], start: u64) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let word = (start + 8 * i as u64).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// Check that `data`, read at `offset`, carries the pattern in every whole word (catches
/// shifted, stale, foreign or corrupted data; about a memory pass of client CPU).
pub fn check_pattern(data: &[u8], offset: u64) -> Result<()> {
    if !offset.is_multiple_of(8) {
        return Ok(());
    }
    for (w, chunk) in data.chunks_exact(8).enumerate() {
        let got = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let want = offset + 8 * w as u64;
        if got != want {
            bail!("data mismatch at offset {want}: word {got:#x}, expected {want:#x}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_names() {
        let line = "1234 (a b) c)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        let hz = rustix::param::clock_ticks_per_second() as f64;
        assert_eq!(cpu_from_stat(line).unwrap(), 300.0 / hz);
        assert!(self_cpu_seconds().unwrap() >= 0.0);
        assert!(machine_busy_seconds().unwrap() > 0.0);
    }

    #[test]
    fn json_escapes() {
        let s = json_object(vec![
            ("a", Json::from("x\"y\\\n")),
            ("b", Json::Num(1.5)),
            ("c", Json::Num(f64::NAN)),
            ("d", Json::Int(7)),
        ]);
        assert_eq!(s, r#"{"a":"x\"y\\\n","b":1.5,"c":null,"d":7}"#);
    }

    #[test]
    fn pattern_round_trip() {
        let mut buf = vec![0u8; 4096];
        fill_pattern(&mut buf, 8192);
        check_pattern(&buf, 8192).unwrap();
        assert!(check_pattern(&buf, 0).is_err());
        buf[2049] ^= 0x5a;
        assert!(check_pattern(&buf, 8192).is_err());
        let mut r = Rng::new(1);
        assert!((0..1000).all(|_| r.below(10) < 10));
    }
}
