//! Where a kernel function's text lies, `[start, end)`: from the kernel's own symbol lookups
//! (bpf/ksymrange.bpf.c: a syscall program, Linux 5.16+), else a walk of the symbols in the kernel
//! (bpf/ksymwalk.bpf.c, `iter/ksym`: Linux 6.0+), else /proc/kallsyms, which formats every symbol
//! (~120,000 lines) for user space to parse.

use std::io::Read as _;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, anyhow, bail};
use libbpf_rs::skel::{OpenSkel as _, SkelBuilder as _};

use crate::attach;
use crate::runtime::since_start_ms;

mod lookup_skel {
    include!(concat!(env!("OUT_DIR"), "/ksymrange.skel.rs"));
}
mod walk_skel {
    include!(concat!(env!("OUT_DIR"), "/ksymwalk.skel.rs"));
}

/// The text of the kernel function `name` (not a module's), its start to the next symbol's address.
/// None when the kernel has no such function (or, read from /proc/kallsyms, hides its addresses: no
/// CAP_SYSLOG).
///
/// `SOCKRAY_KSYM=walk` starts from the walk, `SOCKRAY_KSYM=kallsyms` reads /proc/kallsyms: the fallbacks,
/// for the tests and to measure them.
pub fn function_range(name: &str) -> Option<(u64, u64)> {
    let mut why = Vec::new();
    let ways: [(&str, Find); 2] = [("ksymrange", lookup), ("ksymwalk", walk)];
    let skip = match std::env::var("SOCKRAY_KSYM").as_deref() {
        Ok("walk") => 1,
        Ok("kallsyms") => 2,
        _ => 0,
    };
    for (way, find) in ways.into_iter().skip(skip) {
        match find(name) {
            Ok(range) => {
                crate::cli::debug(format_args!(
                    "{:.1} ms: {name}: {range:x?}, from the kernel ({way})",
                    since_start_ms()
                ));
                return range;
            }
            Err(e) => why.push(format!("{way}: {e:#}")),
        }
    }
    if why.is_empty() {
        why.push("SOCKRAY_KSYM".into());
    }
    crate::cli::debug(format_args!(
        "{name}: not looked up in the kernel ({}); reading /proc/kallsyms",
        why.join("; ")
    ));
    let range = from_kallsyms(attach::kallsyms()?, name);
    crate::cli::debug(format_args!(
        "{:.1} ms: {name}: {range:x?}, from /proc/kallsyms",
        since_start_ms()
    ));
    range
}

/// One way to find a function's text: Err when it cannot run here, Ok(None) when there is no such function.
type Find = fn(&str) -> Result<Option<(u64, u64)>>;

/// `name` into a BPF object's `want` (NUL-terminated).
fn want_into(want: &mut [i8], name: &str) -> Result<()> {
    if name.is_empty() || name.len() >= want.len() {
        bail!("the name {name:?} does not fit");
    }
    for (w, b) in want.iter_mut().zip(name.bytes()) {
        *w = b as i8;
    }
    Ok(())
}

/// bpf/ksymrange.bpf.c's lookup: Err when it cannot run here, Ok(None) when the kernel has no such
/// function (or only a module has it).
fn lookup(name: &str) -> Result<Option<(u64, u64)>> {
    let Some((start, sym)) = lookup_symbol(name)? else {
        return Ok(None);
    };
    let size = symbol_size(&sym).ok_or_else(|| anyhow!("cannot read the size in {sym:?}"))?;
    Ok(size.map(|size| (start, start + size)))
}

/// Does the kernel or a module have a symbol `name` (a kprobe's target)? From bpf/ksymrange.bpf.c's
/// lookup, without reading /proc/kallsyms; None where the lookup cannot run (tried once per process).
pub fn kernel_has(name: &str) -> Option<bool> {
    static UNAVAILABLE: AtomicBool = AtomicBool::new(false);
    if UNAVAILABLE.load(Ordering::Relaxed) {
        return None;
    }
    match lookup_symbol(name) {
        Ok(found) => Some(found.is_some()),
        Err(e) => {
            crate::cli::debug(format_args!(
                "ksymrange: {e:#}; kernel functions are looked up in /proc/kallsyms"
            ));
            UNAVAILABLE.store(true, Ordering::Relaxed);
            None
        }
    }
}

/// The symbol's address and the kernel's `%pS` of it; Ok(None): no such symbol.
fn lookup_symbol(name: &str) -> Result<Option<(u64, String)>> {
    let mut storage = MaybeUninit::uninit();
    let mut open = lookup_skel::KsymrangeSkelBuilder::default().open(&mut storage)?;
    let ro = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| anyhow!("no rodata"))?;
    want_into(&mut ro.want, name)?;
    let loaded = open.load()?;
    let out = loaded
        .progs
        .ksymrange_lookup
        .test_run(libbpf_rs::ProgramInput::default())?;
    match out.return_value {
        0 => {}
        1 => return Ok(None), // no such symbol
        3 => bail!("the kernel would not look it up (no raw kernel addresses for this caller)"),
        n => bail!("it returned {n}"),
    }
    let bss = loaded
        .maps
        .bss_data
        .as_deref()
        .ok_or_else(|| anyhow!("no bss"))?;
    let sym: Vec<u8> = bss
        .found_sym
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(Some((
        bss.found_start,
        String::from_utf8_lossy(&sym).into_owned(),
    )))
}

/// bpf/ksymwalk.bpf.c's walk: Err when it cannot run here (no iter/ksym), Ok(None) when the kernel has
/// no such function.
fn walk(name: &str) -> Result<Option<(u64, u64)>> {
    let mut storage = MaybeUninit::uninit();
    let mut open = walk_skel::KsymwalkSkelBuilder::default().open(&mut storage)?;
    let ro = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| anyhow!("no rodata"))?;
    want_into(&mut ro.want, name)?;
    let loaded = open.load()?;
    let link = loaded.progs.ksymwalk.attach()?;
    let mut it = libbpf_rs::Iter::new(&link)?;
    let mut buf = [0u8; 64];
    loop {
        match it.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            // the program stopped the walk (done)
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let bss = loaded
        .maps
        .bss_data
        .as_deref()
        .ok_or_else(|| anyhow!("no bss"))?;
    Ok((bss.found_start != 0 && bss.found_end > bss.found_start)
        .then_some((bss.found_start, bss.found_end)))
}

/// The size in the kernel's `%pS` of a function's start, `name+0x0/0x15b0`: Some(None) for a module's
/// symbol (`name+0x0/0x40 [module]`: not the kernel's own), None when it does not read as that (a
/// kernel without symbols prints the bare address).
fn symbol_size(sym: &str) -> Option<Option<u64>> {
    let (_name, rest) = sym.rsplit_once('+')?;
    let (offset_size, module) = match rest.split_once(' ') {
        Some((os, m)) => (os, Some(m)),
        None => (rest, None),
    };
    let (offset, size) = offset_size.split_once('/')?;
    let hex = |s: &str| u64::from_str_radix(s.strip_prefix("0x")?, 16).ok();
    if hex(offset)? != 0 {
        return None;
    }
    let size = hex(size)?;
    Some((module.is_none() && size > 0).then_some(size))
}

/// The range from /proc/kallsyms' text.
fn from_kallsyms(kallsyms: &str, name: &str) -> Option<(u64, u64)> {
    let mut lines = kallsyms.lines();
    let start = lines.by_ref().find_map(|l| {
        let mut f = l.split_whitespace();
        let (addr, _kind, sym) = (f.next()?, f.next()?, f.next()?);
        (sym == name && f.next().is_none())
            .then(|| u64::from_str_radix(addr, 16).ok())
            .flatten()
    })?;
    if start == 0 {
        return None;
    }
    let end = lines.find_map(|l| {
        let a = u64::from_str_radix(l.split_whitespace().next()?, 16).ok()?;
        (a > start).then_some(a)
    })?;
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_from_the_symbol() {
        assert_eq!(
            symbol_size("tcp_rcv_state_process+0x0/0x15b0"),
            Some(Some(0x15b0))
        );
        assert_eq!(symbol_size("foo+0x0/0x40 [veth]"), Some(None));
        assert_eq!(symbol_size("foo+0x10/0x40"), None);
        assert_eq!(symbol_size("0xffffffff820814c0"), None);
        assert_eq!(symbol_size("a+b+0x0/0x8"), Some(Some(8)));
    }

    #[test]
    fn function_text_from_kallsyms() {
        let k = "ffffffff8207f900 t tcp_rcv_synsent_state_process\n\
                 ffffffff8207f980 T tcp_rcv_state_process\n\
                 ffffffff82080f30 T __pfx_tcp_get_syncookie_mss\n\
                 ffffffff82080f40 T tcp_get_syncookie_mss\n";
        assert_eq!(
            from_kallsyms(k, "tcp_rcv_state_process"),
            Some((0xffffffff8207f980, 0xffffffff82080f30))
        );
        assert_eq!(from_kallsyms(k, "tcp_rcv"), None);
        // hidden addresses (no CAP_SYSLOG): all zero
        let hidden = "0000000000000000 T tcp_rcv_state_process\n0000000000000000 T x\n";
        assert_eq!(from_kallsyms(hidden, "tcp_rcv_state_process"), None);
        // a module's symbol of the same name does not count
        assert_eq!(
            from_kallsyms(
                "ffffffffc0000000 t tcp_rcv_state_process [m]\n",
                "tcp_rcv_state_process"
            ),
            None
        );
    }
}
