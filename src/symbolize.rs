//! Kernel addresses to `function+0xoff`, from /proc/kallsyms: a sorted address table searched by
//! bisection. The text is read once per process ([`crate::attach::kallsyms`]); reading it takes the kernel
//! ~50 ms on our 6.18 host and seconds in an emulated guest, so a tool that may need it starts the read on
//! a thread at launch ([`Symbolizer::start`]), in parallel with its BPF load, and parses it only when the
//! first address must be named: "ready" and the first rows never wait for it longer than they must.

use std::sync::OnceLock;
use std::thread::JoinHandle;

/// The kernel's symbols in the kallsyms text itself: the core kernel's lines come first, sorted by
/// address (scripts/kallsyms sorts them), and are searched by bisection on the text's bytes (a lookup reads
/// ~25 lines; nothing is parsed up front: the tests run an unoptimized build in emulated guests, where
/// parsing 122,000 lines into a table took seconds). The lines after them (modules, BPF programs: they
/// carry a `\t[module]` tail) are parsed into a sorted table at the first address outside the core.
pub struct Kallsyms<'a> {
    text: &'a str,
    /// where the first line with a tab (a module's, a BPF program's) begins: the core kernel's lines end
    core_end: usize,
    tail: OnceLock<Vec<(u64, &'a str)>>,
}

/// Beyond this distance from the nearest symbol below it, an address is not named after it (an address
/// in memory kallsyms does not list, e.g. a BPF program's when bpf_jit_kallsyms is off).
const MAX_OFFSET: u64 = 1 << 20;

/// One kallsyms line: (address, type, name); None for a line that is not `ADDR TYPE NAME...`.
fn parse_line(line: &str) -> Option<(u64, u8, &str)> {
    let (addr, rest) = line.split_once(' ')?;
    let addr = u64::from_str_radix(addr, 16).ok()?;
    let ty = *rest.as_bytes().first()?;
    let name = rest.get(2..)?;
    Some((addr, ty, name.split('\t').next().unwrap_or(name)))
}

fn is_code(ty: u8) -> bool {
    matches!(ty, b't' | b'T' | b'w' | b'W')
}

impl<'a> Kallsyms<'a> {
    pub fn parse(text: &'a str) -> Kallsyms<'a> {
        let b = text.as_bytes();
        // the lines without a tab come first: bisect for the first with one
        let (mut lo, mut hi) = (0, b.len());
        while lo < hi {
            let (s, e) = line_around(b, lo + (hi - lo) / 2);
            if b[s..e].contains(&b'\t') {
                hi = s;
            } else {
                lo = e + 1;
            }
        }
        Kallsyms {
            text,
            core_end: lo.min(b.len()),
            tail: OnceLock::new(),
        }
    }

    /// No addresses (hidden: no CAP_SYSLOG, kptr_restrict) or no text.
    pub fn is_empty(&self) -> bool {
        self.text
            .lines()
            .take(16)
            .all(|l| parse_line(l).is_none_or(|(a, _, _)| a == 0))
    }

    /// The core kernel's code symbol at or below addr: (its address, name).
    fn core_symbol(&self, addr: u64) -> Option<(u64, &'a str)> {
        let b = self.text.as_bytes();
        let (mut lo, mut hi, mut best) = (0, self.core_end, None);
        while lo < hi {
            let (s, e) = line_around(b, lo + (hi - lo) / 2);
            match parse_line(&self.text[s..e]) {
                Some((a, _, _)) if a <= addr => {
                    best = Some(s);
                    lo = e + 1;
                }
                Some(_) => hi = s,
                None => lo = e + 1,
            }
        }
        // the nearest code symbol at or before that line (data symbols sit between sections)
        let mut s = best?;
        for _ in 0..64 {
            let e = s + memchr::memchr(b'\n', &b[s..]).unwrap_or(b.len() - s);
            if let Some((a, ty, name)) = parse_line(&self.text[s..e])
                && is_code(ty)
                && a != 0
            {
                return Some((a, name));
            }
            if s == 0 {
                return None;
            }
            s = line_around(b, s - 1).0;
        }
        None
    }

    /// A code symbol of the lines after the core kernel's (modules, BPF programs) at or below addr.
    fn tail_symbol(&self, addr: u64) -> Option<(u64, &'a str)> {
        let tail = self.tail.get_or_init(|| {
            let mut v: Vec<(u64, &'a str)> = self.text[self.core_end..]
                .lines()
                .filter_map(parse_line)
                .filter(|&(a, ty, _)| is_code(ty) && a != 0)
                .map(|(a, _, n)| (a, n))
                .collect();
            v.sort_unstable_by_key(|&(a, _)| a);
            v
        });
        let i = tail.partition_point(|&(a, _)| a <= addr);
        i.checked_sub(1).map(|i| tail[i])
    }

    /// `function+0xoff` (BCC's `ksym(addr, show_offset=True)`), or `0xADDR` when no symbol covers it.
    pub fn name(&self, addr: u64) -> String {
        let near = |s: Option<(u64, &'a str)>| s.filter(|&(at, _)| addr - at < MAX_OFFSET);
        match near(self.core_symbol(addr)).or_else(|| near(self.tail_symbol(addr))) {
            Some((at, name)) => format!("{name}+0x{:x}", addr - at),
            None => format!("0x{addr:x}"),
        }
    }
}

/// The line of `b` that holds byte `pos`: [start, end), end at its newline (or the end of the text).
fn line_around(b: &[u8], pos: usize) -> (usize, usize) {
    let pos = pos.min(b.len().saturating_sub(1));
    let start = memchr::memrchr(b'\n', &b[..pos]).map_or(0, |n| n + 1);
    let end = memchr::memchr(b'\n', &b[pos..]).map_or(b.len(), |n| pos + n);
    (start, end)
}

/// Kallsyms read on a thread from the moment the tool starts (in parallel with its BPF load).
pub struct Symbolizer {
    reader: std::sync::Mutex<Option<JoinHandle<Kallsyms<'static>>>>,
    table: OnceLock<Kallsyms<'static>>,
}

impl Symbolizer {
    /// Starts reading /proc/kallsyms on a thread.
    pub fn start() -> Symbolizer {
        let reader = std::thread::spawn(|| {
            let k = Kallsyms::parse(crate::attach::kallsyms().unwrap_or(""));
            crate::cli::debug(format_args!(
                "kallsyms: read {:.1} ms after start",
                crate::runtime::since_start_ms()
            ));
            if k.is_empty() {
                crate::cli::say(format_args!(
                    "sockray: /proc/kallsyms shows this user no addresses: kernel stack frames are shown \
                     as addresses, not names (names need CAP_SYSLOG, or root, and kernel.kptr_restrict \
                     below 2)"
                ));
            }
            k
        });
        Symbolizer {
            reader: std::sync::Mutex::new(Some(reader)),
            table: OnceLock::new(),
        }
    }

    /// Waits until the table is there, or `stop` says to give up. A tool whose rows carry stacks says it
    /// is ready only then: its rows are live from that moment on (in an emulated guest the table outlasts
    /// the BPF load by seconds, and every row would wait for it).
    pub fn wait(&self, stop: impl Fn() -> bool) {
        let finished =
            |r: &Option<JoinHandle<Kallsyms<'static>>>| r.as_ref().is_none_or(|t| t.is_finished());
        while !stop() {
            match self.reader.lock() {
                Ok(r) if !finished(&r) => {}
                _ => break,
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if self
            .reader
            .lock()
            .is_ok_and(|r| finished(&r) && r.is_some())
        {
            self.table();
        }
    }

    /// Is the table there ([`Symbolizer::table`] returns at once)?
    pub fn is_ready(&self) -> bool {
        self.table.get().is_some()
    }

    /// The table (waits for the thread the first time).
    pub fn table(&self) -> &Kallsyms<'static> {
        self.table.get_or_init(|| {
            let reader = self.reader.lock().ok().and_then(|mut r| r.take());
            reader
                .and_then(|t| t.join().ok())
                .unwrap_or_else(|| Kallsyms::parse(""))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "0000000000000000 A fixed_percpu_data\n\
        ffffffff81000000 T _stext\n\
        ffffffff81000800 T kfree_skb_reason\n\
        ffffffff81001000 t tcp_v4_rcv\n\
        ffffffff81002000 D some_data\n\
        ffffffffc0002000 t mod_fn\t[veth]\n\
        ffffffffc0001000 t bpf_prog_abc_tcpdrop\t[bpf]\n";

    #[test]
    fn names_with_offsets() {
        let k = Kallsyms::parse(TEXT);
        assert!(!k.is_empty());
        assert_eq!(k.name(0xffffffff81001004), "tcp_v4_rcv+0x4");
        assert_eq!(k.name(0xffffffff81000800), "kfree_skb_reason+0x0");
        assert_eq!(k.name(0xffffffff810007ff), "_stext+0x7ff");
        // past a data symbol: the code symbol before it
        assert_eq!(k.name(0xffffffff81002010), "tcp_v4_rcv+0x1010");
        assert_eq!(k.name(0xffffffffc0001010), "bpf_prog_abc_tcpdrop+0x10");
        assert_eq!(k.name(0xffffffffc0002abc), "mod_fn+0xabc");
        // below every symbol, or far past the last one: the address itself
        assert_eq!(k.name(0x1000), "0x1000");
        assert_eq!(k.name(0xffffffffc0002000 + (2 << 20)), "0xffffffffc0202000");
    }

    #[test]
    fn hidden_addresses_make_an_empty_table() {
        let k = Kallsyms::parse("0000000000000000 T _stext\n0000000000000000 t tcp_v4_rcv\n");
        assert!(k.is_empty());
        assert_eq!(k.name(0xffffffff81000000), "0xffffffff81000000");
        assert!(Kallsyms::parse("").is_empty());
        assert_eq!(Kallsyms::parse("").name(0x10), "0x10");
    }

    /// Against this machine's kallsyms (when it shows addresses): bisection names every code symbol's
    /// addresses as a sorted table of all of them does.
    #[test]
    fn bisection_agrees_with_a_full_table() {
        let Ok(text) = std::fs::read_to_string("/proc/kallsyms") else {
            return;
        };
        let k = Kallsyms::parse(&text);
        if k.is_empty() {
            return;
        }
        let mut all: Vec<(u64, &str)> = text
            .lines()
            .filter_map(parse_line)
            .filter(|&(a, ty, _)| is_code(ty) && a != 0)
            .map(|(a, _, n)| (a, n))
            .collect();
        all.sort_by_key(|&(a, _)| a);
        for (i, &(a, _)) in all.iter().enumerate().step_by(97) {
            for addr in [a, a + 1, a + 0x40] {
                let j = all.partition_point(|&(x, _)| x <= addr) - 1;
                let got = k.name(addr);
                // aliases (several names at one address) may be named by any of them
                let (at, _) = all[j];
                let ok = all[..=j]
                    .iter()
                    .rev()
                    .take_while(|&&(x, _)| x == at)
                    .any(|&(_, n)| got == format!("{n}+0x{:x}", addr - at));
                assert!(ok, "symbol {i}: {addr:x} named {got}, want {:?}", all[j]);
            }
        }
    }
}
