//! Caller memory: puts sent straight from the caller's slices or buffers, reads landing
//! straight in them, on both backends, against a real redis-server; and, with a fake
//! server for what a real one never does (stalls, closing mid-value), that the caller's
//! memory is never touched after the call returned or the completion was delivered.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::fake::{parse_command, read_more, FakeServer};
use common::TestServer;
use slotline::IoBackend;
use slotline::{
    CallerBuf, CallerBufMut, Config, Engine, Error, KeyLayout, PutOwned, PutRef, RemoteMetadata,
};

const KIB: usize = 1024;

fn engine_at(url: &str, b: IoBackend, layout: KeyLayout, timeout: Duration) -> Engine {
    let mut cfg = Config::from_url(url).unwrap();
    cfg.io_backend = b;
    cfg.shards = Some(1);
    cfg.key_layout = layout;
    cfg.request_timeout = timeout;
    cfg.deadlines = slotline::Deadlines::uniform(cfg.request_timeout);
    Engine::new(cfg).unwrap_or_else(|e| panic!("Engine::new: {e}"))
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn round_trips_in(b: IoBackend, layout: KeyLayout) {
    let srv = TestServer::start();
    let e = engine_at(&srv.url(), b, layout, Duration::from_secs(10));
    for (size, n) in [(2 * KIB, 16), (64 * KIB, 8), (4096 * KIB, 3)] {
        let keys: Vec<String> = (0..n).map(|i| format!("rt-{size}-{i}")).collect();
        let data: Vec<Vec<u8>> = (0..n).map(|i| pattern(i as u8, size)).collect();
        let meta = RemoteMetadata::new(size, 4, 6, &[size]).unwrap();
        let before = e.stats().metrics;
        let chunks: Vec<PutRef<'_>> = keys
            .iter()
            .zip(&data)
            .map(|(k, d)| PutRef {
                key: k.as_bytes(),
                data: d,
                meta: Some(&meta),
            })
            .collect();
        e.put(&chunks).wait().unwrap();
        let mid = e.stats().metrics;
        let mut bufs: Vec<Vec<u8>> = (0..n).map(|_| vec![0u8; size]).collect();
        let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
        let infos = e.get(&keys).into_slices(&mut slices).wait().unwrap();
        let after = e.stats().metrics;
        for i in 0..n {
            let info = infos[i].as_ref().expect("hit");
            assert_eq!(info.len, size);
            assert_eq!(bufs[i], data[i], "{size} bytes, chunk {i}");
            if layout == KeyLayout::Lmcache {
                assert_eq!(info.meta.as_ref().unwrap().payload_len(), size);
            }
        }
        let total = (size * n) as u64;
        let by_ref = mid.sent_by_reference_bytes - before.sent_by_reference_bytes;
        let direct = after.recv_direct_bytes - mid.recv_direct_bytes;
        let staged = after.recv_staged_bytes - mid.recv_staged_bytes;
        // Payloads over 512 bytes go out from the caller's memory itself.
        assert_eq!(
            by_ref, total,
            "{size}: payloads sent from the caller's memory"
        );
        if size >= 32 * KIB {
            assert_eq!(direct, total, "{size}: received straight into the slices");
            // Only metadata (and nothing of the payloads) is copied out.
            assert!(staged <= 64 * n as u64, "{size}: staged {staged}");
        } else {
            assert!(staged >= total, "small values are staged");
        }
    }
}

fn round_trips(b: IoBackend) {
    round_trips_in(b, KeyLayout::Raw);
    round_trips_in(b, KeyLayout::Lmcache);
}
both_backends!(slices_round_trip_without_copies, round_trips);

/// The owned forms: buffers go in, come back with the completion, hold the data.
fn owned_round_trip(b: IoBackend) {
    let srv = TestServer::start();
    let e = engine_at(&srv.url(), b, KeyLayout::Lmcache, Duration::from_secs(10));
    let size = 256 * KIB;
    let keys = ["own-a", "own-b", "own-missing"];
    let puts = (0..2)
        .map(|i| PutOwned {
            key: keys[i].as_bytes().to_vec(),
            data: Box::new(pattern(i as u8 + 7, size)) as Box<dyn CallerBuf>,
            meta: None,
        })
        .collect::<Vec<_>>();
    let r = e.put(puts).submit().wait();
    r.result.unwrap();
    assert_eq!(r.bufs.len(), 2);
    assert_eq!(r.bufs[1].as_slice(), &pattern(8, size)[..]);
    let bufs: Vec<Box<dyn CallerBufMut>> = (0..3)
        .map(|_| Box::new(vec![0u8; size]) as Box<dyn CallerBufMut>)
        .collect();
    let r = e.get(&keys).into_bufs(bufs).try_submit().wait();
    let infos = r.result.unwrap();
    assert!(infos[0].is_some() && infos[1].is_some() && infos[2].is_none());
    assert_eq!(r.bufs[0].as_slice(), &pattern(7, size)[..]);
    assert_eq!(r.bufs[1].as_slice(), &pattern(8, size)[..]);
    assert!(r.bufs[2].as_slice().iter().all(|&x| x == 0));
    // Awaited as a future too (no executor needed beyond a simple block_on).
    let bufs: Vec<Box<dyn CallerBufMut>> = vec![Box::new(vec![0u8; size])];
    let r = block_on(e.get(&["own-a"]).into_bufs(bufs).submit());
    assert!(r.result.unwrap()[0].is_some());
    assert_eq!(r.bufs[0].as_slice(), &pattern(7, size)[..]);
}
both_backends!(
    owned_buffers_come_back_with_the_completion,
    owned_round_trip
);

/// A value of another length than its buffer is a miss; the buffer is untouched.
fn wrong_length(b: IoBackend) {
    let srv = TestServer::start();
    for layout in [KeyLayout::Raw, KeyLayout::Lmcache] {
        let e = engine_at(&srv.url(), b, layout, Duration::from_secs(10));
        for size in [2 * KIB, 64 * KIB] {
            let key = format!("wl-{size}");
            let data = pattern(1, size);
            e.put(&[PutRef {
                key: key.as_bytes(),
                data: &data,
                meta: None,
            }])
            .wait()
            .unwrap();
            for len in [size - 1, size + 1, size / 2, 2 * size] {
                let mut buf = vec![0x5Au8; len];
                let infos = e
                    .get(&[&key])
                    .into_slices(&mut [&mut buf[..]])
                    .wait()
                    .unwrap();
                assert!(infos[0].is_none(), "{layout:?} {size} into {len}: miss");
                assert!(
                    buf.iter().all(|&x| x == 0x5A),
                    "{layout:?} {size} into {len}: buffer untouched"
                );
            }
        }
    }
}
both_backends!(wrong_length_is_a_miss_and_untouched, wrong_length);

// ----- a fake server for stalls and cut-offs -----

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// MGET: the header and the value 1 KiB every 20 ms, long past the timeout.
    Trickle,
    /// MGET: half the value, then close.
    CloseMidway,
    /// Reads nothing for a while (a put's send stalls), then records all it gets.
    Stall,
}

/// The fake server and what it received once a put's send stalled (`Mode::Stall`).
struct Fake {
    srv: FakeServer,
    got: Arc<Mutex<Vec<u8>>>,
}

const FAKE_VALUE: usize = 64 * KIB;

impl Fake {
    fn start(mode: Mode) -> Fake {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let srv = FakeServer::start(move |sock, stop| fake_serve(sock, mode, stop, &g));
        Fake { srv, got }
    }
}

fn fake_serve(mut sock: TcpStream, mode: Mode, stop: &AtomicBool, got: &Mutex<Vec<u8>>) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(20)));
    let _ = sock.set_nodelay(true);
    let mut buf = Vec::new();
    let mut stalled = false;
    while !stop.load(Ordering::SeqCst) {
        while let Some((args, used)) = parse_command(&buf) {
            buf.drain(..used);
            let name = args[0].to_ascii_uppercase();
            let r = match &name[..] {
                b"PING" => sock.write_all(b"+PONG\r\n"),
                b"MGET" => {
                    let value = vec![0xCDu8; FAKE_VALUE];
                    let mut head = format!("*1\r\n${FAKE_VALUE}\r\n").into_bytes();
                    if mode == Mode::CloseMidway {
                        head.extend_from_slice(&value[..FAKE_VALUE / 2]);
                        let _ = sock.write_all(&head);
                        return;
                    }
                    head.extend_from_slice(&value[..KIB]);
                    let mut sent = KIB;
                    let mut r = sock.write_all(&head);
                    while r.is_ok() && sent < FAKE_VALUE && !stop.load(Ordering::SeqCst) {
                        thread::sleep(Duration::from_millis(20));
                        r = sock.write_all(&value[sent..sent + KIB]);
                        sent += KIB;
                    }
                    return;
                }
                _ => sock.write_all(b"+OK\r\n"),
            };
            if r.is_err() {
                return;
            }
        }
        if mode == Mode::Stall && !stalled && find(&buf, b"$3\r\nSET\r\n").is_some() {
            stalled = true;
            thread::sleep(Duration::from_millis(800));
        }
        let mut fresh = Vec::new();
        if !read_more(&mut sock, &mut fresh) {
            return;
        }
        if stalled {
            got.lock().unwrap().extend_from_slice(&fresh);
        } else {
            buf.extend_from_slice(&fresh);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The blocking read fails (time-out, or the connection closes mid-value) and returns;
/// the server goes on writing, and the slice does not change any more.
fn poisoned_after_return(b: IoBackend, mode: Mode) {
    let srv = Fake::start(mode);
    let e = engine_at(
        &srv.srv.url(),
        b,
        KeyLayout::Raw,
        Duration::from_millis(200),
    );
    let mut buf = vec![0u8; FAKE_VALUE];
    let r = e.get(&["k"]).into_slices(&mut [&mut buf[..]]).wait();
    let at_return = buf.clone();
    // A time-out is an error; a cut-off connection is retried until it times out.
    assert!(r.is_err(), "the read cannot succeed");
    thread::sleep(Duration::from_millis(400));
    assert!(
        buf == at_return,
        "the slice changed after the call returned"
    );
    drop(e);
}

fn trickle(b: IoBackend) {
    poisoned_after_return(b, Mode::Trickle);
}
both_backends!(timed_out_read_never_touches_the_slice_after_return, trickle);

fn close_midway(b: IoBackend) {
    poisoned_after_return(b, Mode::CloseMidway);
}
both_backends!(
    cut_off_read_never_touches_the_slice_after_return,
    close_midway
);

/// A put whose send stalls past the time-out: the call returns with an error only when
/// the send no longer references the slice; bytes written into the slice afterwards
/// never reach the server.
fn stalled_put(b: IoBackend) {
    let srv = Fake::start(Mode::Stall);
    let e = engine_at(
        &srv.srv.url(),
        b,
        KeyLayout::Raw,
        Duration::from_millis(200),
    );
    let mut data = vec![0x11u8; 8 * 1024 * KIB];
    let r = e
        .put(&[PutRef {
            key: b"stalled",
            data: &data,
            meta: None,
        }])
        .wait();
    assert!(
        matches!(r, Err(Error::PutFailed { .. }) | Err(Error::Timeout { .. })),
        "{r:?}"
    );
    data.fill(0xEE);
    // The server now reads whatever was sent before the connection closed.
    thread::sleep(Duration::from_millis(1200));
    let got = srv.got.lock().unwrap();
    assert!(
        !got.contains(&0xEE),
        "bytes written after the call returned were sent"
    );
    drop(got);
    drop(e);
}
both_backends!(stalled_put_never_reads_the_slice_after_return, stalled_put);

/// The non-blocking checks answer like their waiting forms.
fn try_forms(b: IoBackend) {
    let srv = TestServer::start();
    let e = engine_at(&srv.url(), b, KeyLayout::Lmcache, Duration::from_secs(10));
    let data = pattern(3, 4 * KIB);
    e.put(&[PutRef {
        key: b"t-a",
        data: &data,
        meta: None,
    }])
    .wait()
    .unwrap();
    assert_eq!(
        e.exists(&["t-a", "t-b"])
            .try_submit()
            .unwrap()
            .wait()
            .unwrap(),
        vec![true, false]
    );
    assert_eq!(
        e.contains_prefix(&["t-a", "t-b"])
            .try_submit()
            .unwrap()
            .wait()
            .unwrap(),
        1
    );
    let got = e
        .prefetch(&["t-a", "t-b"])
        .try_submit()
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, data);
    assert_eq!(
        e.delete(&["t-a", "t-b"])
            .try_submit()
            .unwrap()
            .wait()
            .unwrap(),
        1
    );
}
both_backends!(try_forms_answer, try_forms);

/// Metadata first, then the payload into a buffer sized from it: the metadata read
/// returns what was stored, `None` for a missing chunk, and refuses the raw layout.
fn metadata_first(b: IoBackend) {
    let srv = TestServer::start();
    let e = engine_at(&srv.url(), b, KeyLayout::Lmcache, Duration::from_secs(10));
    let size = 64 * KIB;
    let meta = RemoteMetadata::new(size, 1, 3, &[1, 2, 16, size / 64]).unwrap();
    let data = pattern(5, size);
    e.put(&[PutRef {
        key: b"m-a",
        data: &data,
        meta: Some(&meta),
    }])
    .wait()
    .unwrap();
    let metas = e
        .metadata(&["m-a", "m-missing"])
        .priority(slotline::Priority::Prefetch)
        .submit()
        .wait()
        .unwrap();
    assert_eq!(metas, vec![Some(meta.clone()), None]);
    let len = metas[0].as_ref().unwrap().payload_len();
    let bufs: Vec<Box<dyn CallerBufMut>> = vec![Box::new(vec![0u8; len])];
    let r = e.get(&["m-a"]).into_bufs(bufs).submit().wait();
    assert_eq!(r.result.unwrap()[0].as_ref().unwrap().meta, Some(meta));
    assert_eq!(r.bufs[0].as_slice(), &data[..]);
    let raw = engine_at(&srv.url(), b, KeyLayout::Raw, Duration::from_secs(10));
    let r = raw
        .metadata(&["m-a"])
        .priority(slotline::Priority::Get)
        .submit()
        .wait();
    assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
}
both_backends!(metadata_read_sizes_the_payload_read, metadata_first);

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct T(thread::Thread);
    impl Wake for T {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(T(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park_timeout(Duration::from_millis(50));
    }
}
