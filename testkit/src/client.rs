//! A small blocking RESP2 client on `redis-protocol`: the control-plane client of the
//! server management code, the client of the naive benchmark baseline, and the oracle
//! of tests that look at what the engine left in Redis.
//!
//! It is the only RESP decoder outside the library, on purpose built on a different
//! implementation than the engine's hand-written one, so that the two check each other.
//! Replies are decoded zero-copy out of the read buffer ([`BytesFrame`]); one reply is
//! in flight at a time.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::BytesMut;
use redis_protocol::resp2::decode::decode_bytes_mut;
pub use redis_protocol::resp2::types::{BytesFrame, OwnedFrame, Resp2Frame};

use crate::{Error, Result};

/// Connect, read and write timeout of [`command`] and friends.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Smallest free space offered to one `read`.
const READ_CHUNK: usize = 64 * 1024;

/// Appends `args` to `out` as one RESP array of bulk strings.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    encode_array_header(out, args.len());
    for a in args {
        encode_bulk(out, a);
    }
}

/// Appends the `*<len>\r\n` header of an array of `len` elements.
pub fn encode_array_header(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(format!("*{len}\r\n").as_bytes());
}

/// Appends one bulk string.
pub fn encode_bulk(out: &mut Vec<u8>, arg: &[u8]) {
    encode_bulk_header(out, arg.len());
    out.extend_from_slice(arg);
    out.extend_from_slice(b"\r\n");
}

/// Appends the `$<len>\r\n` header of a bulk string whose bytes are sent separately
/// (followed by `\r\n`), for values written from the caller's buffer.
pub fn encode_bulk_header(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(format!("${len}\r\n").as_bytes());
}

/// A blocking connection to one server.
#[derive(Debug)]
pub struct Client {
    node: String,
    stream: TcpStream,
    buf: BytesMut,
    timeout: Duration,
}

impl Client {
    /// Connects to `addr` (`host:port`); `timeout` bounds the connect and every later
    /// read and write.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Client> {
        let io_err = |source: io::Error| Error::Io {
            node: addr.to_string(),
            source,
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
        for sa in addr.to_socket_addrs().map_err(io_err)? {
            match TcpStream::connect_timeout(&sa, timeout) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
                    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
                    stream.set_nodelay(true).map_err(io_err)?;
                    return Ok(Client {
                        node: addr.to_string(),
                        stream,
                        buf: BytesMut::with_capacity(READ_CHUNK),
                        timeout,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(io_err(last))
    }

    /// Connects with [`ADMIN_TIMEOUT`] and sends AUTH first if `password` is set.
    pub fn open(addr: &str, password: Option<&str>) -> Result<Client> {
        let mut conn = Client::connect(addr, ADMIN_TIMEOUT)?;
        if let Some(pw) = password {
            if let OwnedFrame::Error(message) = conn.call_raw(&[b"AUTH", pw.as_bytes()])? {
                return Err(Error::Auth {
                    node: addr.to_string(),
                    message,
                });
            }
        }
        Ok(conn)
    }

    /// The `host:port` this client talks to.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Sends one command; an error reply becomes `Error::Server`.
    pub fn call(&mut self, args: &[&[u8]]) -> Result<OwnedFrame> {
        match self.call_raw(args)? {
            OwnedFrame::Error(message) => Err(Error::Server {
                node: self.node.clone(),
                message,
            }),
            frame => Ok(frame),
        }
    }

    /// Sends one command and returns its reply, an error reply included.
    pub fn call_raw(&mut self, args: &[&[u8]]) -> Result<OwnedFrame> {
        let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        encode_command(&mut out, args);
        let what = String::from_utf8_lossy(args.first().copied().unwrap_or(b"")).into_owned();
        Ok(self.exchange(&[&out], &what)?.to_owned_frame())
    }

    /// Like [`Client::call`] with text arguments, the reply rendered by [`render`].
    pub fn call_str(&mut self, args: &[&str]) -> Result<String> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        Ok(render(&self.call(&args)?))
    }

    /// Writes the parts of one already encoded request in order (so that a large value
    /// goes out from the caller's buffer) and reads its reply; `what` names the request
    /// in errors.
    pub fn exchange(&mut self, parts: &[&[u8]], what: &str) -> Result<BytesFrame> {
        for p in parts {
            self.stream
                .write_all(p)
                .map_err(|e| self.io_error(e, what))?;
        }
        self.read_reply(what)
    }

    /// Reads one reply.
    pub fn read_reply(&mut self, what: &str) -> Result<BytesFrame> {
        loop {
            match decode_bytes_mut(&mut self.buf) {
                Ok(Some((frame, _, _))) => return Ok(frame),
                Ok(None) => {}
                Err(e) => {
                    return Err(Error::Protocol {
                        node: self.node.clone(),
                        reason: format!("unparsable reply to {what}: {e:?}"),
                    })
                }
            }
            // A fixed read size bounds the zero-filling to what one read can return;
            // BytesMut's own doubling keeps a large value's copying linear in its size.
            let filled = self.buf.len();
            self.buf.resize(filled + READ_CHUNK, 0);
            let n = match self.stream.read(&mut self.buf[filled..]) {
                Ok(n) => n,
                Err(e) => {
                    self.buf.truncate(filled);
                    return Err(self.io_error(e, what));
                }
            };
            self.buf.truncate(filled + n);
            if n == 0 {
                return Err(Error::Io {
                    node: self.node.clone(),
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("connection closed before the reply to {what}"),
                    ),
                });
            }
        }
    }

    fn io_error(&self, e: io::Error, what: &str) -> Error {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            Error::Timeout {
                after: self.timeout,
                what: format!("{what} to {}", self.node),
            }
        } else {
            Error::Io {
                node: self.node.clone(),
                source: e,
            }
        }
    }
}

/// Sends one command to `addr` over a new connection (AUTH first if `password` is set)
/// and returns the parsed reply. Connect, read and write time out after 5 s.
///
/// Errors: `Error::Io`/`Error::Timeout` for the connection, `Error::Auth` if AUTH is
/// refused, `Error::Server` for an error reply (its message keeps the server's prefix,
/// e.g. `NOAUTH ...`, `MOVED 3999 127.0.0.1:7001`), `Error::Protocol` for bad RESP.
pub fn command(addr: &str, password: Option<&str>, args: &[&[u8]]) -> Result<OwnedFrame> {
    Client::open(addr, password)?.call(args)
}

/// Like [`command`] with text arguments, the reply rendered as text: simple and bulk
/// strings as they are (lossy UTF-8), integers in decimal, nil as the empty string,
/// arrays as their rendered elements joined by newlines.
pub fn command_str(addr: &str, password: Option<&str>, args: &[&str]) -> Result<String> {
    Client::open(addr, password)?.call_str(args)
}

/// Runs several commands in order on one connection (as [`command_str`] renders them),
/// for sequences that depend on connection state: a write then `WAIT`, `READONLY` then
/// a read on a replica, `MULTI`...`EXEC`. Stops at the first error reply.
pub fn command_strs(
    addr: &str,
    password: Option<&str>,
    commands: &[&[&str]],
) -> Result<Vec<String>> {
    let mut conn = Client::open(addr, password)?;
    commands.iter().map(|args| conn.call_str(args)).collect()
}

/// A reply as text (see [`command_str`]).
pub fn render(frame: &OwnedFrame) -> String {
    match frame {
        OwnedFrame::SimpleString(b) | OwnedFrame::BulkString(b) => {
            String::from_utf8_lossy(b).into_owned()
        }
        OwnedFrame::Error(e) => e.clone(),
        OwnedFrame::Integer(i) => i.to_string(),
        OwnedFrame::Null => String::new(),
        OwnedFrame::Array(items) => items.iter().map(render).collect::<Vec<_>>().join("\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"k", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn renders_replies() {
        let f = OwnedFrame::Array(vec![
            OwnedFrame::Integer(3),
            OwnedFrame::Null,
            OwnedFrame::BulkString(b"x".to_vec()),
        ]);
        assert_eq!(render(&f), "3\n\nx");
    }
}
