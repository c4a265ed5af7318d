//! `put`, `get`, `exists`, `del`: one-shot chunk commands for debugging and scripting.

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::Args;

use slotline::{dtype_code, fmt_code};
use slotline::{Engine, KeyLayout, PutChunk, RemoteMetadata};

use super::{CliError, ConnArgs};

/// Arguments of `slotline put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// LMCache key string, e.g. 'meta-llama/Llama-3.1-8B-Instruct@1@0@3f9a0c1@bfloat16'.
    key: String,
    /// Payload file; `-` reads stdin. The metadata length is its size.
    #[arg(long, value_name = "PATH")]
    file: PathBuf,
    /// Shape written to the metadata, up to 4 comma-separated dimensions
    /// (e.g. 2,32,256,1024) [default: the payload length].
    #[arg(long, value_name = "DIMS", value_parser = parse_shape)]
    shape: Option<Shape>,
    /// dtype written to the metadata: a name (bfloat16, half, float32, uint8, fp8_e4m3...)
    /// or a code.
    #[arg(long, value_name = "DTYPE", default_value = "uint8", value_parser = parse_dtype)]
    dtype: i32,
    /// MemoryFormat written to the metadata: a name (KV_2LTD, KV_T2D, BINARY...) or a code.
    #[arg(long, value_name = "FMT", default_value = "BINARY", value_parser = parse_fmt)]
    fmt: i32,
    /// Expire both keys after this many seconds (SET ... EX).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    ttl: Option<u64>,
    #[command(flatten)]
    conn: ConnArgs,
}

/// Arguments of `slotline get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// LMCache key string.
    key: String,
    /// Write the payload here; `-` writes it to stdout (the description then goes to
    /// stderr).
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    #[command(flatten)]
    conn: ConnArgs,
}

/// Arguments of `slotline exists` and `slotline del`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// LMCache key strings.
    #[arg(required = true, value_name = "KEY")]
    keys: Vec<String>,
    #[command(flatten)]
    conn: ConnArgs,
}

/// `--shape`: one value holding all dimensions (a bare `Vec` would make clap expect
/// repeated flags).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape(Vec<usize>);

fn parse_shape(s: &str) -> Result<Shape, String> {
    let dims: Result<Vec<usize>, _> = s.split(',').map(|d| d.trim().parse::<usize>()).collect();
    let dims = dims.map_err(|_| {
        format!("shape {s:?} is not a comma-separated list of non-negative integers")
    })?;
    if dims.is_empty() || dims.len() > 4 {
        return Err(format!(
            "shape {s:?} has {} dimensions; LMCache metadata holds 1 to 4",
            dims.len()
        ));
    }
    Ok(Shape(dims))
}

fn parse_dtype(s: &str) -> Result<i32, String> {
    dtype_code(s).ok_or_else(|| {
        format!(
            "unknown dtype {s:?}: expected float16/half, bfloat16, float32, float64, uint8, \
             float8_e4m3fn, float8_e5m2, or a code"
        )
    })
}

fn parse_fmt(s: &str) -> Result<i32, String> {
    fmt_code(s).ok_or_else(|| {
        format!(
            "unknown format {s:?}: expected UNDEFINED, KV_2LTD, KV_T2D, KV_2TD, BINARY, \
             BINARY_BUFFER, KV_MLA_FMT, KV_DSA_INDEX_FMT, or a code"
        )
    })
}

/// Bytes per element of a dtype code, where LMCache defines one.
fn dtype_size(code: i32) -> Option<usize> {
    match code {
        1..=3 => Some(2),
        4 => Some(4),
        5 => Some(8),
        6..=8 => Some(1),
        _ => None,
    }
}

fn is_stdio(p: &std::path::Path) -> bool {
    p.as_os_str() == "-"
}

fn engine(conn: &ConnArgs, ttl: Option<u64>) -> Result<Engine, CliError> {
    let mut cfg = conn.config()?;
    if ttl.is_some() {
        cfg.ttl = ttl;
    }
    Ok(Engine::new(cfg)?)
}

/// Arguments of `slotline topology`.
#[derive(Debug, Args)]
pub struct TopologyArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Shard threads to spread the masters over [default: one per core].
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
}

/// `slotline topology --url redis://host:port`
pub fn topology(a: TopologyArgs) -> Result<(), CliError> {
    let mut cfg = a.conn.config()?;
    // Any node of a cluster will do as the seed, however the URL is written.
    cfg.mode = slotline::Mode::Cluster;
    cfg.shards = a.shards;
    let e = Engine::new(cfg)?;
    let masters = e.topology();
    let mut covered = 0usize;
    for m in &masters {
        let ranges: Vec<String> = m
            .slots
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        covered += m
            .slots
            .iter()
            .map(|&(a, b)| (b - a) as usize + 1)
            .sum::<usize>();
        let replicas: Vec<String> = m.replicas.iter().map(|r| r.to_string()).collect();
        println!(
            "master {}  id {}  shard {}  slots {}  replicas [{}]",
            m.addr,
            if m.id.is_empty() { "?" } else { &m.id },
            m.shard,
            ranges.join(","),
            replicas.join(", ")
        );
    }
    println!(
        "{} masters over {} shards; {covered} of 16384 slots covered",
        masters.len(),
        e.stats().shards
    );
    Ok(())
}

/// `slotline put KEY --file PATH ...`
pub fn put(a: PutArgs) -> Result<(), CliError> {
    let data = if is_stdio(&a.file) {
        let mut v = Vec::new();
        std::io::stdin()
            .read_to_end(&mut v)
            .map_err(|e| CliError::failed(format!("cannot read the payload from stdin: {e}")))?;
        v
    } else {
        std::fs::read(&a.file).map_err(|e| {
            CliError::failed(format!(
                "cannot read payload file {}: {e}",
                a.file.display()
            ))
        })?
    };
    let len = data.len();
    let shape = a.shape.map_or_else(|| vec![len], |s| s.0);
    // Shape and length are independent fields to LMCache, but a mismatch usually means a
    // wrong flag; say so without refusing, since odd chunks (the last of a prompt) exist.
    if let Some(elem) = dtype_size(a.dtype) {
        let elems = shape
            .iter()
            .filter(|&&d| d != 0)
            .try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if elems.and_then(|n| n.checked_mul(elem)) != Some(len) {
            eprintln!(
                "warning: shape {shape:?} x {elem} bytes per element does not match the \
                 payload length {len}"
            );
        }
    }
    let meta = RemoteMetadata::new(len, a.fmt, a.dtype, &shape).map_err(CliError::from)?;
    let e = engine(&a.conn, a.ttl)?;
    let raw = e.config().key_layout == KeyLayout::Raw;
    if raw {
        eprintln!("note: the raw layout stores no metadata; only the payload is written");
    }
    let r = e
        .put(vec![PutChunk::new(
            a.key.as_bytes(),
            data,
            Some(meta.clone()),
        )])
        .wait();
    drop(e);
    r?;
    if raw {
        println!("stored {} ({len} bytes)", a.key);
    } else {
        println!("stored {} ({len} bytes, {meta})", a.key);
    }
    Ok(())
}

/// `slotline get KEY [--out PATH]`
pub fn get(a: GetArgs) -> Result<(), CliError> {
    let e = engine(&a.conn, None)?;
    let got = e.get(&[a.key.as_bytes()]).wait();
    drop(e);
    let mut got = got?;
    let Some(chunk) = got.pop().flatten() else {
        return Err(CliError::failed(format!("miss: {}", a.key)));
    };
    let to_stdout = a.out.as_deref().is_some_and(is_stdio);
    let describe = match &chunk.meta {
        Some(m) => format!("{m}\npayload {} bytes", chunk.data.len()),
        None => format!(
            "no metadata (raw layout)\npayload {} bytes",
            chunk.data.len()
        ),
    };
    if to_stdout {
        eprintln!("{describe}");
        let mut out = std::io::stdout().lock();
        out.write_all(&chunk.data)
            .and_then(|_| out.flush())
            .map_err(|e| CliError::failed(format!("cannot write the payload to stdout: {e}")))?;
        return Ok(());
    }
    println!("{describe}");
    if let Some(path) = &a.out {
        std::fs::write(path, &chunk.data).map_err(|e| {
            CliError::failed(format!("cannot write payload to {}: {e}", path.display()))
        })?;
        println!("payload written to {}", path.display());
    }
    Ok(())
}

/// `slotline exists KEY...`
pub fn exists(a: KeysArgs) -> Result<(), CliError> {
    let e = engine(&a.conn, None)?;
    let found = e.exists(&a.keys).wait();
    drop(e);
    let found = found?;
    let mut out = String::new();
    for (k, f) in a.keys.iter().zip(found) {
        out.push_str(&format!("{k} {f}\n"));
    }
    print!("{out}");
    Ok(())
}

/// `slotline del KEY...`
pub fn del(a: KeysArgs) -> Result<(), CliError> {
    let e = engine(&a.conn, None)?;
    let n = e.delete(&a.keys).wait();
    drop(e);
    let n = n?;
    println!("{n}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(
            parse_shape("2,32,256,1024").unwrap().0,
            vec![2, 32, 256, 1024]
        );
        assert_eq!(parse_shape(" 7 ").unwrap().0, vec![7]);
        assert!(parse_shape("1,2,3,4,5").is_err());
        assert!(parse_shape("a,b").is_err());
        assert!(parse_shape("").is_err());
        assert!(parse_shape("-1").is_err());
    }

    #[test]
    fn codes() {
        assert_eq!(parse_dtype("bfloat16"), Ok(3));
        assert_eq!(parse_fmt("KV_2LTD"), Ok(1));
        assert!(parse_dtype("complex64").is_err());
        assert_eq!(dtype_size(3), Some(2));
        assert_eq!(dtype_size(0), None);
    }
}
