//! Filters set in the kernel: every tool's BPF object carries the same `filter_*` read-only globals
//! (bpf/common.bpf.h); user space fills them before load, so user space sees only what it prints.

use std::os::unix::fs::MetadataExt;

/// A list of ports from "80", "80,443" or ranges "3000-3006" (also mixed: "22,8000-8010").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

fn parse_port(s: &str) -> Result<u16, String> {
    let s = s.trim();
    match s.parse::<u32>() {
        Ok(p) if p <= 65535 => Ok(p as u16),
        Ok(_) => Err(format!("invalid port '{s}': ports are 0-65535")),
        Err(_) => Err(format!("invalid port '{s}': not a number")),
    }
}

/// clap value parser for port lists.
pub fn parse_ports(s: &str) -> Result<PortList, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        if part.trim().is_empty() {
            return Err(format!("invalid port list '{s}': empty element"));
        }
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse_port(a)?, parse_port(b)?);
                if a > b {
                    return Err(format!("invalid port range '{part}': start is above end"));
                }
                out.extend(a..=b);
            }
            None => out.push(parse_port(part)?),
        }
    }
    Ok(PortList(out))
}

impl PortList {
    /// The bitmap the BPF side tests (`filter_lports` / `filter_rports`: bit per port).
    pub fn bitmap(&self) -> [u8; 8192] {
        let mut bits = [0u8; 8192];
        for &p in &self.0 {
            bits[p as usize >> 3] |= 1 << (p & 7);
        }
        bits
    }
}

/// clap value parser for a PID (also TID/UID): a positive whole number.
pub fn parse_id(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(v) => Ok(v),
        Err(_) => Err(format!(
            "invalid value '{s}': expected a non-negative whole number"
        )),
    }
}

/// The cgroup v2 id of a cgroup directory (its inode number), for `--cgroup PATH`.
pub fn cgroup_id(path: &str) -> Result<u64, String> {
    let md = std::fs::metadata(path).map_err(|e| format!("cgroup '{path}': {e}"))?;
    if !md.is_dir() {
        return Err(format!("cgroup '{path}': not a directory"));
    }
    Ok(md.ino())
}

/// What a tool filters on; unset fields match everything.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    /// AF_INET or AF_INET6; None for both.
    pub family: Option<u16>,
    pub lports: Option<PortList>,
    pub rports: Option<PortList>,
    pub cgroup_id: Option<u64>,
}

/// Writes [`Filters`] into a skeleton's `rodata` (every tool's rodata has the same `filter_*` fields).
macro_rules! apply_filters {
    ($rodata:expr, $filters:expr) => {{
        let r = $rodata;
        let f: &$crate::filter::Filters = $filters;
        r.filter_tgid = f.pid.unwrap_or(0);
        r.filter_uid_on = f.uid.is_some() as u8;
        r.filter_uid = f.uid.unwrap_or(0);
        r.filter_family = f.family.unwrap_or(0);
        if let Some(p) = &f.lports {
            r.filter_lport_on = 1;
            r.filter_lports = p.bitmap();
        }
        if let Some(p) = &f.rports {
            r.filter_rport_on = 1;
            r.filter_rports = p.bitmap();
        }
        r.filter_cgroup_id = f.cgroup_id.unwrap_or(0);
        r.self_tgid = std::process::id();
        r.sock_slot_mask = $crate::runtime::sock_slot_mask();
    }};
}
pub(crate) use apply_filters;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_lists_and_ranges() {
        assert_eq!(parse_ports("80").unwrap().0, vec![80]);
        assert_eq!(parse_ports("80,81").unwrap().0, vec![80, 81]);
        assert_eq!(
            parse_ports("3000-3002,22").unwrap().0,
            vec![3000, 3001, 3002, 22]
        );
        assert_eq!(parse_ports(" 443 ").unwrap().0, vec![443]);
    }

    #[test]
    fn bad_ports_are_errors() {
        assert!(parse_ports("70000").unwrap_err().contains("70000"));
        assert!(parse_ports("abc").unwrap_err().contains("abc"));
        assert!(parse_ports("80,").is_err());
        assert!(parse_ports("90-80").is_err());
        assert!(parse_ports("-1").is_err());
    }

    #[test]
    fn bitmap_has_exactly_the_ports() {
        let bits = parse_ports("0,7,8,65535").unwrap().bitmap();
        let set: Vec<u32> = (0..65536u32)
            .filter(|&p| bits[p as usize >> 3] & (1 << (p & 7)) != 0)
            .collect();
        assert_eq!(set, vec![0, 7, 8, 65535]);
    }

    #[test]
    fn ids() {
        assert_eq!(parse_id("181"), Ok(181));
        assert!(parse_id("x").is_err());
        assert!(parse_id("-3").is_err());
    }

    #[test]
    fn family_flags() {
        use crate::cli::FamilyArgs;
        let f = |ipv4, ipv6| FamilyArgs { ipv4, ipv6 }.family();
        assert_eq!(f(true, false), Some(2));
        assert_eq!(f(false, true), Some(10));
        assert_eq!(f(false, false), None);
    }

    #[test]
    fn cgroup_id_of_dir_and_errors() {
        assert!(cgroup_id("/").is_ok());
        assert!(
            cgroup_id("/nonexistent/cg")
                .unwrap_err()
                .contains("/nonexistent/cg")
        );
        assert!(cgroup_id("/etc/hostname").is_err());
    }
}
