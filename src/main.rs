//! sockray: BCC's network tools on stable kernel tracepoints. One multi-call binary:
//! `sockray <tool> [flags]`, or a symlink named after the tool.

mod attach;
mod cli;
mod dropreason;
mod filter;
mod flows;
mod format;
mod hist;
mod http;
mod journal;
mod ksym;
mod manual;
mod output;
mod runtime;
mod serve;
mod symbolize;
mod tools;

include!(concat!(env!("OUT_DIR"), "/ebpf_sources.rs"));

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

fn usage() -> String {
    let mut s = String::from(
        "sockray: Linux TCP tracing on eBPF (BCC's network tools, on stable tracepoints)\n\n\
         usage: sockray <tool> [flags]    (or run a symlink named after the tool)\n\
         \x20      sockray <tool> --help     the tool's flags and examples\n\
         \x20      sockray serve [--listen ADDR:PORT]  TCP metrics for Prometheus (/metrics)\n\
         \x20      sockray completions bash|zsh|fish   the shell completion script\n\n\
         tools, by the question they answer:\n",
    );
    let mut shown = Vec::new();
    for (question, names) in tools::GROUPS {
        let group: Vec<&tools::Tool> = names.iter().filter_map(|n| tools::find(n)).collect();
        if group.is_empty() {
            continue;
        }
        s.push_str(&format!("\n  {question}?\n"));
        for t in group {
            s.push_str(&format!("    {:<12} {}\n", t.name, t.about));
            shown.push(t.name);
        }
    }
    let rest: Vec<&tools::Tool> = tools::TOOLS
        .iter()
        .filter(|t| !shown.contains(&t.name))
        .collect();
    if !rest.is_empty() {
        s.push_str("\n  more:\n");
        for t in rest {
            s.push_str(&format!("    {:<12} {}\n", t.name, t.about));
        }
    }
    s.push_str(
        "\nevery tool: --json (one JSON object per line), --ebpf (print its BPF program), --verbose\n",
    );
    s
}

fn run_tool(tool: &tools::Tool, args: Vec<OsString>) -> ExitCode {
    runtime::install_signal_handlers();
    match runtime::finish((tool.run)(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            cli::say(format_args!("sockray {}: {e:#}", tool.name));
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let argv0 = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(tool) = tools::find(&argv0) {
        return run_tool(tool, args);
    }
    let Some(first) = args.get(1).map(|a| a.to_string_lossy().into_owned()) else {
        eprint!("{}", usage());
        return ExitCode::from(2);
    };
    match first.as_str() {
        "-h" | "--help" | "help" => {
            print!("{}", usage());
            ExitCode::SUCCESS
        }
        "-V" | "--version" => {
            println!("sockray {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        "completions" => manual::completions_main(&args[2..]),
        "man" => manual::man_main(&args[2..]),
        "serve" => {
            runtime::install_signal_handlers();
            args.remove(0);
            match runtime::finish(serve::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    cli::say(format_args!("sockray serve: {e:#}"));
                    ExitCode::FAILURE
                }
            }
        }
        "--list-tools" => {
            for t in tools::TOOLS {
                println!("{}", t.name);
            }
            ExitCode::SUCCESS
        }
        name => match tools::find(name) {
            Some(tool) => {
                args.remove(0);
                run_tool(tool, args)
            }
            None => {
                eprintln!("sockray: unknown tool '{name}' (sockray --help lists the tools)");
                ExitCode::from(2)
            }
        },
    }
}
