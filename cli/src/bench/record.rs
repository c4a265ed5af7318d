//! One bench result as a record: the columns shared by the JSON and CSV outputs, the
//! build that produced it, and a reader for saved JSON lines (`slotline plot`).

use std::collections::BTreeMap;

use super::*;

/// The commit the binary was built from (`-dirty` if the tree had changes), or
/// `unknown`.
pub const GIT_COMMIT: &str = env!("SLOTLINE_GIT_COMMIT");
/// The cargo profile of the binary (`release`, `debug`, ...).
pub const BUILD_PROFILE: &str = env!("SLOTLINE_BUILD_PROFILE");

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The human tables on stdout.
    Table,
    /// One JSON object per line on stdout (every run and the medians); the tables go
    /// to stderr.
    Json,
    /// CSV with a header row on stdout (the same columns as JSON); the tables go to
    /// stderr.
    Csv,
}

/// One cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text.
    Str(String),
    /// A count.
    Int(u64),
    /// A measurement.
    Num(f64),
    /// A flag.
    Bool(bool),
    /// Not known or not applicable.
    Null,
}

impl Value {
    fn json(&self) -> String {
        match self {
            Value::Str(s) => format!("\"{}\"", json_escape(s)),
            Value::Int(n) => n.to_string(),
            Value::Num(x) if x.is_finite() => format!("{x:.6}"),
            Value::Bool(b) => b.to_string(),
            Value::Num(_) | Value::Null => "null".into(),
        }
    }

    fn csv(&self) -> String {
        match self {
            Value::Str(s) if s.contains([',', '"', '\n']) => {
                format!("\"{}\"", s.replace('"', "\"\""))
            }
            Value::Str(s) => s.clone(),
            Value::Null => String::new(),
            Value::Num(x) if !x.is_finite() => String::new(),
            v => v.json(),
        }
    }

    fn num(&self) -> Option<f64> {
        match self {
            Value::Num(x) => Some(*x),
            Value::Int(n) => Some(*n as f64),
            _ => None,
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One result: a phase of one peer in one run (`run` = Some) or the median over runs.
#[derive(Debug, Clone)]
pub struct Record {
    /// Run number from 1, or None for the median over runs.
    pub run: Option<usize>,
    /// Row label (`slotline[epoll]`, `parallel`, ...).
    pub peer: String,
    /// `put` or `get`.
    pub phase: String,
    /// A PUT's key pattern (`fresh`, `overwrite`); None for a GET.
    pub keys: Option<String>,
    /// Payload bytes per chunk.
    pub value_size: usize,
    /// Chunks per batch.
    pub batch: usize,
    /// Batches per phase.
    pub batches: usize,
    /// Runs of the invocation.
    pub runs: usize,
    /// Batches in flight.
    pub concurrency: usize,
    /// Key layout.
    pub layout: String,
    /// Topology.
    pub mode: String,
    /// Masters of the server(s) measured (1 standalone); None when not known (`--url`
    /// of a cluster).
    pub masters: Option<usize>,
    /// Replicas per master of the bench's own cluster, where it started one.
    pub replicas: Option<usize>,
    /// `--io-threads` of the bench's own servers, where set.
    pub io_threads: Option<usize>,
    /// How the peer reads: `get` (memory the client allocates) or `get-into` (the
    /// caller's buffers, allocated once per run).
    pub read: String,
    /// The numbers.
    pub s: Sample,
    /// Commit of the binary.
    pub commit: String,
    /// Build profile of the binary.
    pub profile: String,
}

impl Record {
    /// A record of this binary for `plan`.
    pub fn new(
        plan: &Plan,
        peer: &str,
        read: &str,
        phase: Phase,
        keys: Option<KeyPattern>,
        run: Option<usize>,
        s: &Sample,
    ) -> Record {
        Record {
            run,
            peer: peer.to_string(),
            phase: phase.name().to_string(),
            keys: keys.map(|k| k.name().to_string()),
            value_size: plan.value_size,
            batch: plan.batch,
            batches: plan.batches,
            runs: plan.runs,
            concurrency: plan.concurrency,
            layout: plan.layout.to_string(),
            mode: plan.mode.to_string(),
            masters: plan.server.masters,
            replicas: plan.server.replicas,
            io_threads: plan.server.io_threads,
            read: read.to_string(),
            s: *s,
            commit: GIT_COMMIT.to_string(),
            profile: BUILD_PROFILE.to_string(),
        }
    }

    /// `true` if the p99 is the slowest batch: too few batches to tell them apart.
    pub fn p99_is_max(&self) -> bool {
        self.s.p99_is_max()
    }

    /// Every column, in order: the JSON keys and the CSV header.
    pub fn columns(&self) -> Vec<(&'static str, Value)> {
        let n = |x: f64| Value::Num(x);
        let u = |x: usize| Value::Int(x as u64);
        let o = |x: Option<f64>| x.map_or(Value::Null, Value::Num);
        let s = |x: &str| Value::Str(x.to_string());
        vec![
            ("bench", s("slotline")),
            ("kind", s(if self.run.is_some() { "run" } else { "median" })),
            ("run", self.run.map_or(Value::Null, u)),
            ("peer", s(&self.peer)),
            ("phase", s(&self.phase)),
            ("keys", self.keys.as_deref().map_or(Value::Null, s)),
            ("value_size", u(self.value_size)),
            ("batch", u(self.batch)),
            ("batches", u(self.batches)),
            ("runs", u(self.runs)),
            ("concurrency", u(self.concurrency)),
            ("layout", s(&self.layout)),
            ("mode", s(&self.mode)),
            ("masters", self.masters.map_or(Value::Null, u)),
            ("replicas", self.replicas.map_or(Value::Null, u)),
            ("io_threads", self.io_threads.map_or(Value::Null, u)),
            ("read", s(&self.read)),
            ("keys_per_s", n(self.s.keys_per_s)),
            ("mb_per_s", n(self.s.mb_per_s)),
            ("gb_per_s", n(self.s.mb_per_s / 1e3)),
            ("p50_ms", n(self.s.p50_ms)),
            ("p95_ms", n(self.s.p95_ms)),
            ("p99_ms", n(self.s.p99_ms)),
            ("max_ms", n(self.s.max_ms)),
            ("p99_is_max", Value::Bool(self.p99_is_max())),
            ("cpu_us_per_key", n(self.s.cpu_us_per_key)),
            ("commands_per_batch", o(self.s.commands_per_batch)),
            ("frames_per_batch", o(self.s.frames_per_batch)),
            ("syscalls_per_batch", o(self.s.syscalls_per_batch)),
            ("server_cpu_us_per_key", o(self.s.server_cpu_us_per_key)),
            ("commit", s(&self.commit)),
            ("profile", s(&self.profile)),
        ]
    }

    /// One JSON object on one line.
    pub fn to_json(&self) -> String {
        let cells: Vec<String> = self
            .columns()
            .iter()
            .map(|(k, v)| format!("\"{k}\":{}", v.json()))
            .collect();
        format!("{{{}}}", cells.join(","))
    }

    /// The CSV header row.
    pub fn csv_header() -> String {
        let r = Record::new(
            &Plan::example(),
            "",
            "",
            Phase::Get,
            None,
            None,
            &Sample::default(),
        );
        r.columns()
            .iter()
            .map(|(k, _)| *k)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One CSV row.
    pub fn to_csv(&self) -> String {
        self.columns()
            .iter()
            .map(|(_, v)| v.csv())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Reads a record back from a JSON line written by this or an older bench (missing
    /// columns are unknown: NaN numbers, `unknown` commit). None for lines that are not
    /// bench objects.
    pub fn from_json(line: &str) -> Option<Record> {
        let m = parse_flat_object(line)?;
        if m.get("bench").and_then(Value::text) != Some("slotline") {
            return None;
        }
        let t = |k: &str| m.get(k).and_then(Value::text).map(str::to_string);
        let f = |k: &str| m.get(k).and_then(Value::num);
        let z = |k: &str| f(k).unwrap_or(0.0) as usize;
        let nan = |k: &str| f(k).unwrap_or(f64::NAN);
        let run = match t("kind").as_deref() {
            Some("median") => None,
            _ => Some(z("run").max(1)),
        };
        Some(Record {
            run,
            peer: t("peer")?,
            phase: t("phase")?,
            keys: t("keys"),
            value_size: z("value_size"),
            batch: z("batch"),
            batches: z("batches"),
            runs: z("runs"),
            concurrency: z("concurrency").max(1),
            layout: t("layout").unwrap_or_default(),
            mode: t("mode").unwrap_or_default(),
            masters: f("masters").map(|x| x as usize),
            replicas: f("replicas").map(|x| x as usize),
            io_threads: f("io_threads").map(|x| x as usize),
            read: t("read").unwrap_or_default(),
            s: Sample {
                keys_per_s: nan("keys_per_s"),
                mb_per_s: nan("mb_per_s"),
                p50_ms: nan("p50_ms"),
                p95_ms: nan("p95_ms"),
                p99_ms: nan("p99_ms"),
                max_ms: nan("max_ms"),
                cpu_us_per_key: nan("cpu_us_per_key"),
                commands_per_batch: f("commands_per_batch"),
                frames_per_batch: f("frames_per_batch"),
                syscalls_per_batch: f("syscalls_per_batch"),
                server_cpu_us_per_key: f("server_cpu_us_per_key"),
            },
            commit: t("commit").unwrap_or_else(|| "unknown".into()),
            profile: t("profile").unwrap_or_else(|| "unknown".into()),
        })
    }
}

/// Parses one flat JSON object (string, number, bool and null values; nested values
/// are skipped as null). None if the line is not such an object.
fn parse_flat_object(line: &str) -> Option<BTreeMap<String, Value>> {
    let mut p = Parser {
        s: line.trim().as_bytes(),
        i: 0,
    };
    p.eat(b'{')?;
    let mut m = BTreeMap::new();
    if p.peek()? == b'}' {
        return Some(m);
    }
    loop {
        let k = p.string()?;
        p.eat(b':')?;
        let v = p.value()?;
        m.insert(k, v);
        match p.next()? {
            b',' => continue,
            b'}' => return Some(m),
            _ => return None,
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn string(&mut self) -> Option<String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            let c = *self.s.get(self.i)?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let e = *self.s.get(self.i)?;
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let hex = std::str::from_utf8(self.s.get(self.i..self.i + 4)?).ok()?;
                            self.i += 4;
                            let ch = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
                            out.extend_from_slice(ch.to_string().as_bytes());
                        }
                        other => out.push(other),
                    }
                }
                c => out.push(c),
            }
        }
    }

    fn value(&mut self) -> Option<Value> {
        match self.peek()? {
            b'"' => self.string().map(Value::Str),
            b'{' | b'[' => {
                // Skip a nested value (not produced by the bench).
                let mut depth = 0usize;
                let mut in_str = false;
                while let Some(&c) = self.s.get(self.i) {
                    self.i += 1;
                    match c {
                        b'\\' if in_str => self.i += 1,
                        b'"' => in_str = !in_str,
                        b'{' | b'[' if !in_str => depth += 1,
                        b'}' | b']' if !in_str => {
                            depth -= 1;
                            if depth == 0 {
                                return Some(Value::Null);
                            }
                        }
                        _ => {}
                    }
                }
                None
            }
            _ => {
                let start = self.i;
                while self
                    .s
                    .get(self.i)
                    .is_some_and(|c| !matches!(c, b',' | b'}') && !c.is_ascii_whitespace())
                {
                    self.i += 1;
                }
                let tok = std::str::from_utf8(&self.s[start..self.i]).ok()?;
                match tok {
                    "null" => Some(Value::Null),
                    "true" => Some(Value::Bool(true)),
                    "false" => Some(Value::Bool(false)),
                    t => match t.parse::<u64>() {
                        Ok(n) => Some(Value::Int(n)),
                        Err(_) => t.parse().ok().map(Value::Num),
                    },
                }
            }
        }
    }
}

/// Where results go: machine records on stdout as they come (JSON or CSV), the human
/// text on stdout (table format) or stderr (machine formats), and every record kept
/// for `--plot`.
pub struct Output {
    format: Format,
    /// `--json`: JSON lines and the tables both on stdout (as before --format).
    mixed: bool,
    header_done: bool,
    /// Every record so far.
    pub records: Vec<Record>,
}

impl Output {
    /// Nothing printed yet.
    pub fn new(format: Format) -> Output {
        Output {
            format,
            mixed: false,
            header_done: false,
            records: Vec::new(),
        }
    }

    /// `--json`: JSON lines on stdout with the tables, as the bench printed before
    /// `--format` (scripts filter the lines starting with `{`).
    pub fn mixed_json() -> Output {
        Output {
            mixed: true,
            ..Output::new(Format::Json)
        }
    }

    /// The output format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Emits a record (JSON/CSV) and keeps it.
    pub fn push(&mut self, r: Record) {
        match self.format {
            Format::Json => println!("{}", r.to_json()),
            Format::Csv => {
                if !std::mem::replace(&mut self.header_done, true) {
                    println!("{}", Record::csv_header());
                }
                println!("{}", r.to_csv());
            }
            Format::Table => {}
        }
        self.records.push(r);
    }

    /// Prints human text (a table, a note): on stdout unless stdout carries JSON/CSV.
    pub fn say(&self, text: &str) {
        progress::clear();
        match self.format {
            _ if self.mixed => println!("{text}"),
            Format::Table => println!("{text}"),
            Format::Json | Format::Csv => eprintln!("{text}"),
        }
    }

    /// Writes every record as JSON lines to `path`.
    pub fn write_jsonl(&self, path: &Path) -> Result<(), BenchError> {
        let mut text = String::new();
        for r in &self.records {
            text.push_str(&r.to_json());
            text.push('\n');
        }
        std::fs::write(path, text)
            .map_err(|e| BenchError::failed(format!("writing {}: {e}", path.display())))
    }
}

/// Reads every bench record of a JSON-lines file (other lines, such as a table
/// captured with the JSON, are skipped).
pub fn read_records(path: &Path) -> Result<Vec<Record>, BenchError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BenchError::failed(format!("{}: {e}", path.display())))?;
    Ok(text.lines().filter_map(Record::from_json).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        Sample {
            keys_per_s: 1000.0,
            mb_per_s: 2.048,
            p50_ms: 1.5,
            p95_ms: 2.0,
            p99_ms: 3.0,
            max_ms: 3.0,
            cpu_us_per_key: 4.25,
            commands_per_batch: Some(2.0),
            frames_per_batch: None,
            syscalls_per_batch: Some(7.5),
            server_cpu_us_per_key: None,
        }
    }

    #[test]
    fn json_round_trip_and_csv_columns() {
        let plan = Plan::example();
        let r = Record::new(
            &plan,
            "slotline[epoll]",
            "get",
            Phase::Put,
            Some(KeyPattern::Fresh),
            Some(2),
            &sample(),
        );
        let j = r.to_json();
        let back = Record::from_json(&j).expect("parses");
        assert_eq!(back.to_json(), j);
        assert!(j.contains("\"p99_is_max\":true"), "{j}");
        assert!(j.contains("\"frames_per_batch\":null"), "{j}");
        assert!(j.contains(&format!("\"commit\":\"{GIT_COMMIT}\"")));
        let header = Record::csv_header();
        let row = r.to_csv();
        assert_eq!(header.split(',').count(), row.split(',').count());
        assert!(header.starts_with("bench,kind,run,peer,phase,keys,value_size"));
        assert!(row.starts_with("slotline,run,2,slotline[epoll],put,fresh,2048,"));
    }

    #[test]
    fn reads_older_lines_with_spaces() {
        let old = r#"{"bench": "slotline", "kind": "run", "run": 1, "peer": "naive", "phase": "get", "value_size": 1048576, "batch": 16, "mb_per_s": 631.3, "p99_ms": 69.7, "binary": "old", "x": [1, {"y": 2}]}"#;
        let r = Record::from_json(old).expect("parses");
        assert_eq!(r.peer, "naive");
        assert_eq!(r.value_size, 1 << 20);
        assert_eq!(r.s.mb_per_s, 631.3);
        assert!(r.s.max_ms.is_nan());
        assert_eq!(r.commit, "unknown");
        assert!(Record::from_json("PUT  keys  keys/s").is_none());
        assert!(Record::from_json("{\"bench\":\"other\"}").is_none());
    }
}
