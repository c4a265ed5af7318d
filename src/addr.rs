//! Where a Redis server listens ([`ServerAddr`]) and how one `host[:port]` entry of a
//! server list is read. A leaf: the configuration, the cluster map, the sentinel client
//! and the shards all name servers with it.

use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;

/// Redis's default port.
pub(crate) const DEFAULT_PORT: u16 = 6379;

/// Where a Redis server listens.
///
/// ```
/// use slotline::ServerAddr;
/// let a = ServerAddr::Tcp { host: "::1".into(), port: 6379 };
/// assert_eq!(a.to_string(), "[::1]:6379");
/// let u = ServerAddr::Unix { path: "/run/redis.sock".into() };
/// assert_eq!(u.to_string(), "unix:/run/redis.sock");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerAddr {
    /// A TCP endpoint; `host` is a name or an IP address (IPv6 without brackets).
    Tcp { host: String, port: u16 },
    /// A Unix domain socket.
    Unix { path: PathBuf },
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            ServerAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            ServerAddr::Unix { path } => write!(f, "unix:{}", path.display()),
        }
    }
}

/// One `host[:port]` or `[v6][:port]` entry of a seed list.
pub(crate) fn parse_seed(s: &str) -> std::result::Result<ServerAddr, String> {
    if s.is_empty() {
        return Err("empty host in the server list".to_string());
    }
    let (host, port) = if let Some(inner) = s.strip_prefix('[') {
        let Some((v6, after)) = inner.split_once(']') else {
            return Err(format!("{s:?}: missing ']' after the IPv6 address"));
        };
        // A zone suffix (fe80::1%eth0) is legal for link-local addresses.
        let addr = v6.split('%').next().unwrap_or(v6);
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{v6:?} is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Err(format!("{s:?}: expected ':port' after ']'")),
            },
        };
        (v6, port)
    } else {
        if s.matches(':').count() > 1 {
            return Err(format!(
                "{s:?}: an IPv6 address must be written in brackets, e.g. [::1]:6379"
            ));
        }
        let (host, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if host.is_empty() {
            return Err(format!("{s:?}: empty host"));
        }
        if let Some(bad) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
        {
            return Err(format!(
                "host {host:?} contains the invalid character {bad:?}"
            ));
        }
        (host, port)
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => parse_port(p)?,
    };
    Ok(ServerAddr::Tcp {
        host: host.to_string(),
        port,
    })
}

fn parse_port(p: &str) -> std::result::Result<u16, String> {
    if p.is_empty() {
        return Err("empty port".to_string());
    }
    if !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {p:?} is not a number"));
    }
    match p.parse::<u16>() {
        Ok(0) => Err("port 0 is not a valid port".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("port {p} is out of range (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> ServerAddr {
        ServerAddr::Tcp {
            host: host.to_string(),
            port,
        }
    }

    #[test]
    fn display_and_parse_round_trip() {
        assert_eq!(tcp("localhost", 6379).to_string(), "localhost:6379");
        assert_eq!(tcp("::1", 7000).to_string(), "[::1]:7000");
        let unix = ServerAddr::Unix {
            path: "/tmp/r.sock".into(),
        };
        assert_eq!(unix.to_string(), "unix:/tmp/r.sock");
        for a in [tcp("localhost", 6379), tcp("::1", 7000), tcp("10.0.0.1", 1)] {
            assert_eq!(parse_seed(&a.to_string()), Ok(a));
        }
        assert_eq!(parse_seed("h"), Ok(tcp("h", DEFAULT_PORT)));
        assert!(parse_seed("h:0").unwrap_err().contains("port 0"));
        assert!(parse_seed("::1").unwrap_err().contains("brackets"));
    }
}
