//! Operating-system helpers for server processes: pidfiles, log files, liveness and
//! signals, and the socket option behind the fault proxy's resets. The test kit's
//! `unsafe` calls (`kill(2)`, `setsockopt(2)`) live here.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

pub(crate) fn remove_if_exists(p: &Path) {
    if let Err(e) = fs::remove_file(p) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %p.display(), error = %e, "cannot remove stale file");
        }
    }
}

pub(crate) fn read_pidfile(p: &Path) -> Option<u32> {
    fs::read_to_string(p)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&pid| pid > 0)
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn log_tail(p: &Path, lines: usize) -> String {
    let text = log_since(p, 0);
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.is_empty() {
        "(empty)".to_string()
    } else {
        tail
    }
}

/// Log text written after byte `offset` (logs are appended to across restarts).
pub(crate) fn log_since(p: &Path, offset: u64) -> String {
    let Ok(mut f) = fs::File::open(p) else {
        return String::new();
    };
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(offset)).is_err() || f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Alive per `/proc/<pid>/stat`: a zombie or a missing entry is dead. Unlike
/// `kill(pid, 0)` this is not fooled by an exited child nobody has reaped yet.
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The command name in parentheses may itself contain spaces or parentheses.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next());
    !matches!(state, None | Some('Z') | Some('X') | Some('x'))
}

/// Whether `pid` is alive and is a server on `port`; guards against signalling a reused
/// pid from a stale record. redis-server retitles itself "redis-server 127.0.0.1:PORT".
pub(crate) fn is_server_on_port(pid: u32, port: u16) -> bool {
    if !process_alive(pid) {
        return false;
    }
    let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
    let port_s = port.to_string();
    cmdline
        .split_whitespace()
        .any(|tok| tok == port_s || tok.rsplit_once(':').is_some_and(|(_, p)| p == port_s))
}

/// Whether `pid` is the server that `dir` (its own directory, `<state_dir>/<port>/`)
/// belongs to: alive, naming `port` on its command line, running in `dir` (the server
/// is started there and `--dir` keeps it there), and named by `dir`'s pidfile. The
/// command line alone is not enough: any process can name a port, and a recorded pid
/// may have been reused. A process of another user fails the check (its cwd cannot be
/// read), so it is never signalled either.
pub(crate) fn is_our_server(pid: u32, port: u16, dir: &Path) -> bool {
    if !is_server_on_port(pid, port) {
        return false;
    }
    let (Ok(cwd), Ok(dir)) = (
        fs::read_link(format!("/proc/{pid}/cwd")),
        fs::canonicalize(dir),
    ) else {
        return false;
    };
    cwd == dir && read_pidfile(&dir.join(crate::PIDFILE)) == Some(pid)
}

pub(crate) fn send_signal(pid: u32, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; pid > 0 was
    // checked, so this never signals a process group.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Sets `SO_LINGER` to on, 0 seconds on `sock`: its last close then sends a RST (and
/// drops unsent data) instead of a FIN. For the fault proxy's resets.
pub(crate) fn set_linger_zero(sock: &std::net::TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let lin = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `size_of::<linger>()` bytes from `&lin`, a live local
    // of exactly that type; the fd is borrowed from a live TcpStream.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lin as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
