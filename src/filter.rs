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

/// Where the watched processes run: `--cgroup PATH` (one cgroup), or BCC's `--cgroupmap` /
/// `--mntnsmap` (a pinned BPF hash map whose keys are cgroup v2 ids / mount namespace ids, kept up to
/// date by whoever pinned it: read live by the kernel programs).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Scope {
    #[default]
    Any,
    Cgroup(u64),
    CgroupSet(std::path::PathBuf),
    MntnsSet(std::path::PathBuf),
}

impl Scope {
    /// SCOPE_* of bpf/common.bpf.h.
    pub fn code(&self) -> u8 {
        match self {
            Scope::Any => 0,
            Scope::Cgroup(_) => 1,
            Scope::CgroupSet(_) => 2,
            Scope::MntnsSet(_) => 3,
        }
    }

    /// --cgroupmap/--mntnsmap, before load: opens the user's pinned map (kept for after the load,
    /// [`fill_scope_map`]) and makes the template of `scope_sets` like it.
    pub fn prepare_scope_map(&self, obj: &mut libbpf_rs::OpenObject) -> anyhow::Result<()> {
        use libbpf_rs::MapCore as _;
        use std::os::fd::AsFd as _;
        let (path, flag) = match self {
            Scope::CgroupSet(p) => (p, "--cgroupmap"),
            Scope::MntnsSet(p) => (p, "--mntnsmap"),
            _ => return Ok(()),
        };
        let pinned = match PINNED.get() {
            Some(m) => m,
            None => {
                let map = libbpf_rs::MapHandle::from_pinned_path(path).map_err(|e| {
                    // the kernel says EACCES both for a file this user may not open and for a file
                    // that is not on a bpf file system at all (/etc/hostname): only the first is about
                    // permissions
                    if e.kind() == libbpf_rs::ErrorKind::PermissionDenied && !off_bpffs(path) {
                        return anyhow::anyhow!(
                            "{flag} {}: this user may not open the pinned map ({e}): it needs read \
                             and write permission on the file and search permission on its \
                             directories (a bpf file system is mode 700 by default: chown or chmod \
                             them, or add CAP_DAC_OVERRIDE)",
                            path.display()
                        );
                    }
                    anyhow::anyhow!(
                        "{flag} {}: not a pinned BPF map ({e}); pin a hash map with 8-byte keys \
                         there first (e.g. bpftool map create {} type hash key 8 value 8 \
                         entries 128 name ids)",
                        path.display(),
                        path.display()
                    )
                })?;
                if map.map_type() != libbpf_rs::MapType::Hash || map.key_size() != 8 {
                    anyhow::bail!(
                        "{flag} {}: a {:?} map with {}-byte keys; expected a hash map with 8-byte \
                         keys (ids)",
                        path.display(),
                        map.map_type(),
                        map.key_size()
                    );
                }
                let _ = PINNED.set(map);
                PINNED.get().expect("set")
            }
        };
        let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
            map_flags: pinned.info()?.info.map_flags,
            ..Default::default()
        };
        let template = libbpf_rs::MapHandle::create(
            libbpf_rs::MapType::Hash,
            Some("scope_tmpl"),
            8,
            pinned.value_size(),
            1,
            &opts,
        )?;
        let mut outer = obj
            .maps_mut()
            .find(|m| m.name() == "scope_sets")
            .ok_or_else(|| anyhow::anyhow!("no map scope_sets in the BPF object"))?;
        // libbpf creates the array of maps at load with it: kept until then
        outer.set_inner_map_fd(Box::leak(Box::new(template)).as_fd())?;
        Ok(())
    }
}

static PINNED: std::sync::OnceLock<libbpf_rs::MapHandle> = std::sync::OnceLock::new();

/// --cgroupmap/--mntnsmap, after load: the user's map into `scope_sets` (before the programs attach).
pub fn fill_scope_map(obj: &libbpf_rs::Object) -> anyhow::Result<()> {
    use libbpf_rs::MapCore as _;
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let Some(pinned) = PINNED.get() else {
        return Ok(());
    };
    let outer = obj
        .maps()
        .find(|m| m.name() == "scope_sets")
        .ok_or_else(|| anyhow::anyhow!("no map scope_sets in the BPF object"))?;
    let fd = pinned.as_fd().as_raw_fd() as u32;
    outer
        .update(
            &0u32.to_ne_bytes(),
            &fd.to_ne_bytes(),
            libbpf_rs::MapFlags::ANY,
        )
        .map_err(|e| anyhow::anyhow!("the pinned id map could not be used: {e}"))
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
    pub scope: Scope,
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
        r.filter_scope = f.scope.code();
        r.filter_cgroup_id = match f.scope {
            $crate::filter::Scope::Cgroup(id) => id,
            _ => 0,
        };
        r.self_tgid = std::process::id();
        r.sock_slot_mask = $crate::runtime::sock_slot_mask();
    }};
}
pub(crate) use apply_filters;

/// Is `path` a file this user can see that is not on a bpf file system (so not a pinned map)? False
/// when that cannot be told (no search permission on its directories: a permission matter).
fn off_bpffs(path: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path and a statfs buffer of the right type
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 != BPF_FS_MAGIC
}

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
