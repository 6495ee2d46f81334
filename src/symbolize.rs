//! Kernel addresses to `function+0xoff`, from /proc/kallsyms: a sorted address table searched by
//! bisection. The text is read once per process ([`crate::attach::kallsyms`]); reading it takes the kernel
//! ~50 ms on our 6.18 host and seconds in an emulated guest, so a tool that may need it starts the read on
//! a thread at launch ([`Symbolizer::start`]), in parallel with its BPF load, and parses it only when the
//! first address must be named: "ready" and the first rows never wait for it longer than they must.

use std::sync::OnceLock;
use std::thread::JoinHandle;

/// The kernel's symbols, sorted by address.
pub struct Kallsyms {
    addrs: Vec<u64>,
    names: Vec<Box<str>>,
}

/// Beyond this distance from the nearest symbol below it, an address is not named after it (an address
/// in memory kallsyms does not list, e.g. a BPF program's when bpf_jit_kallsyms is off).
const MAX_OFFSET: u64 = 1 << 20;

impl Kallsyms {
    /// Parses /proc/kallsyms text (`ADDR TYPE NAME [MODULE]` lines); only code symbols (t, T, w, W).
    /// Empty when every address is zero (addresses hidden: no CAP_SYSLOG, kptr_restrict).
    pub fn parse(text: &str) -> Kallsyms {
        let mut syms: Vec<(u64, &str)> = Vec::with_capacity(text.len() / 40);
        for line in text.lines() {
            let mut f = line.split_ascii_whitespace();
            let (Some(addr), Some(ty), Some(name)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            if !matches!(ty, "t" | "T" | "w" | "W") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr != 0 {
                syms.push((addr, name));
            }
        }
        syms.sort_unstable_by_key(|&(a, _)| a);
        Kallsyms {
            addrs: syms.iter().map(|&(a, _)| a).collect(),
            names: syms.iter().map(|&(_, n)| n.into()).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// `function+0xoff` (BCC's `ksym(addr, show_offset=True)`), or `0xADDR` when no symbol covers it.
    pub fn name(&self, addr: u64) -> String {
        let i = self.addrs.partition_point(|&a| a <= addr);
        match i.checked_sub(1) {
            Some(i) if addr - self.addrs[i] < MAX_OFFSET => {
                format!("{}+0x{:x}", self.names[i], addr - self.addrs[i])
            }
            _ => format!("0x{addr:x}"),
        }
    }
}

/// Kallsyms read on a thread from the moment the tool starts, parsed at the first use.
pub struct Symbolizer {
    reader: std::sync::Mutex<Option<JoinHandle<()>>>,
    table: OnceLock<Kallsyms>,
}

impl Symbolizer {
    /// Starts reading /proc/kallsyms on a thread.
    pub fn start() -> Symbolizer {
        let reader = std::thread::spawn(|| {
            let _ = crate::attach::kallsyms();
        });
        Symbolizer {
            reader: std::sync::Mutex::new(Some(reader)),
            table: OnceLock::new(),
        }
    }

    /// Waits until /proc/kallsyms has been read (not parsed), or `stop` says to give up. A tool whose
    /// rows carry stacks says it is ready only then: its rows are live from that moment on (in an emulated
    /// guest the read outlasts the BPF load by seconds, and every row would wait for it).
    pub fn wait_read(&self, stop: impl Fn() -> bool) {
        let Ok(mut reader) = self.reader.lock() else {
            return;
        };
        while reader.as_ref().is_some_and(|t| !t.is_finished()) && !stop() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if reader.as_ref().is_some_and(|t| t.is_finished())
            && let Some(t) = reader.take()
        {
            let _ = t.join();
            crate::cli::debug(format_args!(
                "kallsyms read ({:.1} ms after start)",
                crate::runtime::since_start_ms()
            ));
        }
    }

    /// Has the table been parsed (would [`Symbolizer::table`] return at once)?
    pub fn is_ready(&self) -> bool {
        self.table.get().is_some()
    }

    /// The table (waits for the read the first time; parses it once).
    pub fn table(&self) -> &Kallsyms {
        self.table.get_or_init(|| {
            if let Some(t) = self.reader.lock().ok().and_then(|mut r| r.take()) {
                let _ = t.join();
            }
            let t0 = std::time::Instant::now();
            let k = Kallsyms::parse(crate::attach::kallsyms().unwrap_or(""));
            if k.is_empty() {
                crate::cli::say(format_args!(
                    "sockray: /proc/kallsyms gives no addresses here (kptr_restrict, or no CAP_SYSLOG): \
                     stack frames are shown as addresses"
                ));
            }
            crate::cli::debug(format_args!(
                "kallsyms: {} symbols, parsed in {:.1} ms ({:.1} ms after start)",
                k.addrs.len(),
                t0.elapsed().as_secs_f64() * 1000.0,
                crate::runtime::since_start_ms()
            ));
            k
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "ffffffff81000000 T _stext\n\
        ffffffff81001000 t tcp_v4_rcv\n\
        ffffffff81000800 T kfree_skb_reason\n\
        ffffffff82000000 D some_data\n\
        ffffffffc0001000 t bpf_prog_abc_tcpdrop\t[bpf]\n\
        ffffffffc0002000 t mod_fn\t[veth]\n";

    #[test]
    fn names_with_offsets() {
        let k = Kallsyms::parse(TEXT);
        assert_eq!(k.name(0xffffffff81001004), "tcp_v4_rcv+0x4");
        assert_eq!(k.name(0xffffffff81000800), "kfree_skb_reason+0x0");
        assert_eq!(k.name(0xffffffff810007ff), "_stext+0x7ff");
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
    }
}
