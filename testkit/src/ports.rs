//! Finding the `redis-server` binary and free TCP ports for the servers to start.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::Result;

use crate::{local_err, BUS_PORT_OFFSET, MAX_CLUSTER_PORT};

/// Finds the `redis-server` binary: `$SLOTLINE_REDIS_SERVER` if set, else the first
/// `redis-server` on `PATH`, else `/usr/bin/redis-server`, else `/usr/sbin/redis-server`.
///
/// `SLOTLINE_REDIS_SERVER` may name any compatible server (e.g. `valkey-server`).
pub fn redis_server_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SLOTLINE_REDIS_SERVER") {
        let p = PathBuf::from(p);
        if is_executable(&p) {
            return Ok(p);
        }
        return Err(local_err(format!(
            "SLOTLINE_REDIS_SERVER={} is not an executable file: point it at a redis-server \
             (or valkey-server) binary, or unset it to search PATH",
            p.display()
        )));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("redis-server");
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    // Non-login root shells and CI environments sometimes lack the sbin directories.
    for candidate in ["/usr/bin/redis-server", "/usr/sbin/redis-server"] {
        let candidate = PathBuf::from(candidate);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(local_err(
        "redis-server not found on PATH, in /usr/bin or in /usr/sbin: install it with \
         `apt-get install -y redis-server`, or set SLOTLINE_REDIS_SERVER to its path",
    ))
}

pub(crate) fn is_executable(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Ports (client and bus) this process has handed out already, so that parallel tests in
/// one process never get the same one.
static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());

fn claim_ports(ports: &[u16]) -> bool {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    if ports.iter().any(|p| handed.contains(p)) {
        return false;
    }
    handed.extend_from_slice(ports);
    true
}

/// Whether a TCP listener could bind `127.0.0.1:port` right now.
pub fn port_is_free(port: u16) -> bool {
    port != 0 && TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A TCP port on 127.0.0.1 that is free now and that this process has not handed out
/// before.
///
/// Ports are drawn at random below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), where the local end of an outgoing connection never
/// lands: a port found free stays free until the server binds it, and a killed server
/// can be restarted on its port even while tests open thousands of connections. Only
/// if that range leaves no room does this fall back to binding port 0. Another listener
/// can still take the port first; [`RedisProcess::start`](crate::RedisProcess::start) then retries on a new one.
pub fn free_port() -> Result<u16> {
    free_port_block(1, false)
}

/// Like [`free_port`], for a cluster node: the port is below 55535 and its cluster bus
/// port (port + 10000) is free as well.
pub fn free_cluster_port() -> Result<u16> {
    free_port_block(1, true)
}

/// The first of `count` consecutive free ports (each with a free bus port if `cluster`),
/// for topologies on consecutive ports such as `slotline servers up` with a base port.
/// Chosen as [`free_port`] chooses.
pub fn free_port_block(count: u16, cluster: bool) -> Result<u16> {
    let count = count.max(1);
    let span = count - 1 + if cluster { BUS_PORT_OFFSET } else { 0 };
    // Well-known services (6379, 7000-7005 of `servers up`, ...) live below this.
    const POOL_START: u32 = 10_000;
    let pool_end = u32::from(ephemeral_port_start()).saturating_sub(u32::from(span));
    let mut rng = seed();
    for attempt in 0..1000u32 {
        let first = if pool_end > POOL_START + 1000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (POOL_START + (rng % u64::from(pool_end - POOL_START)) as u32) as u16
        } else {
            let probe = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| {
                    local_err(format!(
                        "cannot bind a TCP socket on 127.0.0.1 to find a free port: {e}; \
                         check that the loopback interface is up"
                    ))
                })?;
            probe.port()
        };
        let Some(last) = first.checked_add(count - 1) else {
            continue;
        };
        if cluster && last > MAX_CLUSTER_PORT {
            continue;
        }
        let mut ports: Vec<u16> = (first..=last).collect();
        if cluster {
            ports.extend((first..=last).map(|p| p + BUS_PORT_OFFSET));
        }
        if ports.iter().all(|&p| port_is_free(p)) && claim_ports(&ports) {
            tracing::trace!(first, count, attempt, "picked free port(s)");
            return Ok(first);
        }
    }
    Err(local_err(format!(
        "found no {count} consecutive free port(s) on 127.0.0.1 after 1000 tries; \
         close some listening processes"
    )))
}

/// First port of the kernel's ephemeral range (Linux default 32768).
fn ephemeral_port_start() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A seed that differs between processes and calls, so that concurrent test binaries
/// start their searches at different ports.
fn seed() -> u64 {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let calls = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (nanos ^ (u64::from(std::process::id()) << 32) ^ calls.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1
}
