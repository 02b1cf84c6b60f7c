//! Just enough of QMP (QEMU's JSON monitor protocol) for libxl.
//!
//! On connect the server sends a greeting; the client sends one JSON object per command
//! (`{"execute": "qmp_capabilities", "id": 1}`), the server answers `{"return": ..., "id": 1}`.
//! libxl 4.17 sends `qmp_capabilities` then `query-chardev` after starting a PV guest's device
//! model; other commands (save/restore, `query-status`, ...) get an empty success so libxl's
//! bookkeeping proceeds. The scanner below reads only the top-level `execute` and `id` members
//! and skips everything else (nested objects, escaped strings) without building a tree.

/// The greeting, as QEMU 7.2 sends it (libxl reads the version).
pub const GREETING: &str = "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \
     \"major\": 7}, \"package\": \"envoy-dm\"}, \"capabilities\": []}}\r\n";

/// Longest command line accepted (libxl's are a few hundred bytes).
pub const MAX_COMMAND: usize = 64 * 1024;

/// A parsed command: its name and the raw JSON text of its `id`, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct Command {
    pub execute: String,
    pub id: Option<String>,
}

/// What to do with a command.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    /// The line to send (with `\r\n`).
    pub line: String,
    /// `quit`: the device model is asked to exit (after replying).
    pub quit: bool,
}

/// Answer one command line (a JSON object).
pub fn answer(line: &str) -> Reply {
    let cmd = match parse_command(line) {
        Ok(c) => c,
        Err(e) => {
            return Reply {
                line: format!(
                    "{{\"error\": {{\"class\": \"GenericError\", \"desc\": {}}}}}\r\n",
                    json_string(&e)
                ),
                quit: false,
            };
        }
    };
    let ret = match cmd.execute.as_str() {
        "query-chardev" | "query-block" | "query-pci" => "[]",
        "query-status" => "{\"status\": \"running\", \"singlestep\": false, \"running\": true}",
        _ => "{}",
    };
    let line = match &cmd.id {
        Some(id) => format!("{{\"return\": {ret}, \"id\": {id}}}\r\n"),
        None => format!("{{\"return\": {ret}}}\r\n"),
    };
    Reply {
        line,
        quit: cmd.execute == "quit",
    }
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The top-level `execute` (a string) and `id` (any JSON value, kept as text) of a command.
pub fn parse_command(line: &str) -> Result<Command, String> {
    let mut s = Scanner {
        b: line.as_bytes(),
        i: 0,
    };
    s.ws();
    s.expect(b'{')?;
    let (mut execute, mut id) = (None, None);
    s.ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
    } else {
        loop {
            s.ws();
            let key = s.string()?;
            s.ws();
            s.expect(b':')?;
            s.ws();
            let start = s.i;
            s.value(0)?;
            let raw = &line[start..s.i];
            match key.as_str() {
                "execute" => {
                    let mut v = Scanner {
                        b: raw.as_bytes(),
                        i: 0,
                    };
                    execute = Some(v.string().map_err(|_| "execute is not a string")?);
                }
                "id" => id = Some(raw.to_string()),
                _ => {}
            }
            s.ws();
            match s.next() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err(format!("expected , or }} at byte {}", s.i)),
            }
        }
    }
    s.ws();
    if s.i != s.b.len() {
        return Err(format!("trailing bytes after the object at byte {}", s.i));
    }
    let execute = execute.ok_or("no execute member")?;
    Ok(Command { execute, id })
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

/// Nesting allowed in skipped values (QMP arguments are shallow).
const MAX_DEPTH: usize = 32;

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn next(&mut self) -> Option<u8> {
        let c = self.peek();
        self.i += 1;
        c
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }
    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.next() == Some(c) {
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.i - 1))
        }
    }
    /// A string literal; escapes are decoded (enough for names: \uXXXX of the BMP).
    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.next() {
                None => return Err("unterminated string".into()),
                Some(b'"') => break,
                Some(b'\\') => match self.next() {
                    Some(b'u') => {
                        let hex = self
                            .b
                            .get(self.i..self.i + 4)
                            .and_then(|h| std::str::from_utf8(h).ok())
                            .and_then(|h| u32::from_str_radix(h, 16).ok())
                            .ok_or("bad \\u escape")?;
                        self.i += 4;
                        let c = char::from_u32(hex).unwrap_or('\u{fffd}');
                        out.extend_from_slice(c.to_string().as_bytes());
                    }
                    Some(c @ (b'"' | b'\\' | b'/')) => out.push(c),
                    Some(b'n') => out.push(b'\n'),
                    Some(b't') => out.push(b'\t'),
                    Some(b'r') => out.push(b'\r'),
                    Some(b'b') => out.push(8),
                    Some(b'f') => out.push(12),
                    _ => return Err("bad escape".into()),
                },
                Some(c) if c < 0x20 => return Err("control character in a string".into()),
                Some(c) => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| "string is not UTF-8".into())
    }
    /// Skip one value.
    fn value(&mut self, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("nested too deeply".into());
        }
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            Some(open @ (b'{' | b'[')) => {
                let close = if open == b'{' { b'}' } else { b']' };
                self.i += 1;
                self.ws();
                if self.peek() == Some(close) {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    if open == b'{' {
                        self.string()?;
                        self.ws();
                        self.expect(b':')?;
                        self.ws();
                    }
                    self.value(depth + 1)?;
                    self.ws();
                    match self.next() {
                        Some(b',') => continue,
                        Some(c) if c == close => return Ok(()),
                        _ => return Err(format!("bad separator at byte {}", self.i - 1)),
                    }
                }
            }
            Some(c) if c == b'-' || c.is_ascii_alphanumeric() => {
                let start = self.i;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || b"+-.".contains(&c))
                {
                    self.i += 1;
                }
                let word = &self.b[start..self.i];
                let ok = matches!(word, b"true" | b"false" | b"null")
                    || std::str::from_utf8(word)
                        .ok()
                        .is_some_and(|w| w.parse::<f64>().is_ok());
                if ok {
                    Ok(())
                } else {
                    Err(format!("bad value at byte {start}"))
                }
            }
            _ => Err(format!("expected a value at byte {}", self.i)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libxl_commands() {
        assert_eq!(
            answer("{\"execute\":\"qmp_capabilities\",\"id\":1}").line,
            "{\"return\": {}, \"id\": 1}\r\n"
        );
        assert_eq!(
            answer("{ \"execute\": \"query-chardev\", \"id\": 2 }").line,
            "{\"return\": [], \"id\": 2}\r\n"
        );
        assert!(
            answer("{\"execute\":\"query-status\"}")
                .line
                .starts_with("{\"return\": {\"status\": \"running\"")
        );
        let r = answer(
            "{\"execute\":\"xen-save-devices-state\",\"arguments\":{\"filename\":\"/a\\\"}b\",\
             \"live\":false,\"n\":[1,-2.5e3,{}]},\"id\":\"x\\\"y\"}",
        );
        assert_eq!(r.line, "{\"return\": {}, \"id\": \"x\\\"y\"}\r\n");
        assert!(!r.quit);
        assert!(answer("{\"execute\":\"quit\",\"id\":9}").quit);
    }

    #[test]
    fn malformed_commands_get_an_error() {
        for bad in [
            "",
            "[]",
            "{\"id\":1}",
            "{\"execute\":1}",
            "{\"execute\":\"a\"",
            "{\"execute\":\"a\"} x",
            "{\"execute\":\"a\",\"x\":tru}",
            "{\"execute\":\"a\",\"x\":\"\u{1}\"}",
        ] {
            let r = answer(bad);
            assert!(
                r.line
                    .starts_with("{\"error\": {\"class\": \"GenericError\""),
                "{bad:?}: {}",
                r.line
            );
        }
        let deep = format!(
            "{{\"execute\":\"a\",\"x\":{}{}}}",
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(parse_command(&deep).is_err());
    }

    #[test]
    fn escaped_names() {
        assert_eq!(
            parse_command("{\"exec\\u0075te\":\"q\\u0075it\"}")
                .unwrap()
                .execute,
            "quit"
        );
        assert_eq!(json_string("a\"b\\\n"), "\"a\\\"b\\\\\\u000a\"");
    }
}
