//! Measurement: timed phases on worker threads, samples, medians, runs of a plan.

use super::*;

/// Benchmark phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Writes.
    Put,
    /// Reads.
    Get,
}

impl Phase {
    pub(super) fn name(self) -> &'static str {
        match self {
            Phase::Put => "put",
            Phase::Get => "get",
        }
    }
}

/// CPU time (user + system) of the whole process so far.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage writes one rusage into the zeroed local we pass.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut ru) != 0 {
            return Duration::ZERO;
        }
        ru
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The CPUs the calling thread may run on (`Cpus_allowed_list` of /proc/self/status);
/// empty if unknown.
pub fn allowed_cpus() -> Vec<usize> {
    std::fs::read_to_string("/proc/thread-self/status")
        .or_else(|_| std::fs::read_to_string("/proc/self/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .and_then(|l| slotline::host::parse_cpu_list(l.trim()).ok())
        })
        .unwrap_or_default()
}

/// Restricts the calling thread, and every thread and process it starts from now on,
/// to `cpus` (`sched_setaffinity`).
pub fn pin_process(cpus: &[usize]) -> Result<(), String> {
    if let Some(c) = cpus.iter().find(|&&c| c >= libc::CPU_SETSIZE as usize) {
        return Err(format!("CPU {c} is beyond what the kernel interface takes"));
    }
    // SAFETY: cpu_set_t is a plain bit array (all zeroes: the empty set); CPU_SET
    // writes bit `c` < CPU_SETSIZE (checked above) of that local; sched_setaffinity
    // reads the set with its size; pid 0 is the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(())
}

/// CPU time (user + system) of the processes `pids` so far, every thread, from
/// `/proc/<pid>/stat` (in clock ticks of 10 ms: Linux's USER_HZ is 100 on every
/// architecture it reports to user space). None if one cannot be read.
pub fn pids_cpu(pids: &[u32]) -> Option<Duration> {
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces): state is field 3,
        // utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        ticks += f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    }
    Some(Duration::from_millis(ticks * 10))
}

/// The value at percentile `p` (0..=100) of sorted samples, nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The numbers of one phase of one run (or their medians).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Chunks per second.
    pub keys_per_s: f64,
    /// Payload megabytes (10^6) per second.
    pub mb_per_s: f64,
    /// Batch latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// The slowest batch.
    pub max_ms: f64,
    /// Process CPU time per chunk, microseconds.
    pub cpu_us_per_key: f64,
    /// Redis commands per batch, where known.
    pub commands_per_batch: Option<f64>,
    /// Frames (writes of one or more pipelined commands, round trips) per batch, where
    /// known.
    pub frames_per_batch: Option<f64>,
    /// Syscalls the client counted per batch (slotline's own counters), where known.
    pub syscalls_per_batch: Option<f64>,
    /// CPU time of the bench's own servers per chunk (every server process, from
    /// /proc), microseconds; None with `--url`.
    pub server_cpu_us_per_key: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Sample {
    /// `true` if the p99 is the slowest batch: too few batches to tell them apart.
    pub fn p99_is_max(&self) -> bool {
        self.max_ms.is_finite() && self.p99_ms >= self.max_ms
    }

    /// Ratios `self / other` computed run by run (`xs[i] / ys[i]`, runs paired by
    /// index), then the median of each field over runs: a slow run of one peer is
    /// compared with the same moment of the other, not with the other's median.
    pub fn ratios_within_runs(xs: &[Sample], ys: &[Sample]) -> Sample {
        let r = |a: f64, b: f64| if b != 0.0 { a / b } else { f64::NAN };
        let o = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(r(a, b)),
            _ => None,
        };
        let per_run: Vec<Sample> = xs
            .iter()
            .zip(ys)
            .map(|(x, y)| Sample {
                keys_per_s: r(x.keys_per_s, y.keys_per_s),
                mb_per_s: r(x.mb_per_s, y.mb_per_s),
                p50_ms: r(x.p50_ms, y.p50_ms),
                p95_ms: r(x.p95_ms, y.p95_ms),
                p99_ms: r(x.p99_ms, y.p99_ms),
                max_ms: r(x.max_ms, y.max_ms),
                cpu_us_per_key: r(x.cpu_us_per_key, y.cpu_us_per_key),
                commands_per_batch: o(x.commands_per_batch, y.commands_per_batch),
                frames_per_batch: o(x.frames_per_batch, y.frames_per_batch),
                syscalls_per_batch: o(x.syscalls_per_batch, y.syscalls_per_batch),
                server_cpu_us_per_key: o(x.server_cpu_us_per_key, y.server_cpu_us_per_key),
            })
            .collect();
        Sample::median_of(&per_run)
    }

    /// Field-by-field medians.
    pub fn median_of(samples: &[Sample]) -> Sample {
        let m = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        let frames: Vec<f64> = samples.iter().filter_map(|s| s.frames_per_batch).collect();
        let cmds: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.commands_per_batch)
            .collect();
        let sys: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.syscalls_per_batch)
            .collect();
        let srv: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.server_cpu_us_per_key)
            .collect();
        Sample {
            keys_per_s: m(|s| s.keys_per_s),
            mb_per_s: m(|s| s.mb_per_s),
            p50_ms: m(|s| s.p50_ms),
            p95_ms: m(|s| s.p95_ms),
            p99_ms: m(|s| s.p99_ms),
            max_ms: m(|s| s.max_ms),
            cpu_us_per_key: m(|s| s.cpu_us_per_key),
            commands_per_batch: (!cmds.is_empty()).then(|| median(cmds)),
            frames_per_batch: (!frames.is_empty()).then(|| median(frames)),
            syscalls_per_batch: (!sys.is_empty()).then(|| median(sys)),
            server_cpu_us_per_key: (!srv.is_empty()).then(|| median(srv)),
        }
    }
}

struct ThreadOutcome {
    lat: Vec<Duration>,
    misses: u64,
    mismatches: u64,
    first: Option<String>,
    err: Option<String>,
}

fn drive(
    w: &mut dyn Worker,
    wl: &Workload<'_>,
    phase: Phase,
    batches: impl Iterator<Item = usize>,
) -> ThreadOutcome {
    let mut out = ThreadOutcome {
        lat: Vec::new(),
        misses: 0,
        mismatches: 0,
        first: None,
        err: None,
    };
    let mut v = Verifier::new(wl);
    for b in batches {
        if INTERRUPTED.load(Ordering::Relaxed) {
            out.err = Some("interrupted".into());
            break;
        }
        let t = Instant::now();
        let r = match phase {
            Phase::Put => w.put(wl, b),
            Phase::Get => {
                v.batch = b;
                w.get(wl, b, &mut v)
            }
        };
        out.lat.push(t.elapsed());
        progress::tick();
        if let Err(e) = r {
            out.err = Some(format!("batch {b}: {e}"));
            break;
        }
    }
    out.misses = v.misses;
    out.mismatches = v.mismatches;
    out.first = v.first;
    out
}

/// Runs one phase over every batch with one thread per worker (inline for one worker).
pub fn run_phase(
    peer: &dyn Peer,
    workers: &mut [Box<dyn Worker>],
    wl: &Workload<'_>,
    phase: Phase,
    servers: &[u32],
) -> Result<Sample, BenchError> {
    let n = workers.len().max(1);
    let rt = |ws: &[Box<dyn Worker>]| -> Option<u64> {
        ws.iter().map(|w| w.round_trips()).sum::<Option<u64>>()
    };
    let cm = |ws: &[Box<dyn Worker>]| -> Option<u64> {
        ws.iter().map(|w| w.commands()).sum::<Option<u64>>()
    };
    let cmds0 = peer.commands().or_else(|| cm(workers));
    let frames0 = peer.frames().or_else(|| rt(workers));
    let sys0 = peer.syscalls();
    let srv0 = (!servers.is_empty()).then(|| pids_cpu(servers)).flatten();
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    let outcomes: Vec<ThreadOutcome> = if workers.len() == 1 {
        vec![drive(workers[0].as_mut(), wl, phase, 0..wl.batches)]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = workers
                .iter_mut()
                .enumerate()
                .map(|(t, w)| {
                    s.spawn(move || drive(w.as_mut(), wl, phase, (t..wl.batches).step_by(n)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| ThreadOutcome {
                        lat: Vec::new(),
                        misses: 0,
                        mismatches: 0,
                        first: None,
                        err: Some("a caller thread panicked".into()),
                    })
                })
                .collect()
        })
    };
    let wall = t0.elapsed();
    let cpu = process_cpu().saturating_sub(cpu0);
    let srv = srv0.and_then(|a| Some(pids_cpu(servers)?.saturating_sub(a)));
    let frames1 = peer.frames().or_else(|| rt(workers));
    let cmds1 = peer.commands().or_else(|| cm(workers));
    let sys1 = peer.syscalls();
    let name = peer.name();
    let mut lat = Vec::with_capacity(wl.batches);
    let (mut misses, mut mismatches, mut first) = (0, 0, None);
    for o in outcomes {
        if let Some(e) = o.err {
            return Err(BenchError::failed(format!("{name} {}: {e}", phase.name())));
        }
        lat.extend(o.lat);
        misses += o.misses;
        mismatches += o.mismatches;
        first = first.or(o.first);
    }
    if misses + mismatches > 0 {
        return Err(BenchError::failed(format!(
            "{name} read back {misses} misses and {mismatches} mismatches out of {} chunks; \
             first: {}",
            wl.keys.len(),
            first.unwrap_or_default()
        )));
    }
    lat.sort_unstable();
    let keys = wl.keys.len() as f64;
    let secs = wall.as_secs_f64().max(1e-9);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(Sample {
        keys_per_s: keys / secs,
        mb_per_s: keys * wl.data.value_size as f64 / secs / 1e6,
        p50_ms: ms(percentile(&lat, 50.0)),
        p95_ms: ms(percentile(&lat, 95.0)),
        p99_ms: ms(percentile(&lat, 99.0)),
        max_ms: ms(percentile(&lat, 100.0)),
        cpu_us_per_key: cpu.as_secs_f64() * 1e6 / keys,
        commands_per_batch: match (cmds0, cmds1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / wl.batches as f64),
            _ => None,
        },
        frames_per_batch: match (frames0, frames1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / wl.batches as f64),
            _ => None,
        },
        syscalls_per_batch: match (sys0, sys1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / wl.batches as f64),
            _ => None,
        },
        server_cpu_us_per_key: srv.map(|d| d.as_secs_f64() * 1e6 / keys),
    })
}

/// What a bench measures, independent of how peers and servers were chosen.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Payload bytes per chunk.
    pub value_size: usize,
    /// Chunks per batch.
    pub batch: usize,
    /// Batches per phase.
    pub batches: usize,
    /// Runs (medians are over these).
    pub runs: usize,
    /// Batches in flight.
    pub concurrency: usize,
    /// Key layout.
    pub layout: KeyLayout,
    /// Which PUTs are timed.
    pub keys: Keys,
    /// Topology, for the report.
    pub mode: Mode,
    /// How results are printed.
    pub format: Format,
    /// The servers measured, where the bench started them.
    pub server: ServerInfo,
}

/// What the bench knows of the servers it measures.
#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    /// Masters (1 for a standalone server); None if unknown.
    pub masters: Option<usize>,
    /// Replicas per master of the bench's own cluster.
    pub replicas: Option<usize>,
    /// `--io-threads` of the bench's own servers.
    pub io_threads: Option<usize>,
    /// Process ids of the bench's own servers (their CPU time is measured).
    pub pids: Vec<u32>,
}

impl Plan {
    /// A plan with the default sizes (for tests and the CSV header).
    pub fn example() -> Plan {
        Plan {
            value_size: 2048,
            batch: 128,
            batches: 200,
            runs: 3,
            concurrency: 1,
            layout: KeyLayout::Lmcache,
            keys: Keys::Both,
            mode: Mode::Standalone,
            format: Format::Table,
            server: ServerInfo::default(),
        }
    }
}

/// Per peer: name and the samples of each run.
pub struct PeerResult {
    /// Row label.
    pub name: String,
    /// How the peer reads (`get`, `get-into`).
    pub read: &'static str,
    /// PUT phase on fresh keys, one per run (empty unless measured).
    pub put_fresh: Vec<Sample>,
    /// PUT phase overwriting keys, one per run (empty unless measured).
    pub put_overwrite: Vec<Sample>,
    /// GET phase, one per run.
    pub get: Vec<Sample>,
}

impl PeerResult {
    /// The PUT samples of one key pattern.
    pub fn put(&self, p: KeyPattern) -> &[Sample] {
        match p {
            KeyPattern::Fresh => &self.put_fresh,
            KeyPattern::Overwrite => &self.put_overwrite,
        }
    }

    fn put_mut(&mut self, p: KeyPattern) -> &mut Vec<Sample> {
        match p {
            KeyPattern::Fresh => &mut self.put_fresh,
            KeyPattern::Overwrite => &mut self.put_overwrite,
        }
    }
}

/// Removes one run's keys from the server (or empties it) between clients.
pub type Cleanup<'a> = dyn FnMut(&[Vec<u8>]) -> Result<(), BenchError> + 'a;

/// Runs every peer `plan.runs` times, interleaved, run `i` starting at peer `i mod n`
/// (so that no peer always runs first, on the coldest server, or last); `cleanup` gets
/// each run's keys after the run (untimed) and must leave the server empty of them.
/// Every run's records go to `out` as they are measured.
pub fn run_plan(
    plan: &Plan,
    peers: &mut [Box<dyn Peer>],
    cleanup: &mut Cleanup<'_>,
    out: &mut Output,
) -> Result<Vec<PeerResult>, BenchError> {
    let data = Data::new(plan.value_size, plan.batch * plan.batches)?;
    let mut results: Vec<Option<PeerResult>> = peers
        .iter()
        .map(|p| {
            Some(PeerResult {
                name: p.name(),
                read: p.read(),
                put_fresh: Vec::new(),
                put_overwrite: Vec::new(),
                get: Vec::new(),
            })
        })
        .collect();
    let n = peers.len();
    for run in 0..plan.runs {
        for k in 0..n {
            let pi = (run + k) % n;
            let peer = &mut peers[pi];
            if results[pi].is_none() {
                continue;
            }
            check_interrupted()?;
            let wl = Workload::new(
                &data,
                &peer.tag(),
                run,
                plan.batch,
                plan.batches,
                plan.layout,
            );
            let mut workers = match peer.open(plan.concurrency, &wl) {
                Ok(w) => w,
                Err(e) if peer.optional() && run == 0 => {
                    progress::clear();
                    eprintln!("warning: {} unavailable, skipped: {e}", peer.name());
                    progress::remove_total(
                        plan.runs * (plan.keys.put_passes().len() + 1) * plan.batches,
                    );
                    results[pi] = None;
                    continue;
                }
                Err(e) => return Err(BenchError::failed(format!("{}: {e}", peer.name()))),
            };
            let label = |what: &str| {
                format!(
                    "{} run {}/{} {} {what}",
                    super::fmt_size(plan.value_size),
                    run + 1,
                    plan.runs,
                    peer.name()
                )
            };
            let measured = (|| {
                let mut puts = Vec::new();
                for pass in plan.keys.put_passes() {
                    progress::phase(
                        label(&match pass {
                            Some(p) => format!("put[{}]", p.name()),
                            None => "put[untimed]".into(),
                        }),
                        plan.batches,
                    );
                    // An untimed pass (pre-population) is measured all the same and
                    // its numbers dropped.
                    let s = run_phase(
                        peer.as_ref(),
                        &mut workers,
                        &wl,
                        Phase::Put,
                        &plan.server.pids,
                    )?;
                    if let Some(p) = pass {
                        puts.push((*p, s));
                    }
                }
                progress::phase(label("get"), plan.batches);
                let get = run_phase(
                    peer.as_ref(),
                    &mut workers,
                    &wl,
                    Phase::Get,
                    &plan.server.pids,
                )?;
                Ok::<_, BenchError>((puts, get))
            })();
            drop(workers);
            peer.close();
            let cleaned = cleanup(&wl.keys);
            let (puts, get) = measured?;
            cleaned?;
            let name = peer.name();
            let mut line = format!("run {}/{} {name:<20}", run + 1, plan.runs);
            for (p, s) in &puts {
                let _ = write!(
                    line,
                    " put[{}] {:>9} keys/s {:>9.1} MB/s |",
                    p.name(),
                    fmt_rate(s.keys_per_s),
                    s.mb_per_s
                );
            }
            let _ = write!(
                line,
                " get {:>9} keys/s {:>9.1} MB/s",
                fmt_rate(get.keys_per_s),
                get.mb_per_s
            );
            progress::clear();
            eprintln!("{line}");
            for (p, s) in &puts {
                out.push(Record::new(
                    plan,
                    &name,
                    peer.read(),
                    Phase::Put,
                    Some(*p),
                    Some(run + 1),
                    s,
                ));
            }
            out.push(Record::new(
                plan,
                &name,
                peer.read(),
                Phase::Get,
                None,
                Some(run + 1),
                &get,
            ));
            if let Some(r) = results[pi].as_mut() {
                r.name = name;
                for (p, s) in puts {
                    r.put_mut(p).push(s);
                }
                r.get.push(get);
            }
        }
    }
    Ok(results.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_taken_within_runs_then_the_median() {
        let s = |keys_per_s: f64, frames: Option<f64>| Sample {
            keys_per_s,
            frames_per_batch: frames,
            ..Sample::default()
        };
        // Run 1: x is twice y; runs 2 and 3: equal, at another level of load.
        let xs = [s(2.0, Some(1.0)), s(10.0, Some(1.0)), s(30.0, None)];
        let ys = [s(1.0, Some(4.0)), s(10.0, Some(2.0)), s(30.0, Some(2.0))];
        let r = Sample::ratios_within_runs(&xs, &ys);
        assert_eq!(r.keys_per_s, 1.0); // the median of [2, 1, 1]
        let xs = [s(2.0, None), s(10.0, None)];
        let ys = [s(1.0, None), s(20.0, None)];
        // [2, 0.5] -> 1.25, where the ratio of the medians is 6 / 10.5.
        assert_eq!(Sample::ratios_within_runs(&xs, &ys).keys_per_s, 1.25);
        // Only runs where both peers have the column count.
        let xs = [s(1.0, Some(1.0)), s(1.0, Some(1.0)), s(1.0, None)];
        let ys = [s(1.0, Some(4.0)), s(1.0, Some(2.0)), s(1.0, Some(2.0))];
        assert_eq!(
            Sample::ratios_within_runs(&xs, &ys).frames_per_batch,
            Some(0.375)
        );
        assert!(Sample::ratios_within_runs(&[s(1.0, None)], &[s(0.0, None)])
            .keys_per_s
            .is_nan());
    }

    #[test]
    fn p99_is_max_only_when_they_meet() {
        let s = Sample {
            p99_ms: 3.0,
            max_ms: 3.0,
            ..Sample::default()
        };
        assert!(s.p99_is_max());
        assert!(!Sample { max_ms: 4.0, ..s }.p99_is_max());
        assert!(!Sample {
            max_ms: f64::NAN,
            ..s
        }
        .p99_is_max());
    }

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
