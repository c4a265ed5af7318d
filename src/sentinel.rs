//! Redis Sentinel: where the master is.
//!
//! [`ask_master`] asks each sentinel in turn `SENTINEL get-master-addr-by-name` over a
//! short blocking TCP connection (the connect timeout bounds the connect and every
//! read), on the caller's thread at start and on the `slotline-sentinel` thread
//! afterwards (the engine's `start_sentinel_thread`), never on a shard. Sentinels
//! are asked without AUTH, as LMCache's connector (redis-py's `Sentinel` without
//! `sentinel_kwargs`) does.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::addr::ServerAddr;
use crate::error::{Error, Result};

/// Longest line or bulk a sentinel's answer may hold (a host name and a port).
const MAX_ANSWER: usize = 1024;

/// The master's address as the first sentinel that knows it says. Fails with the
/// reasons of every sentinel when none does.
pub(crate) fn ask_master(
    sentinels: &[ServerAddr],
    name: &str,
    timeout: Duration,
) -> Result<ServerAddr> {
    let mut why = Vec::new();
    for s in sentinels {
        match ask_one(s, name, timeout) {
            Ok(a) => return Ok(a),
            Err(e) => why.push(format!("{s}: {e}")),
        }
    }
    Err(Error::Io {
        node: format!("sentinels of {name:?}"),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no sentinel gave the master's address ({})", why.join("; ")),
        ),
    })
}

fn ask_one(s: &ServerAddr, name: &str, timeout: Duration) -> std::io::Result<ServerAddr> {
    let ServerAddr::Tcp { host, port } = s else {
        return Err(invalid("a sentinel must be a TCP address".to_string()));
    };
    let mut last = None;
    let mut stream = None;
    for a in (host.as_str(), *port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(t) => {
                stream = Some(t);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let stream = match (stream, last) {
        (Some(t), _) => t,
        (None, Some(e)) => return Err(e),
        (None, None) => return Err(invalid(format!("{host} has no address"))),
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut frame = Vec::new();
    let args: [&[u8]; 3] = [b"SENTINEL", b"get-master-addr-by-name", name.as_bytes()];
    frame.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        frame.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        frame.extend_from_slice(a);
        frame.extend_from_slice(b"\r\n");
    }
    (&stream).write_all(&frame)?;
    let mut r = BufReader::new(&stream);
    let head = line(&mut r)?;
    match head.as_bytes().first() {
        Some(b'*') if head == "*2" => {}
        Some(b'*' | b'$') if head.ends_with("-1") => {
            return Err(invalid(format!("it watches no master named {name:?}")));
        }
        Some(b'-') => return Err(invalid(format!("it replied {:?}", &head[1..]))),
        _ => return Err(invalid(format!("unexpected reply {head:?}"))),
    }
    let ip = bulk(&mut r)?;
    let port = bulk(&mut r)?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| invalid(format!("bad master port {port:?}")))?;
    if ip.is_empty() {
        return Err(invalid("empty master host".to_string()));
    }
    Ok(ServerAddr::Tcp { host: ip, port })
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// One `\r\n`-terminated line, at most `MAX_ANSWER` bytes.
fn line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut buf = Vec::new();
    r.take(MAX_ANSWER as u64).read_until(b'\n', &mut buf)?;
    if !buf.ends_with(b"\r\n") {
        return Err(invalid("truncated or overlong reply".to_string()));
    }
    buf.truncate(buf.len() - 2);
    String::from_utf8(buf).map_err(|_| invalid("reply is not UTF-8".to_string()))
}

fn bulk(r: &mut impl BufRead) -> std::io::Result<String> {
    let head = line(r)?;
    let len = head
        .strip_prefix('$')
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n <= MAX_ANSWER)
        .ok_or_else(|| invalid(format!("expected a bulk string, got {head:?}")))?;
    let mut buf = vec![0; len + 2];
    r.read_exact(&mut buf)?;
    if !buf.ends_with(b"\r\n") {
        return Err(invalid("bulk string without its CRLF".to_string()));
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|_| invalid("reply is not UTF-8".to_string()))
}
