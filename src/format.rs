//! Address, time and name formatting shared by every tool.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// An address as the BPF side stores it: 16 bytes, IPv4 in the first four.
pub fn ip_addr(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*raw))
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

/// The wall clock now, in ns since the epoch (interval output's `time_ns`).
pub fn wall_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// 4 or 6, as BCC's IP column.
pub fn ip_version(family: u16) -> u8 {
    if family == AF_INET6 { 6 } else { 4 }
}

/// A kernel `char comm[16]` as text (up to the first NUL; invalid UTF-8 replaced).
pub fn comm(raw: &[i8]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// TCP state names as BCC prints them (include/net/tcp_states.h order).
pub fn tcp_state(state: i32) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        13 => "BOUND_INACTIVE",
        _ => "UNKNOWN",
    }
}

/// Converts `bpf_ktime_get_ns()` stamps (CLOCK_MONOTONIC) to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, in ns, taken once at start.
    offset_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    pub fn new() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Clock {
            offset_ns: real - mono,
        }
    }

    /// Wall-clock ns since the epoch of a BPF monotonic stamp.
    pub fn wall_ns(&self, ktime_ns: u64) -> u64 {
        (ktime_ns as i128 + self.offset_ns).max(0) as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// HH:MM:SS in local time of a wall-clock ns stamp.
pub fn hms(wall_ns: u64) -> String {
    let secs = (wall_ns / 1_000_000_000) as libc::time_t;
    // SAFETY: localtime_r fills the tm we own; a zeroed tm is a valid initial value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !ok {
        let s = secs.rem_euclid(86_400);
        return format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    }
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_from_first_four_bytes() {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&[127, 0, 0, 1]);
        raw[4] = 9; // ignored for IPv4
        assert_eq!(ip_addr(AF_INET, &raw).to_string(), "127.0.0.1");
    }

    #[test]
    fn ipv6_rfc5952() {
        let mut raw = [0u8; 16];
        raw[15] = 1;
        assert_eq!(ip_addr(AF_INET6, &raw).to_string(), "::1");
        let raw: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1];
        assert_eq!(ip_addr(AF_INET6, &raw).to_string(), "2001:db8::1:0:0:1");
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(ip_addr(AF_INET6, &mapped).to_string(), "::ffff:10.1.2.3");
    }

    #[test]
    fn comm_stops_at_nul() {
        let mut raw = [0i8; 16];
        for (i, b) in b"curl".iter().enumerate() {
            raw[i] = *b as i8;
        }
        raw[6] = b'x' as i8;
        assert_eq!(comm(&raw), "curl");
        let full = [b'a' as i8; 16];
        assert_eq!(comm(&full).len(), 16);
    }

    #[test]
    fn state_names() {
        assert_eq!(tcp_state(1), "ESTABLISHED");
        assert_eq!(tcp_state(7), "CLOSE");
        assert_eq!(tcp_state(10), "LISTEN");
        assert_eq!(tcp_state(99), "UNKNOWN");
    }

    #[test]
    fn clock_maps_monotonic_to_wall() {
        let c = Clock::new();
        let wall = c.wall_ns(clock_ns(libc::CLOCK_MONOTONIC) as u64);
        let real = clock_ns(libc::CLOCK_REALTIME) as u64;
        assert!(real.abs_diff(wall) < 1_000_000_000);
        assert_eq!(hms(wall).len(), 8);
    }
}

/// The owner fields every socket event carries: pid, comm, uid. pid 0 means the owner is unknown
/// (shown as "?"), never the unrelated task that happened to be on the CPU.
pub fn owner_fields(
    pid: u32,
    uid: u32,
    raw_comm: &[i8],
) -> Vec<(&'static str, crate::output::Value)> {
    use crate::output::Value;
    let name = if pid == 0 {
        "?".to_string()
    } else {
        comm(raw_comm)
    };
    // room for the tool's own fields too: one allocation per event, not a reallocation as they are added
    let mut f = Vec::with_capacity(16);
    f.extend([
        ("pid", Value::U(pid as u64)),
        ("comm", Value::S(name)),
        ("uid", Value::U(uid as u64)),
    ]);
    f
}

/// The symbolic name of an errno value (positive), as `errno(1)` prints it; "errno N" when unknown.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EPROTOTYPE => "EPROTOTYPE",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOBUFS => "ENOBUFS",
        libc::EISCONN => "EISCONN",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

#[cfg(test)]
mod errno_tests {
    use super::errno_name;

    #[test]
    fn names() {
        assert_eq!(errno_name(98), "EADDRINUSE");
        assert_eq!(errno_name(95), "EOPNOTSUPP");
        assert_eq!(errno_name(22), "EINVAL");
        assert_eq!(errno_name(4242), "errno 4242");
    }
}
