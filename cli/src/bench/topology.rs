//! What the bench runs on (issue 19): clusters of N masters started in turn, servers
//! and client pinned to CPU lists, the server binary and its I/O threads, slotline's
//! read modes; and the scaling table (GB/s and keys/s against masters) at the end.

use super::*;

/// A CPU list (`0-3,6`), as `--server-cores` and `--client-cores` take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// clap value parser for a CPU list.
pub fn parse_cpus(s: &str) -> Result<CpuList, String> {
    let v = slotline::host::parse_cpu_list(s)?;
    if v.is_empty() {
        return Err(format!("CPU list {s:?} names no CPU"));
    }
    Ok(CpuList(v))
}

/// `--reads` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReadMode {
    /// `Engine::get`: buffers the engine allocates (or reuses from its pool).
    Get,
    /// `Engine::get(..).into_slices(..)`: the caller's buffers, allocated once per run.
    GetInto,
}

/// The servers the bench starts for one cluster size.
#[derive(Debug, Clone)]
pub struct ServerTopology {
    /// Standalone or cluster.
    pub mode: Mode,
    /// Masters of a cluster.
    pub masters: usize,
    /// Replicas per master of a cluster.
    pub replicas: usize,
    /// CPUs handed out to the nodes, round-robin; empty: unpinned.
    pub cores: Vec<usize>,
    /// `--io-threads`; each node gets that many CPUs of `cores`.
    pub io_threads: Option<u32>,
    /// The server binary.
    pub binary: Option<PathBuf>,
    /// Serve TLS too.
    pub tls: bool,
}

impl ServerTopology {
    /// The 3 + 3 cluster or one standalone server of the bench without topology flags.
    pub fn default_for(mode: Mode, tls: bool) -> ServerTopology {
        ServerTopology {
            mode,
            masters: if mode == Mode::Cluster { 3 } else { 1 },
            replicas: usize::from(mode == Mode::Cluster),
            cores: Vec::new(),
            io_threads: None,
            binary: None,
            tls,
        }
    }

    /// The CPUs of node `i` (masters `0..masters`, then the replicas): the next
    /// `io_threads` (at least one) entries of `cores`, round-robin.
    pub fn cpus_of(&self, i: usize) -> Vec<usize> {
        if self.cores.is_empty() {
            return Vec::new();
        }
        let k = self.io_threads.unwrap_or(1).max(1) as usize;
        let mut v: Vec<usize> = (0..k)
            .map(|j| self.cores[(i * k + j) % self.cores.len()])
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        let mut s = match self.mode {
            Mode::Cluster => format!(
                "cluster of {} master(s) + {} replica(s) each",
                self.masters, self.replicas
            ),
            Mode::Standalone => "standalone server".into(),
        };
        if !self.cores.is_empty() {
            let nodes = self.masters * (1 + self.replicas);
            let pins: Vec<String> = (0..nodes)
                .map(|i| slotline_testkit::process::cpu_list(&self.cpus_of(i)))
                .collect();
            let _ = write!(s, ", node CPUs [{}]", pins.join(" "));
        }
        if let Some(k) = self.io_threads {
            let _ = write!(s, ", io-threads {k}");
        }
        if let Some(b) = &self.binary {
            let _ = write!(s, ", binary {}", b.display());
        }
        s
    }
}

/// The scaling series of a `--masters` invocation: per value size, phase and peer, the
/// median GB/s and keys/s at each cluster size, and each against the smallest size.
pub fn scaling_table(records: &[Record]) -> String {
    let med: Vec<&Record> = records
        .iter()
        .filter(|r| r.run.is_none() && r.masters.is_some())
        .collect();
    let mut masters: Vec<usize> = med.iter().filter_map(|r| r.masters).collect();
    masters.sort_unstable();
    masters.dedup();
    if masters.len() < 2 {
        return String::new();
    }
    type Key = (usize, String, String, String);
    let mut rows: BTreeMap<Key, BTreeMap<usize, (f64, f64)>> = BTreeMap::new();
    for r in &med {
        let label = match &r.keys {
            Some(k) => format!("{}[{k}]", r.phase),
            None => r.phase.clone(),
        };
        let key = (r.value_size, label, r.peer.clone(), r.read.clone());
        if let Some(m) = r.masters {
            rows.entry(key)
                .or_default()
                .insert(m, (r.s.mb_per_s / 1e3, r.s.keys_per_s));
        }
    }
    let w = rows
        .keys()
        .map(|(_, _, p, r)| p.len() + r.len() + 3)
        .max()
        .unwrap_or(4);
    let mut t =
        String::from("\nscaling: GB/s (keys/s) against masters; xN = against the first column\n");
    let _ = write!(t, "{:<6} {:<16} {:<w$}", "size", "phase", "peer (read)");
    for m in &masters {
        let _ = write!(t, " {:>22}", format!("{m} master(s)"));
    }
    t.push('\n');
    for ((size, phase, peer, read), cells) in rows {
        let label = format!("{peer} ({read})");
        let _ = write!(t, "{:<6} {:<16} {label:<w$}", fmt_size(size), phase);
        let first = masters.iter().find_map(|m| cells.get(m)).map(|c| c.0);
        for m in &masters {
            match cells.get(m) {
                Some(&(gb, k)) => {
                    let x = first
                        .filter(|f| *f > 0.0)
                        .map_or(String::new(), |f| format!(" {}", fmt_ratio(gb / f)));
                    let _ = write!(t, " {:>22}", format!("{gb:.3} ({}){x}", fmt_rate(k)));
                }
                None => {
                    let _ = write!(t, " {:>22}", "-");
                }
            }
        }
        t.push('\n');
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_get_their_own_cpus_round_robin() {
        let mut t = ServerTopology::default_for(Mode::Cluster, false);
        assert!(t.cpus_of(0).is_empty());
        t.cores = vec![4, 5, 6];
        assert_eq!(
            (0..5).map(|i| t.cpus_of(i)).collect::<Vec<_>>(),
            vec![vec![4], vec![5], vec![6], vec![4], vec![5]]
        );
        t.io_threads = Some(2);
        assert_eq!(t.cpus_of(0), vec![4, 5]);
        assert_eq!(t.cpus_of(1), vec![4, 6]);
        assert!(parse_cpus("").is_err());
        assert_eq!(parse_cpus("0-2,5").unwrap(), CpuList(vec![0, 1, 2, 5]));
    }

    #[test]
    fn scaling_table_has_a_column_per_cluster_size() {
        let mut recs = Vec::new();
        for (m, gb) in [(1, 1.0), (2, 1.8)] {
            let mut plan = Plan::example();
            plan.server.masters = Some(m);
            let s = Sample {
                mb_per_s: gb * 1e3,
                keys_per_s: 1000.0 * gb,
                ..Sample::default()
            };
            recs.push(Record::new(
                &plan,
                "slotline[epoll]",
                "get",
                Phase::Get,
                None,
                None,
                &s,
            ));
        }
        let t = scaling_table(&recs);
        assert!(
            t.contains("1 master(s)") && t.contains("2 master(s)"),
            "{t}"
        );
        assert!(t.contains("1.800 (1.8k) 1.80x"), "{t}");
        assert!(scaling_table(&recs[..1]).is_empty());
    }
}
