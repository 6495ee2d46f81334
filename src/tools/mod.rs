//! The tools. Each file is one tool: its flags, how it loads, how it prints.

use std::ffi::OsString;

pub mod tcplife;
pub mod tcpstates;

pub struct Tool {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(Vec<OsString>) -> anyhow::Result<()>,
}

pub const TOOLS: &[Tool] = &[
    Tool {
        name: "tcplife",
        about: "TCP sessions with their lifespan and bytes, one line per closed session",
        run: tcplife::run,
    },
    Tool {
        name: "tcpstates",
        about: "TCP state changes, with time in each state and the owning process",
        run: tcpstates::run,
    },
];

pub fn find(name: &str) -> Option<&'static Tool> {
    TOOLS.iter().find(|t| t.name == name)
}
