//! NUMA topology as Linux describes it under `/sys/devices/system/node`. Reads take a
//! root directory (`/` on a real host) so tests can point them at a fake tree.

use std::path::Path;

/// glibc's `CPU_SETSIZE`: `sched_setaffinity` cannot address higher CPUs.
pub(crate) const MAX_CPU: usize = 1024;

/// Parses a kernel CPU list such as `"0-3,6"` into `[0, 1, 2, 3, 6]` (CPUs below
/// 1024; an empty or malformed list is an error naming the part that is wrong).
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let s = s.trim();
    let num = |t: &str| -> Result<usize, String> {
        let t = t.trim();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{t:?} is not a CPU number"));
        }
        t.parse::<usize>()
            .map_err(|_| format!("CPU {t} is out of range"))
    };
    let mut cores = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("range {a}-{b} runs backwards"));
                }
                // Bounded before expanding so "0-99999999999" cannot exhaust memory.
                if b >= MAX_CPU {
                    return Err(format!(
                        "CPU {b} is out of range (CPUs 0 to {} can be pinned)",
                        MAX_CPU - 1
                    ));
                }
                cores.extend(a..=b);
            }
            None => cores.push(num(part)?),
        }
    }
    Ok(cores)
}

/// The NUMA nodes the host has (`node0`, `node1`, ... under `root`), in order; empty
/// when the kernel exposes none (no NUMA support).
pub fn nodes(root: &Path) -> Vec<usize> {
    let dir = root.join("sys/devices/system/node");
    let mut ids: Vec<usize> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_prefix("node")?
                    .parse()
                    .ok()
            })
            .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

/// The CPUs of NUMA node `node`, from `<root>/sys/devices/system/node/node<N>/cpulist`.
pub fn node_cpus(root: &Path, node: usize) -> Result<Vec<usize>, String> {
    let path = root.join(format!("sys/devices/system/node/node{node}/cpulist"));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("NUMA node {node} not found ({}: {e})", path.display()))?;
    let cpus = parse_cpu_list(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if cpus.is_empty() {
        return Err(format!("NUMA node {node} has no CPUs"));
    }
    Ok(cpus)
}

/// Makes the calling shard thread prefer `node` for its memory; logs the outcome and
/// goes on without it on failure (the shard works, only less locally).
pub(crate) fn prefer_node_for_shard(shard: usize, node: usize) {
    match crate::sys::prefer_numa_node(node) {
        Ok(()) => tracing::info!(shard, node, "shard memory prefers NUMA node {node}"),
        Err(e) => {
            tracing::warn!(shard, node, error = %e, "could not set the shard's NUMA memory policy; allocating anywhere")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_fake_two_node_tree() {
        let dir = std::env::temp_dir().join(format!("slotline-numa-{}", std::process::id()));
        for (n, list) in [(0, "0-3,8-11\n"), (1, "4-7,12-15\n")] {
            let d = dir.join(format!("sys/devices/system/node/node{n}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cpulist"), list).unwrap();
        }
        assert_eq!(nodes(&dir), vec![0, 1]);
        assert_eq!(
            node_cpus(&dir, 1).unwrap(),
            vec![4, 5, 6, 7, 12, 13, 14, 15]
        );
        let e = node_cpus(&dir, 2).unwrap_err();
        assert!(e.contains("NUMA node 2 not found"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_numa_cores() {
        let yaml = |cores: &str| {
            crate::Config::from_yaml_str(&format!(
                "remote_url: \"redis://127.0.0.1:6379\"\nextra_config:\n  cores: \"{cores}\"\n"
            ))
        };
        if Path::new("/sys/devices/system/node/node0/cpulist").exists() {
            let c = yaml("numa:0").unwrap();
            assert_eq!(c.numa_node, Some(0));
            assert_eq!(c.cores, Some(node_cpus(Path::new("/"), 0).unwrap()));
        }
        for bad in ["numa:999", "numa:x", "numa:"] {
            let e = yaml(bad).unwrap_err().to_string();
            assert!(e.contains("extra_config.cores") && e.contains(bad), "{e}");
        }
        assert_eq!(yaml("0-1").unwrap().numa_node, None);
    }

    #[test]
    fn this_host_has_node0_or_no_numa() {
        let root = Path::new("/");
        match nodes(root).first() {
            Some(&n) => assert!(!node_cpus(root, n).unwrap().is_empty()),
            None => assert!(node_cpus(root, 0).is_err()),
        }
    }
}
