//! The clients measured: the [`Peer`] and [`Worker`] traits, the naive baseline and
//! slotline.

use super::*;
use slotline::PutRef;
use std::sync::Arc;

/// One caller thread's handle on a client: one batch at a time.
pub trait Worker: Send {
    /// Writes batch `b` and returns once the server acknowledged it.
    fn put(&mut self, wl: &Workload<'_>, b: usize) -> Result<(), String>;
    /// Reads batch `b`, reporting every chunk to `v` (see [`Verifier::check`]).
    fn get(&mut self, wl: &Workload<'_>, b: usize, v: &mut Verifier<'_, '_>) -> Result<(), String>;
    /// Frames (round trips, writes of pipelined commands) sent so far, for clients that
    /// count them per worker.
    fn round_trips(&self) -> Option<u64> {
        None
    }
    /// Redis commands sent so far, for clients that count them per worker; by default
    /// one per frame.
    fn commands(&self) -> Option<u64> {
        self.round_trips()
    }
}

/// A client under test.
pub trait Peer {
    /// Row label.
    fn name(&self) -> String;
    /// Short tag for key prefixes (no spaces or braces).
    fn tag(&self) -> String;
    /// Opens `n` workers for one run of `wl` (connections, engine).
    fn open(&mut self, n: usize, wl: &Workload<'_>) -> Result<Vec<Box<dyn Worker>>, String>;
    /// Ends the run: everything opened is dropped.
    fn close(&mut self) {}
    /// Frames sent so far by a client-wide counter (slotline's frames).
    fn frames(&self) -> Option<u64> {
        None
    }
    /// Redis commands sent so far by a client-wide counter, where known.
    fn commands(&self) -> Option<u64> {
        None
    }
    /// Syscalls made so far by a client-wide counter (slotline's), where known.
    fn syscalls(&self) -> Option<u64> {
        None
    }
    /// Skipped with a warning (instead of failing the bench) if it cannot open.
    fn optional(&self) -> bool {
        false
    }
    /// A line about how it ran (shards, backend), printed under the header.
    fn note(&self) -> Option<String> {
        None
    }
    /// How it reads: `get` (memory the client allocates per value) or `get-into`
    /// (buffers allocated once per run), the `read` of its records.
    fn read(&self) -> &'static str {
        "get"
    }
}

/// The naive baseline as a [`Peer`].
pub struct NaivePeer {
    url: String,
    mode: Mode,
    layout: KeyLayout,
}

impl NaivePeer {
    /// A naive client of `url`.
    pub fn new(url: &str, mode: Mode, layout: KeyLayout) -> NaivePeer {
        NaivePeer {
            url: url.to_string(),
            mode,
            layout,
        }
    }
}

struct NaiveWorker {
    c: NaiveClient,
}

impl Worker for NaiveWorker {
    fn put(&mut self, wl: &Workload<'_>, b: usize) -> Result<(), String> {
        for (i, k) in wl.batch_keys(b).iter().enumerate() {
            self.c
                .put_chunk(k, &wl.data.meta_bytes, wl.value(b, i), None)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn get(&mut self, wl: &Workload<'_>, b: usize, v: &mut Verifier<'_, '_>) -> Result<(), String> {
        for (i, k) in wl.batch_keys(b).iter().enumerate() {
            let got = self.c.get_chunk(k).map_err(|e| e.to_string())?;
            match got {
                Some(c) => v.check(i, Some(&c.data[..]), c.meta.as_ref()),
                None => v.check(i, None, None),
            }
        }
        Ok(())
    }

    fn round_trips(&self) -> Option<u64> {
        Some(self.c.round_trips())
    }
}

impl Peer for NaivePeer {
    fn name(&self) -> String {
        "naive".into()
    }

    fn tag(&self) -> String {
        "naive".into()
    }

    fn open(&mut self, n: usize, _wl: &Workload<'_>) -> Result<Vec<Box<dyn Worker>>, String> {
        (0..n)
            .map(|_| {
                NaiveClient::connect(&self.url, self.mode, self.layout)
                    .map(|c| Box::new(NaiveWorker { c }) as Box<dyn Worker>)
                    .map_err(|e| e.to_string())
            })
            .collect()
    }
}

/// slotline on one I/O backend as a [`Peer`]; a fresh engine per run.
pub struct SlotlinePeer {
    cfg: Config,
    /// Counts the data commands the server executed (INFO commandstats), since the
    /// engine counts frames, not commands.
    counter: Option<(String, Mode)>,
    counter_conn: std::cell::RefCell<Option<NaiveClient>>,
    get_into: bool,
    optional: bool,
    actual: Option<slotline::BackendKind>,
    shards: usize,
    engine: Option<Engine>,
    /// Put from and read into registered regions.
    regions: bool,
    /// Appended to the row label (`+into` when both read modes have rows).
    suffix: &'static str,
}

/// The value pool copied into a registered region, and where each value starts in it.
struct PoolRegion {
    region: slotline::OwnedRegion<Vec<u8>>,
    at: std::collections::HashMap<usize, usize>,
}

impl SlotlinePeer {
    /// An engine per run built from `cfg`; `get_into` reads into reused buffers.
    pub fn new(cfg: Config, get_into: bool, optional: bool) -> SlotlinePeer {
        SlotlinePeer {
            cfg,
            counter: None,
            counter_conn: std::cell::RefCell::new(None),
            get_into,
            optional,
            actual: None,
            shards: 0,
            engine: None,
            regions: false,
            suffix: "",
        }
    }

    /// Appends `s` to the row label and key tag (`+into`: two rows of one backend).
    pub fn with_suffix(mut self, s: &'static str) -> SlotlinePeer {
        self.suffix = s;
        self
    }

    /// Puts send from a registered copy of the value pool, and `get_into` reads into
    /// registered buffers.
    pub fn with_regions(mut self, on: bool) -> SlotlinePeer {
        self.regions = on;
        self
    }
}

impl SlotlinePeer {
    /// Reports commands per batch as counted by the server at `url` (its data commands
    /// in INFO commandstats, every master in a cluster): nothing else may write to it
    /// during the bench.
    pub fn count_commands_at(mut self, url: &str, mode: Mode) -> SlotlinePeer {
        self.counter = Some((url.to_string(), mode));
        self
    }
}

struct SlotlineWorker {
    e: Engine,
    into: Option<Vec<Vec<u8>>>,
    pool: Option<Arc<PoolRegion>>,
    into_region: Option<slotline::OwnedRegion<Vec<u8>>>,
}

impl Worker for SlotlineWorker {
    fn put(&mut self, wl: &Workload<'_>, b: usize) -> Result<(), String> {
        if let Some(p) = &self.pool {
            let size = wl.data.value_size;
            let src = p.region.as_slice();
            let keys = wl.batch_keys(b);
            let chunks: Vec<PutRef<'_>> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let at = p.at[&(wl.value(b, i).as_ptr() as usize)];
                    PutRef {
                        key: k,
                        data: &src[at..at + size],
                        meta: Some(&wl.data.meta),
                    }
                })
                .collect();
            return self.e.put(&chunks).wait().map_err(|e| e.to_string());
        }
        let chunks = wl
            .batch_keys(b)
            .iter()
            .enumerate()
            .map(|(i, k)| {
                PutChunk::new(
                    k.clone(),
                    wl.value(b, i).clone(),
                    Some(wl.data.meta.clone()),
                )
            })
            .collect::<Vec<_>>();
        self.e.put(chunks).wait().map_err(|e| e.to_string())
    }

    fn get(&mut self, wl: &Workload<'_>, b: usize, v: &mut Verifier<'_, '_>) -> Result<(), String> {
        let keys = wl.batch_keys(b);
        if let Some(r) = self.into_region.as_mut() {
            let size = wl.data.value_size;
            let mut slices: Vec<&mut [u8]> = r.as_mut_slice().chunks_mut(size).collect();
            let infos = self
                .e
                .get(keys)
                .into_slices(&mut slices)
                .wait()
                .map_err(|e| e.to_string())?;
            for (i, (buf, info)) in r.as_slice().chunks(size).zip(&infos).enumerate() {
                match info {
                    Some(info) => v.check(i, buf.get(..info.len), info.meta.as_ref()),
                    None => v.check(i, None, None),
                }
            }
            return Ok(());
        }
        if let Some(bufs) = self.into.as_mut() {
            // Caller memory: the values land in buffers allocated once per run.
            let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
            let infos = self
                .e
                .get(keys)
                .into_slices(&mut slices)
                .wait()
                .map_err(|e| e.to_string())?;
            for (i, (buf, info)) in bufs.iter().zip(&infos).enumerate() {
                match info {
                    Some(info) => v.check(i, buf.get(..info.len), info.meta.as_ref()),
                    None => v.check(i, None, None),
                }
            }
            return Ok(());
        }
        let got = self.e.get(keys).wait().map_err(|e| e.to_string())?;
        for (i, c) in got.iter().enumerate() {
            match c {
                Some(c) => v.check(i, Some(&c.data[..]), c.meta.as_ref()),
                None => v.check(i, None, None),
            }
        }
        Ok(())
    }
}

impl Peer for SlotlinePeer {
    fn name(&self) -> String {
        let tls = if self.cfg.tls { "+tls" } else { "" };
        let s = self.suffix;
        match self.actual {
            Some(b) => format!("slotline[{b}{tls}]{s}"),
            None => format!("slotline[{}{tls}]{s}", self.cfg.io_backend),
        }
    }

    fn tag(&self) -> String {
        let tls = if self.cfg.tls { "-tls" } else { "" };
        let s = self.suffix.trim_start_matches('+');
        let s = if s.is_empty() {
            String::new()
        } else {
            format!("-{s}")
        };
        format!("slotline-{}{tls}{s}", self.cfg.io_backend)
    }

    fn read(&self) -> &'static str {
        if self.get_into {
            "get-into"
        } else {
            "get"
        }
    }

    fn open(&mut self, n: usize, wl: &Workload<'_>) -> Result<Vec<Box<dyn Worker>>, String> {
        let e = Engine::new(self.cfg.clone()).map_err(|e| e.to_string())?;
        if let Some((url, mode)) = &self.counter {
            let c = NaiveClient::connect(url, *mode, KeyLayout::Raw).map_err(|e| e.to_string())?;
            *self.counter_conn.borrow_mut() = Some(c);
        }
        self.actual = Some(e.backend());
        self.shards = e.stats().shards;
        let into = self.get_into;
        let size = wl.data.value_size;
        let pool = if self.regions {
            let values = wl.data.pool();
            let mut buf = Vec::with_capacity(values.len() * size);
            let mut at = std::collections::HashMap::new();
            for v in values {
                at.insert(v.as_ptr() as usize, buf.len());
                buf.extend_from_slice(v);
            }
            let region = e.register_region(buf).map_err(|e| e.to_string())?;
            Some(Arc::new(PoolRegion { region, at }))
        } else {
            None
        };
        let mut workers: Vec<Box<dyn Worker>> = Vec::with_capacity(n);
        for _ in 0..n {
            let into_region = if self.regions && into {
                Some(
                    e.register_region(vec![0u8; size * wl.batch])
                        .map_err(|e| e.to_string())?,
                )
            } else {
                None
            };
            workers.push(Box::new(SlotlineWorker {
                e: e.clone(),
                into: (into && into_region.is_none()).then(|| vec![vec![0u8; size]; wl.batch]),
                pool: pool.clone(),
                into_region,
            }));
        }
        self.engine = Some(e);
        Ok(workers)
    }

    fn close(&mut self) {
        self.counter_conn.borrow_mut().take();
        if let Some(e) = self.engine.take() {
            let stats = e.stats();
            tracing::debug!(
                "engine stats after the run:\n{stats}\nsyscalls: {:?} (total {})",
                stats.metrics.syscalls,
                stats.metrics.syscalls.total()
            );
            drop(e);
        }
    }

    fn frames(&self) -> Option<u64> {
        self.engine.as_ref().map(|e| e.stats().metrics.frames_sent)
    }

    fn commands(&self) -> Option<u64> {
        let mut c = self.counter_conn.borrow_mut();
        let n = c.as_mut()?.data_commands();
        if let Err(e) = &n {
            tracing::warn!("counting commands with INFO commandstats: {e}");
        }
        n.ok()
    }

    fn syscalls(&self) -> Option<u64> {
        self.engine
            .as_ref()
            .map(|e| e.stats().metrics.syscalls.total())
    }

    fn optional(&self) -> bool {
        self.optional
    }

    fn note(&self) -> Option<String> {
        self.actual.map(|_| {
            format!(
                "{}: {} shard thread(s), reads with {}{}",
                self.name(),
                self.shards,
                if self.get_into {
                    "get_into_slices (caller buffers)"
                } else {
                    "get"
                },
                if self.counter.is_some() {
                    "; commands counted by the server (INFO commandstats)"
                } else {
                    ""
                }
            )
        })
    }
}
