//! Output shared by every tool: BCC's columns (default and `-w` wide), CSV (`-s`), and NDJSON
//! (`--json`), with the optional time columns `-T` (HH:MM:SS) and `-t` (seconds since the first event).
//! Writes are batched per ring-buffer poll; a closed pipe (`| head`) ends the tool cleanly (see [`is_closed_pipe`]).

use std::io::{self, Write};
use std::net::IpAddr;

use crate::format::{Clock, hms};

/// One field of an event.
#[derive(Clone, Debug)]
pub enum Value {
    U(u64),
    /// a signed integer (e.g. a syscall's return value, -errno)
    I(i64),
    /// a float printed with this many decimals
    F(f64, usize),
    S(String),
    Ip(IpAddr),
    /// printed as lower-case hex without 0x in columns, "0x…" string in JSON (kernel addresses)
    Hex(u64),
    /// not known: empty in columns, null in JSON
    Null,
    /// JSON text written as is (an array or object, e.g. a histogram's buckets); as is in columns too
    Json(String),
}

impl Value {
    #[cfg(test)]
    fn text(&self) -> String {
        let mut s = String::new();
        self.write_text(&mut s);
        s
    }

    #[cfg(test)]
    fn json(&self) -> String {
        let mut s = String::new();
        self.write_json(&mut s);
        s
    }

    /// Appends the column form of the value.
    fn write_text(&self, out: &mut String) {
        use std::fmt::Write as _;
        match self {
            Value::U(v) => push_int(out, *v),
            Value::I(v) => push_int(out, *v),
            Value::F(v, p) => {
                let _ = write!(out, "{v:.p$}");
            }
            Value::S(s) => out.push_str(s),
            Value::Ip(a) => push_ip(out, a),
            Value::Hex(v) => push_hex(out, *v),
            Value::Null => {}
            Value::Json(j) => out.push_str(j),
        }
    }

    /// Appends the JSON form of the value.
    fn write_json(&self, out: &mut String) {
        use std::fmt::Write as _;
        match self {
            Value::U(v) => push_int(out, *v),
            Value::I(v) => push_int(out, *v),
            Value::F(v, p) if v.is_finite() => {
                let _ = write!(out, "{v:.p$}");
            }
            Value::F(..) | Value::Null => out.push_str("null"),
            Value::S(s) => push_json_str(out, s),
            Value::Ip(a) => {
                out.push('"');
                push_ip(out, a);
                out.push('"');
            }
            Value::Hex(v) => {
                out.push_str("\"0x");
                push_hex(out, *v);
                out.push('"');
            }
            Value::Json(j) => out.push_str(j),
        }
    }
}

// Every event goes through these: a tracer prints thousands of lines a second under load, and its CPU
// time competes with the traffic it traces (core::fmt was a third of tcplife's user-space time).

/// Appends an integer in decimal.
fn push_int(out: &mut String, v: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// Appends lower-case hex, no prefix.
fn push_hex(out: &mut String, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = DIGITS[(v & 15) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend(buf[i..].iter().map(|&b| b as char));
}

/// Appends an address as std prints it (dotted quad; RFC 5952 for IPv6).
fn push_ip(out: &mut String, a: &IpAddr) {
    match a {
        IpAddr::V4(v4) => {
            for (k, octet) in v4.octets().iter().enumerate() {
                if k > 0 {
                    out.push('.');
                }
                push_int(out, *octet);
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends a JSON string literal: printable ASCII without quotes or backslashes as is (every comm and
/// name in practice), anything else escaped by serde_json.
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
    }
}

/// A record: field names (stable snake_case, used as JSON keys) and values, in order.
pub type Fields = Vec<(&'static str, Value)>;

/// Appends `"key":value` for each field, comma separated (the inside of a JSON object).
fn push_json_fields(out: &mut String, fields: &Fields) {
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(k);
        out.push_str("\":");
        v.write_json(out);
    }
}

/// One column of the table form.
#[derive(Clone, Copy, Debug)]
pub struct Col {
    pub title: &'static str,
    /// field it shows; "" for a literal column (e.g. BCC's "->")
    pub key: &'static str,
    pub width: usize,
    pub left: bool,
    /// cut values longer than width (BCC's `%-10.10s`)
    pub trunc: bool,
}

impl Col {
    pub const fn left(title: &'static str, key: &'static str, width: usize) -> Col {
        Col {
            title,
            key,
            width,
            left: true,
            trunc: false,
        }
    }
    pub const fn right(title: &'static str, key: &'static str, width: usize) -> Col {
        Col {
            title,
            key,
            width,
            left: false,
            trunc: false,
        }
    }
    /// left-aligned and cut at width
    pub const fn cut(title: &'static str, key: &'static str, width: usize) -> Col {
        Col {
            title,
            key,
            width,
            left: true,
            trunc: true,
        }
    }
    /// a literal between columns, shown in tables only (not CSV, not JSON)
    pub const fn literal(text: &'static str) -> Col {
        Col {
            title: text,
            key: "",
            width: 0,
            left: true,
            trunc: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Table,
    Csv,
    Json,
}

/// Which time columns precede the tool's own (BCC: `-T` TIME, `-t` TIME(s)).
#[derive(Clone, Copy, Debug, Default)]
pub struct TimeCols {
    pub hms: bool,
    pub secs: bool,
}

pub struct Printer {
    mode: Mode,
    cols: Vec<Col>,
    time: TimeCols,
    clock: Clock,
    first_ts: Option<u64>,
    /// decimals of the TIME(s) column (BCC: 6 in most tools, 3 in tcpconnect/tcpconnlat)
    secs_decimals: usize,
    out: Box<dyn Write>,
    /// reused between events: no allocation per line
    line: String,
    cell: String,
}

/// True for the error a write to a closed pipe gives: the reader went away, stop quietly.
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
fn pad(text: &str, col: &Col) -> String {
    let mut s = String::new();
    push_padded(&mut s, text, col);
    s
}

/// Appends `text` in the column's width and alignment (printf's `%-Ns`, `%Ns`, `%-N.Ns`).
fn push_padded(out: &mut String, text: &str, col: &Col) {
    let text = match (col.trunc, text.char_indices().nth(col.width)) {
        (true, Some((cut, _))) => &text[..cut],
        _ => text,
    };
    let fill = col.width.saturating_sub(text.chars().count());
    if !col.left {
        out.extend(std::iter::repeat_n(' ', fill));
    }
    out.push_str(text);
    if col.left {
        out.extend(std::iter::repeat_n(' ', fill));
    }
}

thread_local! {
    static BATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Stdout, buffered until the event loop has handled what one ring-buffer poll returned: a burst of
/// events costs one write() instead of one per line, and every line still reaches a pipe (`| grep`)
/// within one poll interval (src/runtime.rs).
struct BatchedStdout;

impl Write for BatchedStdout {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let full = BATCH.with(|v| {
            let mut v = v.borrow_mut();
            v.extend_from_slice(b);
            v.len() >= 1 << 16
        });
        if full {
            flush_batch()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        flush_batch()
    }
}

impl Drop for BatchedStdout {
    fn drop(&mut self) {
        let _ = flush_batch();
    }
}

/// When stdout is a pipe, makes its buffer 1 MiB (the kernel's default limit for a process): a reader
/// that falls behind for a moment (a test harness, `| grep` on a busy machine) then holds up the tool,
/// and so the reading of its ring buffer, only after ~8,000 lines instead of ~500.
pub fn widen_stdout_pipe() {
    // SAFETY: fstat and fcntl on fd 1 with a valid stat buffer; failures change nothing.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(1, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO {
            libc::fcntl(1, libc::F_SETPIPE_SZ, 1 << 20);
        }
    }
}

/// Is stdout a terminal (a screen to redraw each interval)?
pub fn stdout_is_tty() -> bool {
    // SAFETY: isatty on fd 1.
    unsafe { libc::isatty(1) == 1 }
}

/// A block of text (an interval's table or histograms, a count table at exit) written to stdout at once
/// and flushed: a person watching sees it whole, on its tick.
pub fn print_block(text: &str) -> io::Result<()> {
    use io::Write as _;
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Writes what the printers have buffered to stdout.
pub fn flush_batch() -> io::Result<()> {
    let pending = BATCH.with(|v| std::mem::take(&mut *v.borrow_mut()));
    if pending.is_empty() {
        return Ok(());
    }
    let mut out = io::stdout().lock();
    out.write_all(&pending)?;
    out.flush()
}

impl Printer {
    /// A printer to stdout, written out after each batch of events (see [`flush_batch`]).
    pub fn new(mode: Mode, cols: Vec<Col>, time: TimeCols) -> Printer {
        Self::to_writer(mode, cols, time, Box::new(BatchedStdout))
    }

    /// Decimals of the TIME(s) column (6 unless set).
    pub fn with_secs_decimals(mut self, decimals: usize) -> Printer {
        self.secs_decimals = decimals;
        self
    }

    pub fn to_writer(mode: Mode, cols: Vec<Col>, time: TimeCols, out: Box<dyn Write>) -> Printer {
        Printer {
            mode,
            cols,
            time,
            clock: Clock::new(),
            first_ts: None,
            secs_decimals: 6,
            out,
            line: String::new(),
            cell: String::new(),
        }
    }

    fn time_cols(&self) -> Vec<Col> {
        let mut v = Vec::new();
        if self.time.hms {
            v.push(Col::left("TIME", "", 8));
        }
        if self.time.secs {
            // BCC's %-9.6f / %-9.3f, and %-14.9f with nanoseconds (sofdsnoop)
            let width = if self.secs_decimals > 6 {
                self.secs_decimals + 5
            } else {
                9
            };
            v.push(Col::left("TIME(s)", "", width));
        }
        v
    }

    /// The header line (tables and CSV; nothing for JSON).
    pub fn header(&mut self) -> io::Result<()> {
        let cols: Vec<Col> = self
            .time_cols()
            .into_iter()
            .chain(self.cols.iter().copied())
            .collect();
        let line = match self.mode {
            Mode::Json => return Ok(()),
            Mode::Csv => cols
                .iter()
                .filter(|c| !c.key.is_empty() || c.width > 0)
                .map(|c| c.title)
                .collect::<Vec<_>>()
                .join(","),
            Mode::Table => {
                let mut line = String::new();
                for c in &cols {
                    push_padded(&mut line, c.title, c);
                    line.push(' ');
                }
                line
            }
        };
        writeln!(self.out, "{}", line.trim_end())?;
        // the header says "attached": out at once
        self.out.flush()
    }

    /// Prints one event. `ktime_ns` is its bpf_ktime_get_ns() stamp (None for summaries).
    pub fn event(&mut self, ktime_ns: Option<u64>, fields: &Fields) -> io::Result<()> {
        let mut line = std::mem::take(&mut self.line);
        let mut cell = std::mem::take(&mut self.cell);
        line.clear();
        let get = |key: &str, cell: &mut String| {
            cell.clear();
            if let Some((_, v)) = fields.iter().find(|(k, _)| *k == key) {
                v.write_text(cell);
            }
        };
        // the time columns' text, in the order of time_cols()
        let mut times: Vec<String> = Vec::new();
        if let Some(ts) = ktime_ns
            && self.mode != Mode::Json
        {
            let first = *self.first_ts.get_or_insert(ts);
            if self.time.hms {
                times.push(hms(self.clock.wall_ns(ts)));
            }
            if self.time.secs {
                let d = self.secs_decimals;
                times.push(format!("{:.d$}", ts.saturating_sub(first) as f64 / 1e9));
            }
        }
        match self.mode {
            Mode::Json => {
                line.push('{');
                if let Some(ts) = ktime_ns {
                    self.first_ts.get_or_insert(ts);
                    line.push_str("\"time_ns\":");
                    push_int(&mut line, self.clock.wall_ns(ts));
                    if !fields.is_empty() {
                        line.push(',');
                    }
                }
                push_json_fields(&mut line, fields);
                line.push('}');
            }
            Mode::Csv => {
                for t in &times {
                    line.push_str(t);
                    line.push(',');
                }
                for c in self.cols.iter().filter(|c| !c.key.is_empty()) {
                    get(c.key, &mut cell);
                    line.push_str(&cell);
                    line.push(',');
                }
                if line.ends_with(',') {
                    line.pop();
                }
            }
            Mode::Table => {
                for (c, t) in self.time_cols().iter().zip(&times) {
                    push_padded(&mut line, t, c);
                    line.push(' ');
                }
                for c in &self.cols {
                    if c.key.is_empty() {
                        push_padded(&mut line, c.title, c);
                    } else {
                        get(c.key, &mut cell);
                        push_padded(&mut line, &cell, c);
                    }
                    line.push(' ');
                }
                line.truncate(line.trim_end().len());
            }
        }
        line.push('\n');
        let r = self.out.write_all(line.as_bytes());
        self.line = line;
        self.cell = cell;
        r
    }

    /// A JSON record that is not an event (e.g. `{"lost": N}`); ignored outside JSON mode.
    pub fn json_record(&mut self, fields: &Fields) -> io::Result<()> {
        if self.mode != Mode::Json {
            return Ok(());
        }
        let mut line = String::from("{");
        push_json_fields(&mut line, fields);
        writeln!(self.out, "{line}}}")
    }

    /// Lines that follow an event's row in the table form (e.g. tcpdrop's kernel stack, one frame a
    /// line, as BCC prints it), written as they are; ignored in JSON.
    pub fn table_lines(&mut self, text: &str) -> io::Result<()> {
        if self.mode == Mode::Json {
            return Ok(());
        }
        self.out.write_all(text.as_bytes())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_formatting_matches_std() {
        let mut samples = vec![0u64, 1, 9, 10, 255, 4096, u32::MAX as u64, u64::MAX];
        samples.extend((0..64).map(|k| 1u64 << k));
        samples.extend((0..64).map(|k| (1u64 << k) - 1));
        for v in samples {
            let (mut a, mut b) = (String::new(), String::new());
            push_int(&mut a, v);
            push_hex(&mut b, v);
            assert_eq!(a, v.to_string());
            assert_eq!(b, format!("{v:x}"));
            let i = v as i64;
            let mut c = String::new();
            push_int(&mut c, i);
            assert_eq!(c, i.to_string());
        }
        for a in [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "10.20.0.3",
            "::",
            "::1",
            "fe80::1:2",
            "2001:db8::ff00:42:8329",
            "::ffff:127.0.0.1",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            let mut s = String::new();
            push_ip(&mut s, &ip);
            assert_eq!(s, ip.to_string());
        }
        for s in [
            "curl",
            "",
            "a b",
            "q\"uote",
            "back\\slash",
            "tab\t",
            "ünï",
            "\u{1}",
        ] {
            let mut out = String::new();
            push_json_str(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn pads_and_cuts_like_printf() {
        assert_eq!(pad("curl", &Col::left("COMM", "comm", 6)), "curl  ");
        assert_eq!(
            pad("python3.11-long", &Col::cut("COMM", "comm", 10)),
            "python3.11"
        );
        assert_eq!(pad("12", &Col::right("TX_KB", "tx", 5)), "   12");
        assert_eq!(pad("123456", &Col::left("PID", "pid", 5)), "123456");
    }

    #[test]
    fn json_values() {
        assert_eq!(Value::S("a\"b".into()).json(), "\"a\\\"b\"");
        assert_eq!(Value::F(1.23456, 3).json(), "1.235");
        assert_eq!(Value::F(f64::NAN, 3).json(), "null");
        assert_eq!(Value::Hex(0xffff8881).json(), "\"0xffff8881\"");
        assert_eq!(Value::Hex(0xffff8881).text(), "ffff8881");
        assert_eq!(Value::Ip("::1".parse().unwrap()).json(), "\"::1\"");
        let odd = "tab\there \\ \"q\" nl\n \u{1} ü";
        let j = Value::S(odd.into()).json();
        assert_eq!(j, "\"tab\\there \\\\ \\\"q\\\" nl\\n \\u0001 ü\"");
        assert_eq!(serde_json::from_str::<String>(&j).unwrap(), odd);
    }

    /// A Write that keeps what was written, for looking at it after the printer is done.
    #[derive(Clone, Default)]
    struct Shared(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn render(mode: Mode, time: TimeCols) -> String {
        let buf = Shared::default();
        let cols = vec![
            Col::left("PID", "pid", 5),
            Col::cut("COMM", "comm", 6),
            Col::left("OLD", "old", 5),
            Col::literal("->"),
            Col::left("NEW", "new", 5),
            Col::right("KB", "kb", 4),
            Col::left("MS", "ms", 0),
        ];
        let mut p = Printer::to_writer(mode, cols, time, Box::new(buf.clone()));
        p.header().unwrap();
        let f: Fields = vec![
            ("pid", Value::U(42)),
            ("comm", Value::S("python3.11".into())),
            ("old", Value::S("CLOSE".into())),
            ("new", Value::S("LISTEN".into())),
            ("kb", Value::U(7)),
            ("ms", Value::F(1.5, 2)),
            ("extra", Value::S("x".into())),
        ];
        p.event(Some(5_000_000_000), &f).unwrap();
        p.event(Some(6_500_000_000), &f).unwrap();
        p.json_record(&vec![("lost", Value::U(0))]).unwrap();
        String::from_utf8(buf.0.borrow().clone()).unwrap()
    }

    #[test]
    fn table_rows() {
        let out = render(Mode::Table, TimeCols::default());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "PID   COMM   OLD   -> NEW     KB MS");
        assert_eq!(lines[1], "42    python CLOSE -> LISTEN    7 1.50");
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn csv_rows_skip_literals_and_add_times() {
        let out = render(
            Mode::Csv,
            TimeCols {
                hms: false,
                secs: true,
            },
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "TIME(s),PID,COMM,OLD,NEW,KB,MS");
        assert_eq!(lines[1], "0.000000,42,python3.11,CLOSE,LISTEN,7,1.50");
        assert_eq!(lines[2], "1.500000,42,python3.11,CLOSE,LISTEN,7,1.50");
    }

    #[test]
    fn json_has_every_field_and_lost_record() {
        let out = render(
            Mode::Json,
            TimeCols {
                hms: true,
                secs: true,
            },
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["pid"], 42);
        assert_eq!(v["comm"], "python3.11");
        assert_eq!(v["extra"], "x");
        assert_eq!(v["ms"], 1.5);
        assert!(v["time_ns"].as_u64().unwrap() > 0);
        assert_eq!(lines[2], "{\"lost\":0}");
    }

    #[test]
    fn secs_column_decimals() {
        let buf = Shared::default();
        let cols = vec![Col::left("PID", "pid", 5)];
        let time = TimeCols {
            hms: false,
            secs: true,
        };
        let mut p = Printer::to_writer(Mode::Table, cols, time, Box::new(buf.clone()))
            .with_secs_decimals(3);
        let f: Fields = vec![("pid", Value::U(1))];
        p.event(Some(1_000_000_000), &f).unwrap();
        p.event(Some(2_234_567_890), &f).unwrap();
        let out = String::from_utf8(buf.0.borrow().clone()).unwrap();
        assert_eq!(out, "0.000     1\n1.235     1\n");
        // nanoseconds: BCC's %-14.9f (sofdsnoop)
        let buf = Shared::default();
        let cols = vec![Col::left("PID", "pid", 5)];
        let mut p = Printer::to_writer(Mode::Table, cols, time, Box::new(buf.clone()))
            .with_secs_decimals(9);
        p.header().unwrap();
        p.event(Some(1_000_000_000), &f).unwrap();
        p.event(Some(2_234_567_890), &f).unwrap();
        let out = String::from_utf8(buf.0.borrow().clone()).unwrap();
        assert_eq!(
            out,
            "TIME(s)        PID\n0.000000000    1\n1.234567890    1\n"
        );
    }

    #[test]
    fn closed_pipe_detection() {
        let e = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(is_closed_pipe(&e));
        assert!(!is_closed_pipe(&anyhow::anyhow!("other")));
    }
}
