//! Where a kernel function's text lies, `[start, end)`: from a walk of the kernel's symbols in the kernel
//! (bpf/ksymrange.bpf.c, an `iter/ksym` iterator: Linux 6.0+), else from /proc/kallsyms, which formats
//! every symbol (~120,000 lines) for user space to parse.

use std::io::Read as _;
use std::mem::MaybeUninit;

use anyhow::{Result, anyhow, bail};
use libbpf_rs::skel::{OpenSkel as _, SkelBuilder as _};

use crate::attach;
use crate::runtime::since_start_ms;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/ksymrange.skel.rs"));
}

/// The text of the kernel function `name` (not a module's), its start to the next symbol's address.
/// None when the kernel has no such function (or, read from /proc/kallsyms, hides its addresses: no
/// CAP_SYSLOG).
pub fn function_range(name: &str) -> Option<(u64, u64)> {
    match by_iterator(name) {
        Ok(range) => {
            crate::cli::debug(format_args!(
                "{:.1} ms: {name}: found by the ksym iterator",
                since_start_ms()
            ));
            range
        }
        Err(e) => {
            crate::cli::debug(format_args!(
                "ksym iterator: {e:#}; reading /proc/kallsyms for {name}"
            ));
            let range = from_kallsyms(attach::kallsyms()?, name);
            crate::cli::debug(format_args!(
                "{:.1} ms: {name}: found in /proc/kallsyms",
                since_start_ms()
            ));
            range
        }
    }
}

/// The range from the ksym iterator; Err when it cannot run here (no iter/ksym: before Linux 6.0, or no
/// CONFIG_KALLSYMS), Ok(None) when the kernel has no such function.
fn by_iterator(name: &str) -> Result<Option<(u64, u64)>> {
    let mut storage = MaybeUninit::uninit();
    let mut open = skel::KsymrangeSkelBuilder::default().open(&mut storage)?;
    let ro = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| anyhow!("no rodata"))?;
    if name.len() >= ro.want.len() {
        bail!("the name {name} is too long for it");
    }
    for (w, b) in ro.want.iter_mut().zip(name.bytes()) {
        *w = b as _;
    }
    let loaded = open.load()?;
    crate::cli::debug(format_args!(
        "{:.1} ms: ksym iterator loaded",
        since_start_ms()
    ));
    let link = loaded.progs.ksymrange.attach()?;
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
