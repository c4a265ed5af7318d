//! What `slotline tune` knows about a host, read from `/sys` and `/proc` under a root
//! directory (`/` for the real host; tests build a fake tree in a temp dir). Missing
//! files are `None`/empty, never errors: containers hide much of this.

use std::fs;
use std::path::{Path, PathBuf};

use slotline::host as numa;

/// One logical CPU.
#[derive(Debug, Clone, PartialEq)]
pub struct Cpu {
    /// Kernel CPU id.
    pub id: usize,
    /// NUMA node (0 when the host has no NUMA information).
    pub node: usize,
    /// Physical package (socket).
    pub package: usize,
    /// Core id within the package.
    pub core: usize,
    /// Hardware threads of the same core, itself included.
    pub siblings: Vec<usize>,
}

/// One interrupt line of a network interface.
#[derive(Debug, Clone, PartialEq)]
pub struct Irq {
    /// IRQ number.
    pub irq: u32,
    /// Name in /proc/interrupts.
    pub name: String,
    /// CPUs it may be delivered to (`/proc/irq/N/smp_affinity_list`).
    pub cpus: Vec<usize>,
}

/// A physical network interface (one with a `device` link).
#[derive(Debug, Clone, PartialEq)]
pub struct Nic {
    /// Interface name.
    pub name: String,
    /// NUMA node of its device, if the kernel knows it.
    pub node: Option<usize>,
    /// Its interrupt lines.
    pub irqs: Vec<Irq>,
}

/// Everything probed.
#[derive(Debug, Clone, Default)]
pub struct Host {
    /// NUMA node ids (empty: no NUMA information).
    pub nodes: Vec<usize>,
    /// Online CPUs.
    pub cpus: Vec<Cpu>,
    /// CPUs this process may run on (`Cpus_allowed_list`).
    pub allowed: Vec<usize>,
    /// Physical NICs.
    pub nics: Vec<Nic>,
    /// Soft RLIMIT_MEMLOCK in bytes (`None` in the outer option: unknown; inner: unlimited).
    pub memlock: Option<Option<u64>>,
    /// `kernel.io_uring_disabled` (0 allowed, 1 privileged only, 2 disabled).
    pub io_uring_disabled: Option<u32>,
    /// Whether an io_uring could be created here and now (only probed for the real root).
    pub io_uring_works: Option<bool>,
    /// `Seccomp` of /proc/self/status (0 off, 1 strict, 2 filter).
    pub seccomp: Option<u32>,
    /// `net.core.rmem_max`, `net.core.wmem_max`.
    pub rmem_max: Option<u64>,
    /// See `rmem_max`.
    pub wmem_max: Option<u64>,
    /// `net.ipv4.tcp_rmem` / `tcp_wmem`: min, default, max.
    pub tcp_rmem: Option<[u64; 3]>,
    /// See `tcp_rmem`.
    pub tcp_wmem: Option<[u64; 3]>,
    /// Transparent huge pages mode (the bracketed word of `enabled`).
    pub thp: Option<String>,
}

fn read(root: &Path, rel: &str) -> Option<String> {
    fs::read_to_string(root.join(rel)).ok()
}

fn num<T: std::str::FromStr>(root: &Path, rel: &str) -> Option<T> {
    read(root, rel)?.trim().parse().ok()
}

fn triple(root: &Path, rel: &str) -> Option<[u64; 3]> {
    let v: Vec<u64> = read(root, rel)?
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    v.try_into().ok()
}

/// Reads the host under `root`. `probe_uring` creates a small io_uring to see whether
/// the kernel and seccomp allow it (pass `false` for a fake root).
pub fn probe(root: &Path, probe_uring: bool) -> Host {
    let nodes = numa::nodes(root);
    let node_of = |cpu: usize| {
        nodes
            .iter()
            .find(|&&n| numa::node_cpus(root, n).is_ok_and(|c| c.contains(&cpu)))
            .copied()
            .unwrap_or(0)
    };
    let online = read(root, "sys/devices/system/cpu/online")
        .and_then(|s| numa::parse_cpu_list(&s).ok())
        .unwrap_or_default();
    let cpus = online
        .iter()
        .map(|&id| {
            let t = format!("sys/devices/system/cpu/cpu{id}/topology");
            Cpu {
                id,
                node: node_of(id),
                package: num(root, &format!("{t}/physical_package_id")).unwrap_or(0),
                core: num(root, &format!("{t}/core_id")).unwrap_or(id),
                siblings: read(root, &format!("{t}/thread_siblings_list"))
                    .and_then(|s| numa::parse_cpu_list(&s).ok())
                    .unwrap_or_else(|| vec![id]),
            }
        })
        .collect();
    let status = read(root, "proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(':').map(str::trim))
    };
    Host {
        nodes,
        cpus,
        allowed: field("Cpus_allowed_list")
            .and_then(|s| numa::parse_cpu_list(s).ok())
            .unwrap_or(online),
        nics: nics(root),
        memlock: memlock(root),
        io_uring_disabled: num(root, "proc/sys/kernel/io_uring_disabled"),
        io_uring_works: probe_uring.then(|| io_uring::IoUring::new(4).is_ok()),
        seccomp: field("Seccomp").and_then(|s| s.parse().ok()),
        rmem_max: num(root, "proc/sys/net/core/rmem_max"),
        wmem_max: num(root, "proc/sys/net/core/wmem_max"),
        tcp_rmem: triple(root, "proc/sys/net/ipv4/tcp_rmem"),
        tcp_wmem: triple(root, "proc/sys/net/ipv4/tcp_wmem"),
        thp: read(root, "sys/kernel/mm/transparent_hugepage/enabled").and_then(|s| {
            let a = s.find('[')?;
            let b = s[a..].find(']')?;
            Some(s[a + 1..a + b].to_string())
        }),
    }
}

/// `Max locked memory` of /proc/self/limits: soft limit in bytes, `None` = unlimited.
fn memlock(root: &Path) -> Option<Option<u64>> {
    let limits = read(root, "proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))?;
    let soft = line["Max locked memory".len()..]
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        Some(None)
    } else {
        soft.parse().ok().map(Some)
    }
}

/// Interfaces with a `device` link, their NUMA node and their IRQs: lines of
/// /proc/interrupts naming the interface (`eth0-TxRx-0`) or its device (`virtio2-input.0`).
fn nics(root: &Path) -> Vec<Nic> {
    let interrupts = read(root, "proc/interrupts").unwrap_or_default();
    let Ok(rd) = fs::read_dir(root.join("sys/class/net")) else {
        return Vec::new();
    };
    let mut out: Vec<Nic> = rd
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_str()?.to_string();
            let dev: PathBuf = e.path().join("device");
            if !dev.exists() {
                return None; // virtual: lo, bridges, ifb
            }
            // The device link's target: a virtio function's name (virtio2) or a PCI address.
            let dev_name = fs::canonicalize(&dev)
                .ok()
                .and_then(|p| p.file_name()?.to_str().map(String::from));
            let node = fs::read_to_string(dev.join("numa_node"))
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .and_then(|n| usize::try_from(n).ok());
            let irqs = interrupts
                .lines()
                .filter_map(|l| {
                    let (irq, rest) = l.trim_start().split_once(':')?;
                    let irq: u32 = irq.parse().ok()?;
                    let label = rest.split_whitespace().last()?.to_string();
                    let ours = label.starts_with(&name)
                        || dev_name.as_deref().is_some_and(|d| {
                            label.starts_with(&format!("{d}-")) && !label.ends_with("config")
                        });
                    ours.then(|| Irq {
                        irq,
                        cpus: read(root, &format!("proc/irq/{irq}/smp_affinity_list"))
                            .and_then(|s| numa::parse_cpu_list(&s).ok())
                            .unwrap_or_default(),
                        name: label,
                    })
                })
                .collect();
            Some(Nic { name, node, irqs })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
