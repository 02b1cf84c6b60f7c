//! `envoy-bench loopback`: the ceiling — raw TCP bandwidth over 127.0.0.1 between two
//! processes, moving buffers of the same size as a 1 MiB 9P read.
//!
//! The command listens, starts a copy of itself as the sender (`--send-to`), and receives:
//! data flows sender → receiver as it does server → client in `seqread`.

use super::util::{Json, json_object};
use anyhow::{Context, Result, bail};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the receiver waits for the sender to connect or to send more.
const IDLE_LIMIT: Duration = Duration::from_secs(10);

/// Measure: start a sender process and receive for `seconds`.
pub fn measure(seconds: f64, bufsize: usize, json: bool) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let exe = std::env::current_exe().context("finding this program")?;
    let mut child = Command::new(exe)
        .args(["loopback", "--send-to", &addr.to_string()])
        .args([
            "--seconds",
            &seconds.to_string(),
            "--bufsize",
            &bufsize.to_string(),
        ])
        .stdin(Stdio::null())
        .spawn()
        .context("starting the sender process")?;
    let result = receive(&listener, seconds, bufsize);
    if result.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().context("waiting for the sender")?;
    let (bytes, elapsed) = result?;
    if !status.success() {
        bail!("the sender process failed: {status}");
    }
    let mbps = bytes as f64 / elapsed / 1e6;
    if json {
        println!(
            "{}",
            json_object(vec![
                ("workload", Json::from("loopback")),
                ("transport", Json::from("tcp")),
                ("bufsize", Json::Int(bufsize as u64)),
                ("seconds", Json::Num(elapsed)),
                ("bytes", Json::Int(bytes)),
                ("mb_per_s", Json::Num(mbps)),
            ])
        );
    } else {
        println!(
            "loopback  tcp 127.0.0.1, {bufsize}-byte buffers: {:.0} MB/s ({:.2} GiB/s) over {elapsed:.2} s",
            mbps,
            bytes as f64 / elapsed / f64::from(1u32 << 30)
        );
    }
    Ok(())
}

/// Accept the sender and count bytes until it closes. Returns (bytes, seconds from the
/// first byte to the end).
fn receive(listener: &TcpListener, seconds: f64, bufsize: usize) -> Result<(u64, f64)> {
    listener.set_nonblocking(true)?;
    let t0 = Instant::now();
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if t0.elapsed() > IDLE_LIMIT {
                    bail!("the sender did not connect within {IDLE_LIMIT:?}");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).context("accepting the sender"),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IDLE_LIMIT))?;
    let mut buf = vec![0u8; bufsize];
    let mut bytes = 0u64;
    let mut first: Option<Instant> = None;
    let hard_stop = Duration::from_secs_f64(seconds) + IDLE_LIMIT;
    loop {
        let n = stream.read(&mut buf).context("receiving")?;
        if n == 0 {
            break;
        }
        let start = *first.get_or_insert_with(Instant::now);
        bytes += n as u64;
        if start.elapsed() > hard_stop {
            bail!("the sender did not stop after {seconds} s");
        }
    }
    let elapsed = first.map_or(0.0, |s| s.elapsed().as_secs_f64());
    if bytes == 0 || elapsed <= 0.0 {
        bail!("no data received");
    }
    Ok((bytes, elapsed))
}

/// The sender: write `bufsize`-byte buffers to `addr` for `seconds`, then close.
pub fn send(addr: &str, seconds: f64, bufsize: usize) -> Result<()> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(IDLE_LIMIT))?;
    let buf = vec![0x5au8; bufsize];
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < deadline {
        stream.write_all(&buf).context("sending")?;
    }
    stream.shutdown(Shutdown::Write)?;
    Ok(())
}
