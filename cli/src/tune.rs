//! `slotline tune`: reads the host ([`crate::host`]) and recommends a shard-to-core map
//! and system settings, each with a one-line reason. `--json` prints the same.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;

use crate::bench::json_escape;
use crate::host::{probe, Host};
use crate::CliError;

/// Arguments of `slotline tune`.
#[derive(Debug, Args)]
pub struct TuneArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Read /sys and /proc under this directory instead of / (for testing).
    #[arg(long, value_name = "DIR", hide = true)]
    root: Option<PathBuf>,
}

/// One recommended setting.
#[derive(Debug, Clone, PartialEq)]
pub struct Advice {
    /// What it is about (`cores`, `memlock`, ...).
    pub topic: &'static str,
    /// The setting or command.
    pub setting: String,
    /// Why, in one line.
    pub reason: String,
}

/// The result: shard cores, the config line and the settings.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The NUMA node the shards should live on.
    pub node: usize,
    /// CPU of shard i.
    pub shard_cores: Vec<usize>,
    /// Everything else.
    pub advice: Vec<Advice>,
}

/// Socket buffer size worth having for multi-MiB replies.
const WANT_SOCKBUF: u64 = 16 << 20;
/// Memlock below this stops registering receive buffers on busy hosts.
const WANT_MEMLOCK: u64 = 64 << 20;

/// Builds the plan for `h`.
pub fn plan(h: &Host) -> Plan {
    let mut advice = Vec::new();
    let mut add = |topic, setting: String, reason: String| {
        advice.push(Advice {
            topic,
            setting,
            reason,
        })
    };
    // The node: the first NIC's, else the node with most allowed CPUs, else 0.
    let nic_node = h.nics.iter().find_map(|n| n.node);
    let allowed: BTreeSet<usize> = h.allowed.iter().copied().collect();
    let allowed_on = |node: usize| {
        h.cpus
            .iter()
            .filter(|c| c.node == node && allowed.contains(&c.id))
            .count()
    };
    let node = nic_node
        .filter(|&n| allowed_on(n) > 0)
        .or_else(|| h.nodes.iter().copied().max_by_key(|&n| allowed_on(n)))
        .unwrap_or(0);
    // One hardware thread per physical core on that node.
    let mut seen = BTreeSet::new();
    let primaries: Vec<usize> = h
        .cpus
        .iter()
        .filter(|c| c.node == node && allowed.contains(&c.id))
        .filter(|c| seen.insert((c.package, c.core)))
        .map(|c| c.id)
        .collect();
    let irq_cpus: BTreeSet<usize> = h
        .nics
        .iter()
        .flat_map(|n| &n.irqs)
        .filter(|i| i.cpus.len() < h.cpus.len().max(1))
        .flat_map(|i| i.cpus.iter().copied())
        .collect();
    let free: Vec<usize> = primaries
        .iter()
        .copied()
        .filter(|c| !irq_cpus.contains(c))
        .collect();
    // Leave the NIC's interrupt CPUs to the kernel when two or more cores remain.
    let shard_cores = if free.len() >= 2 {
        free
    } else {
        primaries.clone()
    };
    let smt = h.cpus.iter().any(|c| c.siblings.len() > 1);
    let cores_value = if h.nodes.len() > 1 && shard_cores.len() == primaries.len() && !smt {
        format!("numa:{node}")
    } else {
        list(&shard_cores)
    };
    let mut why = format!(
        "one shard per physical core on NUMA node {node} ({})",
        if nic_node == Some(node) {
            "the NIC's node"
        } else {
            "most usable CPUs"
        }
    );
    if smt {
        why.push_str("; SMT siblings left idle, they share the core's caches");
    }
    if shard_cores.len() < primaries.len() {
        why.push_str("; NIC interrupt CPUs left to the kernel");
    }
    add(
        "cores",
        format!("extra_config.cores: \"{cores_value}\""),
        why,
    );
    if h.nodes.len() > 1 {
        add(
            "numa",
            format!("extra_config.cores: \"numa:{node}\" (or numactl --cpunodebind={node} --membind={node})"),
            "shard memory (receive buffers, values) then comes from the node the shards run on".into(),
        );
    }
    for nic in &h.nics {
        let spread: BTreeSet<usize> = nic
            .irqs
            .iter()
            .flat_map(|i| i.cpus.iter().copied())
            .collect();
        let overlap: Vec<usize> = shard_cores
            .iter()
            .copied()
            .filter(|c| spread.contains(c))
            .collect();
        if !nic.irqs.is_empty() && !overlap.is_empty() && shard_cores.len() < h.cpus.len() {
            let others = list(
                &h.cpus
                    .iter()
                    .map(|c| c.id)
                    .filter(|c| !shard_cores.contains(c))
                    .collect::<Vec<_>>(),
            );
            add(
                "irq",
                format!(
                    "for i in {}; do echo {others} > /proc/irq/$i/smp_affinity_list; done",
                    list(&nic.irqs.iter().map(|i| i.irq as usize).collect::<Vec<_>>())
                ),
                format!(
                    "{} interrupts land on shard CPUs {}; softirq work there delays the shard loop",
                    nic.name,
                    list(&overlap)
                ),
            );
        }
    }
    match h.memlock {
        Some(Some(b)) if b < WANT_MEMLOCK => add(
            "memlock",
            "ulimit -l unlimited (systemd: LimitMEMLOCK=infinity)".into(),
            format!("memlock is {} KiB; io_uring's registered 128 KiB receive buffers are pinned and count against it (reads fall back to unregistered ones)", b >> 10),
        ),
        Some(_) => add("memlock", "keep".into(), "memlock is large enough for registered receive buffers".into()),
        None => {}
    }
    let uring_ok = h.io_uring_disabled.unwrap_or(0) == 0 && h.io_uring_works != Some(false);
    let backend = if uring_ok { "io_uring" } else { "epoll" };
    let mut why = match (h.io_uring_disabled, h.io_uring_works) {
        (Some(d), _) if d > 0 => format!("kernel.io_uring_disabled = {d}"),
        (_, Some(false)) => "io_uring_setup failed here".into(),
        (_, Some(true)) => "io_uring_setup works here: fewer syscalls per frame".into(),
        _ => "io_uring looks available".into(),
    };
    if h.seccomp == Some(2) {
        why.push_str("; a seccomp filter is active (container runtimes often block io_uring)");
    }
    add(
        "backend",
        format!("extra_config.io_backend: {backend}"),
        why,
    );
    for (key, v) in [
        ("net.core.rmem_max", h.rmem_max),
        ("net.core.wmem_max", h.wmem_max),
    ] {
        if let Some(v) = v.filter(|&v| v < WANT_SOCKBUF) {
            add(
                "sockbuf",
                format!("sysctl -w {key}={WANT_SOCKBUF}"),
                format!(
                    "{} KiB caps the socket buffer a multi-MiB chunk reply streams through",
                    v >> 10
                ),
            );
        }
    }
    for (key, v) in [
        ("net.ipv4.tcp_rmem", h.tcp_rmem),
        ("net.ipv4.tcp_wmem", h.tcp_wmem),
    ] {
        if let Some([a, b, m]) = v.filter(|t| t[2] < WANT_SOCKBUF) {
            add(
                "sockbuf",
                format!("sysctl -w {key}=\"{a} {b} {WANT_SOCKBUF}\""),
                format!(
                    "autotuning stops at {} KiB, below one large chunk in flight",
                    m >> 10
                ),
            );
        }
    }
    match h.thp.as_deref() {
        Some("never") => add("thp", "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled".into(), "multi-MiB value buffers then may use huge pages; never forces 4 KiB pages and more TLB misses".into()),
        Some(m) => add("thp", "keep".into(), format!("THP is {m}; fine for large value buffers")),
        None => {}
    }
    Plan {
        node,
        shard_cores,
        advice,
    }
}

/// `[0, 1, 2, 5]` -> `"0-2,5"`.
fn list(v: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        let _ = if j > i {
            write!(out, "{}-{}", v[i], v[j])
        } else {
            write!(out, "{}", v[i])
        };
        i = j + 1;
    }
    out
}

fn json_str(s: &str) -> String {
    format!("\"{}\"", json_escape(s))
}

/// The plan (and the host facts it came from) as one JSON object.
pub fn to_json(h: &Host, p: &Plan) -> String {
    let nums = |v: &[usize]| {
        v.iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let opt = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
    let advice = p
        .advice
        .iter()
        .map(|a| {
            format!(
                "{{\"topic\":{},\"setting\":{},\"reason\":{}}}",
                json_str(a.topic),
                json_str(&a.setting),
                json_str(&a.reason)
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    let nics = h
        .nics
        .iter()
        .map(|n| {
            format!(
                "{{\"name\":{},\"node\":{},\"irqs\":[{}]}}",
                json_str(&n.name),
                opt(n.node.map(|x| x as u64)),
                n.irqs
                    .iter()
                    .map(|i| i.irq.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "{{\"host\":{{\"nodes\":[{}],\"cpus\":{},\"allowed\":[{}],\"nics\":[{nics}],\"memlock_bytes\":{},\"io_uring_disabled\":{},\"io_uring_works\":{},\"seccomp\":{},\"rmem_max\":{},\"wmem_max\":{},\"thp\":{}}},\"node\":{},\"shard_cores\":[{}],\"advice\":[{advice}]}}",
        nums(&h.nodes),
        h.cpus.len(),
        nums(&h.allowed),
        match h.memlock { Some(Some(b)) => b.to_string(), Some(None) => "\"unlimited\"".into(), None => "null".into() },
        opt(h.io_uring_disabled.map(u64::from)),
        h.io_uring_works.map_or("null".into(), |b| b.to_string()),
        opt(h.seccomp.map(u64::from)),
        opt(h.rmem_max),
        opt(h.wmem_max),
        h.thp.as_deref().map_or("null".into(), json_str),
        p.node,
        nums(&p.shard_cores),
    )
}

/// The plan as text.
pub fn to_text(h: &Host, p: &Plan) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "host: {} CPUs online ({} allowed), NUMA nodes [{}], NICs [{}]",
        h.cpus.len(),
        list(&h.allowed),
        list(&h.nodes),
        h.nics
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(o, "shard -> core:");
    for (i, c) in p.shard_cores.iter().enumerate() {
        let _ = writeln!(o, "  shard {i} -> cpu {c}");
    }
    for a in &p.advice {
        let _ = writeln!(
            o,
            "{:<8} {}\n         because {}",
            a.topic, a.setting, a.reason
        );
    }
    o
}

/// Runs `slotline tune`.
pub fn run(a: TuneArgs) -> Result<(), CliError> {
    let real = a.root.is_none();
    let root = a.root.unwrap_or_else(|| PathBuf::from("/"));
    let h = probe(&root, real);
    if h.cpus.is_empty() {
        return Err(CliError::failed(format!(
            "no CPUs found under {}/sys/devices/system/cpu/online",
            root.display()
        )));
    }
    let p = plan(&h);
    if a.json {
        println!("{}", to_json(&h, &p));
    } else {
        print!("{}", to_text(&h, &p));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
