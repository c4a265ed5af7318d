//! The engine's counters as Python values: `Client.stats()` (a dict) next to
//! `Client.metrics_text()` (the Prometheus text the engine renders itself).
//!
//! A dict rather than text so that Python code (an LMCache status report, a custom
//! `prometheus_client` collector, a test) reads numbers without parsing.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use slotline::Stats;

/// `stats` as a dict: engine facts (`backend`, `shards`, `cores`), byte and chunk
/// counters, `errors` by kind, `syscalls` by kind, and `classes`: per priority class
/// (`peek`, `prefetch`, `get`, `put`) the completed operations, their keys and the
/// latency quantiles in seconds.
pub fn to_dict<'py>(py: Python<'py>, stats: &Stats) -> PyResult<Bound<'py, PyDict>> {
    let m = &stats.metrics;
    let d = PyDict::new(py);
    d.set_item("backend", stats.backend.to_string())?;
    d.set_item("shards", stats.shards)?;
    d.set_item("cores", stats.cores.clone())?;
    for (name, v) in [
        ("frames_sent", m.frames_sent),
        ("bytes_sent", m.bytes_sent),
        ("bytes_received", m.bytes_received),
        ("hits", m.hits),
        ("misses", m.misses),
        ("kernel_late_releases", m.kernel_late_releases),
        ("kernel_drained", m.kernel_drained),
        ("kernel_leaks", m.kernel_leaks),
        ("efault_ops", m.efault_ops),
        ("zombie_conns", m.zombie_conns),
        ("leaked_buffers", m.leaked_buffers),
        ("recv_direct_bytes", m.recv_direct_bytes),
        ("recv_staged_bytes", m.recv_staged_bytes),
        ("sent_by_reference_bytes", m.sent_by_reference_bytes),
        ("sent_copied_bytes", m.sent_copied_bytes),
    ] {
        d.set_item(name, v)?;
    }
    let errors = PyDict::new(py);
    for (kind, n) in &m.errors {
        errors.set_item(kind, n)?;
    }
    d.set_item("errors", errors)?;
    let s = &m.syscalls;
    let sys = PyDict::new(py);
    for (name, v) in [
        ("enter", s.enter),
        ("epoll_wait", s.epoll_wait),
        ("epoll_ctl", s.epoll_ctl),
        ("sock_read", s.sock_read),
        ("sock_write", s.sock_write),
        ("doorbell_read", s.doorbell_read),
        ("doorbell_write", s.doorbell_write),
    ] {
        sys.set_item(name, v)?;
    }
    d.set_item("syscalls", sys)?;
    let classes = PyDict::new(py);
    for c in &m.classes {
        let e = PyDict::new(py);
        e.set_item("ops", c.ops)?;
        e.set_item("keys", c.keys)?;
        e.set_item("p50_s", c.p50.as_secs_f64())?;
        e.set_item("p95_s", c.p95.as_secs_f64())?;
        e.set_item("p99_s", c.p99.as_secs_f64())?;
        e.set_item("max_s", c.max.as_secs_f64())?;
        classes.set_item(c.class.name(), e)?;
    }
    d.set_item("classes", classes)?;
    Ok(d)
}
