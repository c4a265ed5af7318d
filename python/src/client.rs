//! `slotline._native.Client`: one engine, one eventfd, completions polled by the
//! threads that finish them (`completion.rs`), and
//! non-blocking `submit_*` calls returning future ids.
//!
//! Python's LMCache plug-ins (`slotline.native_plugin`, `slotline.lmcache`) wrap this
//! class; the method set and semantics follow LMCache 0.5.6's native-plugin contract
//! (`submit_batch_*`, `drain_completions`, `event_fd`, `close`), plus the extra calls
//! the single-process connector needs (prefix counts, fetches with metadata).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use slotline::{Chunk, Config, Engine, RemoteMetadata};

use crate::completion::Completions;
use crate::hooks::Pause;
use crate::io::{self, Held, Job, Outcome, Payload};
use crate::lent::{self, Lease};
use crate::views::View;

/// Beyond the request timeout, how long `close` waits for running requests.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long `close` waits for the engine's shards to stop (they drain for up to 2 s).
const ENGINE_STOP: Duration = Duration::from_secs(5);

/// A slotline engine with completion delivery through an eventfd.
///
/// `Client(config)` takes configuration *text*, LMCache's YAML (JSON is YAML too), not
/// a path or a dict: `Client(open("lmcache.yaml").read())`, or
/// `Client(slotline.config_text({"url": "redis://127.0.0.1:6379"}, "raw"))`. It
/// connects and checks the server before returning.
///
/// Every `submit_*` method returns a request id at once; the request runs on the
/// engine's threads. When `event_fd()` is readable (`select` / `poll`, or asyncio's
/// `loop.add_reader`), `drain_completions()` returns `(id, ok, error_text, result)`
/// tuples for the finished requests. Buffers handed to a request belong to it until its
/// completion has been drained. `exists_now` / `contains_prefix_now` block instead.
///
/// ```python
/// import select, slotline
/// c = slotline.Client('remote_url: "redis://127.0.0.1:6379"\nextra_config: {key_layout: raw}')
///
/// def wait(c, rid):  # one request in flight at a time, as in this example
///     while True:
///         for i, ok, err, result in c.drain_completions():
///             if i == rid:
///                 return ok, err, result
///         select.select([c.event_fd()], [], [], 5.0)
///
/// assert wait(c, c.submit_batch_set(["k"], [b"value"]))[0]
/// buf = bytearray(5)
/// ok, err, loaded = wait(c, c.submit_batch_get(["k"], [buf]))
/// assert ok and loaded == [True] and buf == b"value"
/// c.close()
/// ```
#[pyclass(module = "slotline._native", frozen)]
pub struct Client {
    engine: Mutex<Option<Engine>>,
    done: Completions,
    next_id: AtomicU64,
    layout: String,
    /// How long `close` waits for running requests: the request timeout plus 2 s.
    bound: Duration,
    /// The close-during-submit test hook.
    pause: Pause,
}

/// Keys as bytes: `str` (UTF-8) or any bytes-like object.
fn key_bytes(keys: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for k in keys.try_iter()? {
        let k = k?;
        if let Ok(s) = k.cast::<PyString>() {
            out.push(s.to_str()?.as_bytes().to_vec());
        } else if let Ok(b) = k.cast::<PyBytes>() {
            out.push(b.as_bytes().to_vec());
        } else {
            return Err(PyTypeError::new_err(format!(
                "a key must be str or bytes, not {}",
                k.get_type().name()?
            )));
        }
    }
    Ok(out)
}

/// Acquires every buffer; the first unusable one fails the whole request.
fn acquire_all(bufs: &Bound<'_, PyAny>, writable: bool) -> Result<Vec<View>, String> {
    let mut out = Vec::new();
    let iter = bufs.try_iter().map_err(|e| e.to_string())?;
    for (i, b) in iter.enumerate() {
        let b = b.map_err(|e| e.to_string())?;
        out.push(View::acquire(&b, writable).map_err(|e| format!("buffer {i}: {e}"))?);
    }
    Ok(out)
}

/// Lends the views' memory (see `lent.rs`): overlapping writable memory is a
/// `ValueError`, raised before anything reaches the engine.
fn lend_views(views: &[View], writable: bool) -> PyResult<Lease> {
    let ranges: Vec<(usize, usize)> = views.iter().map(|v| (v.addr(), v.len())).collect();
    lent::lend(&ranges, writable).map_err(PyValueError::new_err)
}

/// The job, holding `lease` until it finishes: its buffers are then all home.
fn leased(job: Job, lease: Lease) -> Job {
    Box::pin(async move {
        let _lease = lease;
        job.await
    })
}

impl Client {
    fn engine(&self) -> Option<Engine> {
        self.engine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts the request, then builds the job with the engine (outside the GIL) and
    /// hands it over. Counted first: from the moment a request can reach the engine,
    /// `close` waits for it, and its completion is published only once the engine has
    /// handed every buffer back. A closed client answers with a failed completion, as
    /// a full lane does.
    fn submit_with(&self, py: Python<'_>, make: impl FnOnce(&Engine) -> Job + Send) -> u64 {
        let id = self.new_id();
        let engine = match self.engine() {
            Some(e) if self.done.register() => e,
            unused => {
                // Closing: this may be the last engine handle, whose drop stops the
                // shards; never with the GIL held.
                py.detach(move || drop(unused));
                // Nothing reached the engine: the caller's buffers go here, GIL held.
                drop(make);
                self.done
                    .finish_now(id, Outcome::failed("plug-in is closed", Held::None));
                return id;
            }
        };
        py.detach(move || {
            let job = make(&engine);
            self.pause.point();
            // The engine handle goes before the job starts: a job that finishes at
            // once must not leave the last handle to this thread's caller.
            drop(engine);
            self.done.start(id, job);
        });
        id
    }

    /// Stops accepting requests, waits for running ones (at most the request timeout
    /// plus 2 s), then stops the engine (at most 5 s more, on a thread of its own so
    /// that a stuck shard cannot hold the caller). Returns how many requests were
    /// still running (their buffers are leaked, never released) and whether the
    /// engine had not stopped in time (it is left to stop by itself).
    fn shutdown(&self) -> (usize, bool) {
        let running = self.done.close(self.bound);
        let engine = self.engine.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(engine) = engine else {
            return (running, false);
        };
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let stopper = std::thread::Builder::new()
            .name("slotline-close".into())
            .spawn(move || {
                drop(engine);
                drop(tx);
            });
        let stuck = match stopper {
            // The sender goes when the engine has stopped: disconnected, not timed out.
            Ok(_) => matches!(
                rx.recv_timeout(ENGINE_STOP),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            ),
            // No thread: the engine was dropped here, inside `spawn`.
            Err(_) => false,
        };
        if stuck {
            tracing::error!("closing the plug-in: the engine's shards did not stop in time");
        }
        (running, stuck)
    }
}

#[pymethods]
impl Client {
    /// Starts an engine from a configuration text in LMCache's YAML form (JSON is
    /// accepted: it is YAML). Connects and checks the server before returning.
    #[new]
    fn new(py: Python<'_>, config: &str) -> PyResult<Client> {
        let (cfg, warnings) = Config::from_yaml_str_with_warnings(config)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        // The engine logs these through `tracing`, which Python does not see: a
        // misspelt key must reach the person who wrote it, as a Python warning.
        for w in &warnings {
            PyErr::warn(
                py,
                &py.get_type::<pyo3::exceptions::PyUserWarning>(),
                &std::ffi::CString::new(format!("slotline: {w}")).unwrap_or_default(),
                1,
            )?;
        }
        let layout = cfg.key_layout.to_string();
        let bound = cfg.request_timeout.saturating_add(CLOSE_GRACE);
        let engine = py
            .detach(|| Engine::new(cfg))
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        let done =
            Completions::new().map_err(|e| PyRuntimeError::new_err(format!("eventfd: {e}")))?;
        Ok(Client {
            engine: Mutex::new(Some(engine)),
            done,
            next_id: AtomicU64::new(1),
            layout,
            bound,
            pause: Pause::default(),
        })
    }

    /// The eventfd that becomes readable when completions are waiting.
    ///
    /// The descriptor belongs to this client: poll it, never read, write or close it.
    /// It stays open (the same number on every call) until the client is garbage
    /// collected, `close()` included, so that the last completions can be awaited. It
    /// is a duplicate of the engine's own descriptor, which is the only one the engine
    /// writes: if the caller closes the number anyway and it is reused for another
    /// file, the engine never writes to it, and does not close it when collected.
    fn event_fd(&self) -> i32 {
        self.done.event_fd()
    }

    /// The key layout in force (`raw`, `lmcache`, `hashtag`).
    #[getter]
    fn layout(&self) -> &str {
        &self.layout
    }

    /// Reads each key's value into its writable buffer (class GET). Per-key flag
    /// "loaded"; a value whose length differs from its buffer is not loaded.
    fn submit_batch_get(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        memoryviews: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let keys = key_bytes(keys)?;
        match acquire_all(memoryviews, true) {
            Ok(views) => {
                let lease = lend_views(&views, true)?;
                Ok(self.submit_with(py, move |e| {
                    leased(io::get_into_views(e, &keys, views), lease)
                }))
            }
            Err(msg) => Ok(self.fail_now(msg)),
        }
    }

    /// Stores each buffer under its key (class PUT), `raw` layout or BINARY metadata.
    fn submit_batch_set(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        memoryviews: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let keys = key_bytes(keys)?;
        let metas = vec![None; keys.len()];
        self.put_views(py, keys, memoryviews, metas)
    }

    /// Like `submit_batch_set`, with LMCache `RemoteMetadata` bytes per key (`None`:
    /// BINARY metadata of the buffer's length).
    fn submit_put(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        memoryviews: &Bound<'_, PyAny>,
        metas: Vec<Option<Vec<u8>>>,
    ) -> PyResult<u64> {
        let keys = key_bytes(keys)?;
        let metas: Result<Vec<Option<RemoteMetadata>>, _> = metas
            .iter()
            .map(|m| m.as_deref().map(RemoteMetadata::decode).transpose())
            .collect();
        let metas = metas.map_err(|e| PyValueError::new_err(e.to_string()))?;
        self.put_views(py, keys, memoryviews, metas)
    }

    /// Per key "found" (class PEEK).
    fn submit_batch_exists(&self, py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<u64> {
        let keys = key_bytes(keys)?;
        Ok(self.submit_with(py, move |e| io::exists(e, keys)))
    }

    /// Per key "deleted" (class PUT).
    fn submit_batch_delete(&self, py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<u64> {
        let keys = key_bytes(keys)?;
        Ok(self.submit_with(py, move |e| io::delete(e, keys)))
    }

    /// The count of consecutive existing chunks from the first key (class PEEK); the
    /// completion's fourth field is that int.
    fn submit_contains_prefix(&self, py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<u64> {
        let keys = key_bytes(keys)?;
        Ok(self.submit_with(py, move |e| io::contains_prefix(e, keys)))
    }

    /// Reads chunks into engine memory; the completion's fourth field is a `Fetched`
    /// (metadata per key, `copy_into`). `prefix`: only the hit prefix (class
    /// PREFETCH), else every key (class GET).
    #[pyo3(signature = (keys, prefix=false))]
    fn submit_fetch(&self, py: Python<'_>, keys: &Bound<'_, PyAny>, prefix: bool) -> PyResult<u64> {
        let keys = key_bytes(keys)?;
        Ok(self.submit_with(py, move |e| io::fetch(e, keys, prefix)))
    }

    /// Reads only the stored `RemoteMetadata` of each chunk; the completion's fourth
    /// field is a list of `bytes` (or `None` for a missing chunk). `prefix`: class
    /// PREFETCH, else GET. The `raw` layout has no metadata: a failed completion.
    #[pyo3(signature = (keys, prefix=false))]
    fn submit_fetch_meta(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        prefix: bool,
    ) -> PyResult<u64> {
        let keys = key_bytes(keys)?;
        Ok(self.submit_with(py, move |e| io::fetch_meta(e, keys, prefix)))
    }

    /// Like `submit_batch_get` (reads land in the caller's writable buffers, per-key
    /// "loaded" flags, a length mismatch is a miss), but waits for lane space instead
    /// of failing on a full lane.
    fn submit_get_into(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        memoryviews: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let keys = key_bytes(keys)?;
        match acquire_all(memoryviews, true) {
            Ok(views) => {
                let lease = lend_views(&views, true)?;
                Ok(self.submit_with(py, move |e| {
                    leased(io::get_into_views_wait(e, keys, views), lease)
                }))
            }
            Err(msg) => Ok(self.fail_now(msg)),
        }
    }

    /// Takes every finished request: `(future id, ok, error text, result)` with result
    /// a list of per-key flags (GET, EXISTS, DELETE), an int (prefix count), a
    /// `Fetched`, or `None`. Resets the eventfd. Buffers of the drained requests are
    /// released here, and not before.
    fn drain_completions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let done = py.detach(|| self.done.drain());
        let out = PyList::empty(py);
        for d in done {
            let Outcome {
                ok,
                error,
                payload,
                views,
            } = d.outcome;
            let result: Bound<'py, PyAny> = match payload {
                Payload::None => py.None().into_bound(py),
                Payload::Flags(f) => f.into_pyobject(py)?.into_any(),
                Payload::Count(n) => n.into_pyobject(py)?.into_any(),
                Payload::Metas(m) => {
                    let l = PyList::empty(py);
                    for x in m {
                        match x {
                            Some(b) => l.append(PyBytes::new(py, &b))?,
                            None => l.append(py.None())?,
                        }
                    }
                    l.into_any()
                }
                Payload::Chunks(c) => Bound::new(
                    py,
                    Fetched {
                        chunks: Mutex::new(c),
                    },
                )?
                .into_any(),
            };
            out.append(PyTuple::new(
                py,
                [
                    d.id.into_pyobject(py)?.into_any(),
                    pyo3::types::PyBool::new(py, ok).to_owned().into_any(),
                    error.into_pyobject(py)?.into_any(),
                    result,
                ],
            )?)?;
            // The request is over: its buffers go back to Python now (GIL held).
            drop(views);
        }
        Ok(out)
    }

    /// Blocking: per key "found" (class PEEK), GIL released. For LMCache's
    /// synchronous calls (`exists_sync`, `batched_contains`).
    fn exists_now(&self, py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<Vec<bool>> {
        let keys = key_bytes(keys)?;
        let engine = self.open_engine()?;
        py.detach(|| engine.exists(&keys).wait())
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// Blocking: the hit-prefix count (class PEEK), GIL released.
    fn contains_prefix_now(&self, py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<usize> {
        let keys = key_bytes(keys)?;
        let engine = self.open_engine()?;
        py.detach(|| engine.contains_prefix(&keys).wait())
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// Requests accepted and not yet finished.
    fn pending(&self) -> usize {
        self.done.running()
    }

    /// The engine's counters as a dict (see `slotline_native::stats::to_dict`), plus
    /// `pending`: requests accepted and not yet finished. Raises once closed.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.open_engine()?.stats();
        let d = crate::stats::to_dict(py, &stats)?;
        d.set_item("pending", self.done.running())?;
        Ok(d)
    }

    /// The same counters and latency quantiles as human-readable text.
    fn stats_text(&self) -> PyResult<String> {
        Ok(self.open_engine()?.stats().to_string())
    }

    /// Counters and per-class latency histograms in the Prometheus text format
    /// (0.0.4), rendered by the engine: what a `/metrics` endpoint serves. Raises once
    /// closed.
    fn metrics_text(&self, py: Python<'_>) -> PyResult<String> {
        let engine = self.open_engine()?;
        Ok(py.detach(|| engine.prometheus_text()))
    }

    /// Refuses new requests, waits for running ones, then stops the engine; returns
    /// within the request timeout plus 7 s, GIL released throughout. A request still
    /// running at that bound is never completed and its buffers are never released
    /// (their memory may still be written by the engine or the kernel, so it is kept
    /// out of reach of any reuse): a `RuntimeWarning` says how many. Finished requests
    /// stay drainable. Returns the number of requests left running.
    fn close(&self, py: Python<'_>) -> PyResult<usize> {
        let (running, stuck) = py.detach(|| self.shutdown());
        if running > 0 || stuck {
            let msg = std::ffi::CString::new(format!(
                "slotline: closed with {running} request(s) still running past the bound \
                 (their buffers stay lent, never released){}",
                if stuck {
                    "; the engine's shards had not stopped"
                } else {
                    ""
                }
            ))
            .unwrap_or_default();
            PyErr::warn(
                py,
                &py.get_type::<pyo3::exceptions::PyRuntimeWarning>(),
                &msg,
                1,
            )?;
        }
        Ok(running)
    }

    /// Test hook: the next submission stops after reaching the engine and before its
    /// completion side starts, until `_debug_release()` (or 30 s).
    fn _debug_pause_next_submit(&self) {
        self.pause.arm();
    }

    /// Test hook: waits (GIL released) up to `timeout` seconds for a submission to
    /// reach the pause point.
    fn _debug_wait_paused(&self, py: Python<'_>, timeout: f64) -> bool {
        let t = Duration::try_from_secs_f64(timeout.clamp(0.0, 3600.0)).unwrap_or_default();
        py.detach(|| self.pause.wait_paused(t))
    }

    /// Test hook: lets the paused submission go on.
    fn _debug_release(&self) {
        self.pause.release();
    }

    /// Test hook: whether `close()` has begun.
    fn _debug_closing(&self) -> bool {
        self.done.closing()
    }
}

impl Drop for Client {
    /// Collected without `close`: the same bounded shutdown, with the GIL released
    /// (a shard may need it to finish a request; waiting while holding it would freeze
    /// the interpreter).
    fn drop(&mut self) {
        Python::attach(|py| py.detach(|| self.shutdown()));
    }
}

impl Client {
    fn open_engine(&self) -> PyResult<Engine> {
        self.engine()
            .ok_or_else(|| PyRuntimeError::new_err("plug-in is closed"))
    }

    fn fail_now(&self, msg: String) -> u64 {
        let id = self.new_id();
        self.done.finish_now(id, Outcome::failed(msg, Held::None));
        id
    }

    /// Stores each readable buffer under its key with its metadata (class PUT); a
    /// buffer that cannot be acquired fails the request at once.
    fn put_views(
        &self,
        py: Python<'_>,
        keys: Vec<Vec<u8>>,
        memoryviews: &Bound<'_, PyAny>,
        metas: Vec<Option<RemoteMetadata>>,
    ) -> PyResult<u64> {
        Ok(match acquire_all(memoryviews, false) {
            Ok(views) => {
                let lease = lend_views(&views, false)?;
                self.submit_with(py, move |e| {
                    leased(io::put_from_views(e, keys, views, metas), lease)
                })
            }
            Err(msg) => self.fail_now(msg),
        })
    }
}

/// Chunks read by `submit_fetch`, held until copied out.
#[pyclass(module = "slotline._native", frozen)]
pub struct Fetched {
    chunks: Mutex<Vec<Option<Chunk>>>,
}

#[pymethods]
impl Fetched {
    fn __len__(&self) -> usize {
        self.chunks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Key `i`'s stored `RemoteMetadata` bytes, `b""` for a hit without metadata
    /// (`raw` layout), or `None` for a miss.
    fn meta<'py>(&self, py: Python<'py>, i: usize) -> Option<Bound<'py, PyBytes>> {
        let chunks = self.chunks.lock().unwrap_or_else(|e| e.into_inner());
        let c = chunks.get(i)?.as_ref()?;
        let bytes = c.meta.as_ref().map(|m| m.encode()).unwrap_or_default();
        Some(PyBytes::new(py, &bytes))
    }

    /// Key `i`'s payload length, or `None` for a miss.
    fn length(&self, i: usize) -> Option<usize> {
        let chunks = self.chunks.lock().unwrap_or_else(|e| e.into_inner());
        chunks.get(i)?.as_ref().map(|c| c.data.len())
    }

    /// Copies key `i`'s payload to the start of `buf` (GIL released during the copy).
    /// False for a miss or a buffer too small.
    fn copy_into(&self, py: Python<'_>, i: usize, buf: &Bound<'_, PyAny>) -> PyResult<bool> {
        let mut view = View::acquire(buf, true).map_err(PyValueError::new_err)?;
        // The copy writes the buffer: not while a request in flight uses it.
        let lease = lend_views(std::slice::from_ref(&view), true)?;
        let chunks = &self.chunks;
        let v = &mut view;
        let copied = py.detach(move || {
            let chunks = chunks.lock().unwrap_or_else(|e| e.into_inner());
            match chunks.get(i) {
                Some(Some(c)) => v.fill_from(&c.data),
                _ => false,
            }
        });
        drop(lease);
        // Released here, with the GIL held.
        drop(view);
        Ok(copied)
    }

    /// Frees the engine-side memory now rather than when this object is collected.
    fn release(&self) {
        self.chunks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}
