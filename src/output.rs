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
}

impl Value {
    fn text(&self) -> String {
        match self {
            Value::U(v) => v.to_string(),
            Value::I(v) => v.to_string(),
            Value::F(v, p) => format!("{v:.p$}"),
            Value::S(s) => s.clone(),
            Value::Ip(a) => a.to_string(),
            Value::Hex(v) => format!("{v:x}"),
            Value::Null => String::new(),
        }
    }

    fn json(&self) -> String {
        match self {
            Value::U(v) => v.to_string(),
            Value::I(v) => v.to_string(),
            Value::F(v, p) if v.is_finite() => format!("{v:.p$}"),
            Value::F(..) => "null".into(),
            Value::S(s) => serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()),
            Value::Ip(a) => format!("\"{a}\""),
            Value::Hex(v) => format!("\"0x{v:x}\""),
            Value::Null => "null".into(),
        }
    }
}

/// A record: field names (stable snake_case, used as JSON keys) and values, in order.
pub type Fields = Vec<(&'static str, Value)>;

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
}

/// True for the error a write to a closed pipe gives: the reader went away, stop quietly.
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn pad(text: &str, col: &Col) -> String {
    let text: String = if col.trunc {
        text.chars().take(col.width).collect()
    } else {
        text.to_string()
    };
    if col.left {
        format!("{text:<w$}", w = col.width)
    } else {
        format!("{text:>w$}", w = col.width)
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
        }
    }

    fn time_cols(&self) -> Vec<Col> {
        let mut v = Vec::new();
        if self.time.hms {
            v.push(Col::left("TIME", "", 8));
        }
        if self.time.secs {
            v.push(Col::left("TIME(s)", "", 9));
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
            Mode::Table => cols
                .iter()
                .map(|c| pad(c.title, c))
                .collect::<Vec<_>>()
                .join(" "),
        };
        writeln!(self.out, "{}", line.trim_end())?;
        // the header says "attached": out at once
        self.out.flush()
    }

    /// Prints one event. `ktime_ns` is its bpf_ktime_get_ns() stamp (None for summaries).
    pub fn event(&mut self, ktime_ns: Option<u64>, fields: &Fields) -> io::Result<()> {
        let mut time_vals = Vec::new();
        if let Some(ts) = ktime_ns {
            let first = *self.first_ts.get_or_insert(ts);
            if self.time.hms {
                time_vals.push(hms(self.clock.wall_ns(ts)));
            }
            if self.time.secs {
                let d = self.secs_decimals;
                time_vals.push(format!("{:.d$}", ts.saturating_sub(first) as f64 / 1e9));
            }
        }
        let get = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.text())
                .unwrap_or_default()
        };
        let line = match self.mode {
            Mode::Json => {
                let mut parts = Vec::with_capacity(fields.len() + 1);
                if let Some(ts) = ktime_ns {
                    parts.push(format!("\"time_ns\":{}", self.clock.wall_ns(ts)));
                }
                parts.extend(fields.iter().map(|(k, v)| format!("\"{k}\":{}", v.json())));
                format!("{{{}}}", parts.join(","))
            }
            Mode::Csv => time_vals
                .into_iter()
                .chain(
                    self.cols
                        .iter()
                        .filter(|c| !c.key.is_empty())
                        .map(|c| get(c.key)),
                )
                .collect::<Vec<_>>()
                .join(","),
            Mode::Table => {
                let time_cols = self.time_cols();
                let mut cells: Vec<String> = time_vals
                    .iter()
                    .zip(&time_cols)
                    .map(|(v, c)| pad(v, c))
                    .collect();
                for c in &self.cols {
                    let text = if c.key.is_empty() {
                        c.title.to_string()
                    } else {
                        get(c.key)
                    };
                    cells.push(pad(&text, c));
                }
                cells.join(" ").trim_end().to_string()
            }
        };
        writeln!(self.out, "{line}")
    }

    /// A JSON record that is not an event (e.g. `{"lost": N}`); ignored outside JSON mode.
    pub fn json_record(&mut self, fields: &Fields) -> io::Result<()> {
        if self.mode != Mode::Json {
            return Ok(());
        }
        let parts: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("\"{k}\":{}", v.json()))
            .collect();
        writeln!(self.out, "{{{}}}", parts.join(","))
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn closed_pipe_detection() {
        let e = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(is_closed_pipe(&e));
        assert!(!is_closed_pipe(&anyhow::anyhow!("other")));
    }
}
