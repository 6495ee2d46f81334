//! The tools. Each file is one tool: its flags, how it loads, how it prints.

use std::ffi::OsString;

pub mod netqtop;
pub mod sofdsnoop;
pub mod softirqs;
pub mod solisten;
pub mod tcpaccept;
pub mod tcpcong;
pub mod tcpconnect;
pub mod tcpconnlat;
pub mod tcpdrop;
pub mod tcplife;
pub mod tcpretrans;
pub mod tcprtt;
pub mod tcpstates;
pub mod tcpsubnet;
pub mod tcpsynbl;
pub mod tcptop;
pub mod tcptracer;

pub struct Tool {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(Vec<OsString>) -> anyhow::Result<()>,
    /// The tool's clap definition: its `-h`, man page and shell completions.
    pub command: fn() -> clap::Command,
}

pub const TOOLS: &[Tool] = &[
    Tool {
        name: "netqtop",
        about: "packets, bytes and packet sizes per TX and RX queue of one network interface, every interval",
        run: netqtop::run,
        command: netqtop::command,
    },
    Tool {
        name: "sofdsnoop",
        about: "file descriptors passed over Unix sockets (SCM_RIGHTS), sent and received, with their names",
        run: sofdsnoop::run,
        command: sofdsnoop::command,
    },
    Tool {
        name: "softirqs",
        about: "time in each softirq vector (net_rx, timer, ...): totals, counts, histograms, per CPU",
        run: softirqs::run,
        command: softirqs::command,
    },
    Tool {
        name: "solisten",
        about: "listen() on TCP sockets: process, port (also kernel-picked), backlog, failures",
        run: solisten::run,
        command: solisten::command,
    },
    Tool {
        name: "tcpaccept",
        about: "TCP connections accepted, named by the process that called accept()",
        run: tcpaccept::run,
        command: tcpaccept::command,
    },
    Tool {
        name: "tcpcong",
        about: "time per TCP connection in each congestion state (open, disorder, cwr, recovery, loss)",
        run: tcpcong::run,
        command: tcpcong::command,
    },
    Tool {
        name: "tcpconnect",
        about: "TCP connects (every SYN sent, refused too): process, addresses, ports, result",
        run: tcpconnect::run,
        command: tcpconnect::command,
    },
    Tool {
        name: "tcpconnlat",
        about: "TCP connect latency: SYN sent until established, per connect",
        run: tcpconnlat::run,
        command: tcpconnlat::command,
    },
    Tool {
        name: "tcpdrop",
        about: "TCP packets the kernel dropped: owner, drop reason by name, kernel stack",
        run: tcpdrop::run,
        command: tcpdrop::command,
    },
    Tool {
        name: "tcplife",
        about: "TCP sessions with their lifespan and bytes, one line per closed session",
        run: tcplife::run,
        command: tcplife::command,
    },
    Tool {
        name: "tcpretrans",
        about: "TCP retransmits (and SYN-ACK resends, -l loss probes), with the socket's owner",
        run: tcpretrans::run,
        command: tcpretrans::command,
    },
    Tool {
        name: "tcprtt",
        about: "TCP round-trip times as log2 histograms (per address, port, process), in the kernel",
        run: tcprtt::run,
        command: tcprtt::command,
    },
    Tool {
        name: "tcpstates",
        about: "TCP state changes, with time in each state and the owning process",
        run: tcpstates::run,
        command: tcpstates::command,
    },
    Tool {
        name: "tcpsubnet",
        about: "TCP bytes sent per destination subnet (IPv4 and IPv6), every interval",
        run: tcpsubnet::run,
        command: tcpsubnet::command,
    },
    Tool {
        name: "tcpsynbl",
        about: "accept-queue length of TCP listeners at each new connection (log2 histograms), overflows too",
        run: tcpsynbl::run,
        command: tcpsynbl::command,
    },
    Tool {
        name: "tcptop",
        about: "TCP throughput per process and connection, every interval (counted in the kernel)",
        run: tcptop::run,
        command: tcptop::command,
    },
    Tool {
        name: "tcptracer",
        about: "TCP connects, accepts and closes of established connections, with their owners",
        run: tcptracer::run,
        command: tcptracer::command,
    },
];

/// `sockray --help`: the tools grouped by the question they answer. A tool in no group is listed
/// under the last heading (the unit test below keeps every tool in exactly one).
pub const GROUPS: &[(&str, &[&str])] = &[
    (
        "who connects where, and when",
        &[
            "tcpconnect",
            "tcpaccept",
            "tcptracer",
            "tcplife",
            "tcpstates",
            "solisten",
        ],
    ),
    ("how slowly", &["tcpconnlat", "tcprtt"]),
    (
        "what is lost, resent or queued",
        &["tcpretrans", "tcpdrop", "tcpsynbl"],
    ),
    ("who is talking most", &["tcptop", "tcpsubnet"]),
    (
        "how is the network stack itself doing",
        &["tcpcong", "softirqs", "netqtop"],
    ),
    ("who hands sockets and files to whom", &["sofdsnoop"]),
];

pub fn find(name: &str) -> Option<&'static Tool> {
    TOOLS.iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_in_one_group() {
        for t in TOOLS {
            let n = GROUPS
                .iter()
                .filter(|(_, tools)| tools.contains(&t.name))
                .count();
            assert_eq!(n, 1, "{} is in {n} groups", t.name);
        }
    }

    #[test]
    fn every_command_is_its_tool() {
        for t in TOOLS {
            let cmd = (t.command)();
            assert_eq!(cmd.get_name(), t.name);
            assert!(cmd.get_about().is_some(), "{} has no about", t.name);
            assert!(
                cmd.get_after_help()
                    .is_some_and(|h| h.to_string().starts_with("examples:")),
                "{}: its after_help is not an examples: text",
                t.name
            );
            cmd.debug_assert();
        }
    }
}
