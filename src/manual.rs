//! Man pages and shell completions, generated from the tools' clap definitions (the same ones `-h`
//! prints), so they cannot drift from it: `sockray man DIR`, `sockray completions SHELL`.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Arg, ArgAction, Command};
use clap_complete::Shell;
use roff::{Roff, bold, roman};

use crate::cli;
use crate::tools::{self, Tool};

/// `sockray completions SHELL [TOOL]`.
pub fn completions_main(args: &[OsString]) -> ExitCode {
    let shell = args.first().map(|a| a.to_string_lossy().parse::<Shell>());
    let tool = args.get(1).map(|a| tools::find(&a.to_string_lossy()));
    match (shell, tool) {
        (Some(Ok(shell)), None | Some(Some(_))) if args.len() <= 2 => {
            done("completions", print_completions(shell, tool.flatten()))
        }
        _ => {
            eprintln!(
                "usage: sockray completions bash|zsh|fish|elvish|powershell [TOOL]   \
                 (with TOOL: for the tool's symlink)"
            );
            ExitCode::from(2)
        }
    }
}

/// `sockray man DIR`.
pub fn man_main(args: &[OsString]) -> ExitCode {
    let [dir] = args else {
        eprintln!("usage: sockray man DIR   (writes sockray.8, sockray-TOOL.8 and TOOL.8)");
        return ExitCode::from(2);
    };
    let dir = Path::new(dir);
    let r = write_man_pages(dir).map(|pages| {
        println!("{} man pages in {}", pages.len(), dir.display());
    });
    done("man", r)
}

fn done(what: &str, r: Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            cli::say(format_args!("sockray {what}: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// BCC's section: system administration commands.
const SECTION: &str = "8";

/// `sockray` as one clap command, a subcommand per tool with the tool's own flags: what the shell
/// completions are generated from, and the tool list of sockray.8. (main.rs parses the top level
/// itself, so a symlink named after a tool works; this tree describes the same command line.)
pub fn command_tree() -> Command {
    tree()
        .subcommand(
            Command::new("completions")
                .about("Print the shell completion script for sockray")
                .arg(
                    Arg::new("shell")
                        .value_name("SHELL")
                        .required(true)
                        .value_parser(clap::value_parser!(Shell)),
                ),
        )
        .subcommand(crate::serve::command())
        .subcommand(
            Command::new("man")
                .about("Write the man pages (section 8) into DIR")
                .hide(true)
                .arg(Arg::new("dir").value_name("DIR").required(true)),
        )
}

/// sockray and its tools (the tools section of sockray.8, which has no page of its own for
/// `completions` and `man`).
fn tree() -> Command {
    let mut cmd = Command::new("sockray")
        .about("Linux TCP tracing on eBPF (BCC's network tools, on stable tracepoints)")
        .long_about(
            "Linux TCP tracing on eBPF: BCC's network tools, on stable kernel tracepoints.\n\n\
             One multi-call binary: `sockray TOOL [flags]`, or a symlink named after the tool \
             (`tcplife -L 22` is `sockray tcplife -L 22`). Every tool has --json (one JSON object \
             per line), --ebpf (print its BPF program) and --verbose (which kernel hooks were \
             chosen). Each tool's page: sockray-TOOL(8), also installed as TOOL(8).\n\n\
             `sockray completions bash|zsh|fish` prints the shell completion script; `sockray man \
             DIR` writes these pages into DIR. `cargo xtask install` installs both.",
        )
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_help_heading("TOOLS")
        .subcommand_value_name("TOOL")
        .disable_help_subcommand(true)
        .arg(
            Arg::new("list-tools")
                .long("list-tools")
                .action(ArgAction::SetTrue)
                .help("Print the tools' names, one a line"),
        );
    for t in tools::TOOLS {
        cmd = cmd.subcommand(tool_command(t));
    }
    cmd
}

/// A tool's clap command, with its visible aliases added to the help (clap_mangen leaves them out;
/// `-h` shows them).
fn tool_command(t: &Tool) -> Command {
    (t.command)().mut_args(|a| {
        let aliases: Vec<String> = a
            .get_visible_aliases()
            .unwrap_or_default()
            .iter()
            .map(|s| format!("--{s}"))
            .chain(
                a.get_visible_short_aliases()
                    .unwrap_or_default()
                    .iter()
                    .map(|c| format!("-{c}")),
            )
            .collect();
        if aliases.is_empty() {
            return a;
        }
        let word = if aliases.len() == 1 {
            "alias"
        } else {
            "aliases"
        };
        let extra = format!(" [{word}: {}]", aliases.join(", "));
        let help = a.get_help().map(|h| h.to_string() + &extra);
        let long = a.get_long_help().map(|h| h.to_string() + &extra);
        let a = match help {
            Some(h) => a.help(h),
            None => a,
        };
        match long {
            Some(h) => a.long_help(h),
            None => a,
        }
    })
}

/// Writes sockray.8, sockray-TOOL.8 for every tool and TOOL.8 (a `.so` to sockray-TOOL.8, so that
/// `man TOOL` finds the page of the symlink) into `dir`, created if missing. Returns the paths.
pub fn write_man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut pages = vec![("sockray".to_string(), main_page()?)];
    for t in tools::TOOLS {
        pages.push((format!("sockray-{}", t.name), tool_page(t)?));
        pages.push((
            t.name.to_string(),
            format!(".so man8/sockray-{}.8\n", t.name),
        ));
    }
    let mut written = Vec::new();
    for (name, text) in pages {
        let path = dir.join(format!("{name}.{SECTION}"));
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Prints the completion script of `shell` on stdout: for sockray and its tools, or with `tool` for
/// that tool run through its symlink (`tcplife -L ...`).
pub fn print_completions(shell: Shell, tool: Option<&Tool>) -> Result<()> {
    let mut out = Vec::new();
    match tool {
        None => clap_complete::generate(shell, &mut command_tree(), "sockray", &mut out),
        Some(t) => clap_complete::generate(shell, &mut tool_command(t), t.name, &mut out),
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out)?;
    stdout.flush()?;
    Ok(())
}

fn man(cmd: Command, title: &str) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd)
        .title(title.to_uppercase())
        .section(SECTION)
        .source(format!("sockray {}", env!("CARGO_PKG_VERSION")))
        .manual("System Manager's Manual")
}

/// Roff text without the apostrophe preamble every rendering starts with (the page has it once).
fn strip_preamble(rendered: Vec<u8>) -> Result<String> {
    let preamble = Roff::new().render();
    let s = String::from_utf8(rendered)?;
    Ok(s.strip_prefix(&preamble).map(str::to_string).unwrap_or(s))
}

fn section(render: impl Fn(&mut Vec<u8>) -> std::io::Result<()>) -> Result<String> {
    let mut buf = Vec::new();
    render(&mut buf)?;
    strip_preamble(buf)
}

fn roff_text(roff: &Roff) -> String {
    let s = roff.render();
    let preamble = Roff::new().render();
    s.strip_prefix(&preamble).map(str::to_string).unwrap_or(s)
}

fn main_page() -> Result<String> {
    let m = man(tree().bin_name("sockray"), "sockray");
    let mut page = Vec::new();
    m.render(&mut page)?;
    let mut page = String::from_utf8(page)?;
    let mut see = Roff::new();
    see.control("SH", ["SEE ALSO"]);
    let refs: Vec<String> = tools::TOOLS
        .iter()
        .map(|t| format!("sockray-{}({SECTION})", t.name))
        .collect();
    see.text([roman(refs.join(", "))]);
    page.push_str(&roff_text(&see));
    Ok(page)
}

fn tool_page(t: &Tool) -> Result<String> {
    let cmd = tool_command(t).bin_name(t.name);
    let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
    let after = cmd
        .get_after_help()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let m = man(cmd, &format!("sockray-{}", t.name));

    let mut page = Roff::new().render(); // the preamble
    page += &section(|w| m.render_title(w))?;
    let mut name = Roff::new();
    name.control("SH", ["NAME"]);
    name.text([roman(format!("sockray-{0}, {0} - {about}", t.name))]);
    page += &roff_text(&name);
    page += &section(|w| m.render_synopsis_section(w))?;
    page += &section(|w| m.render_description_section(w))?;
    let mut run_as = Roff::new();
    run_as.control("PP", []);
    run_as.text([
        roman("Run as "),
        bold(format!("sockray {}", t.name)),
        roman(", or as "),
        bold(t.name),
        roman(" through a symlink to sockray. sockray's "),
        bold(t.name),
        roman(format!(": {}.", t.about)),
    ]);
    page += &roff_text(&run_as);
    page += &section(|w| m.render_options_section(w))?;
    page += &roff_text(&examples(&after));
    let mut see = Roff::new();
    see.control("SH", ["SEE ALSO"]);
    see.text([roman(format!("sockray({SECTION})"))]);
    page += &roff_text(&see);
    Ok(page)
}

/// The `examples:` text of `-h` (after_help) as the EXAMPLES section: its indented blocks (the
/// command lines) verbatim, its other paragraphs filled.
fn examples(after_help: &str) -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["EXAMPLES"]);
    let body = after_help
        .strip_prefix("examples:")
        .unwrap_or(after_help)
        .trim_matches('\n');
    let lines: Vec<&str> = body.lines().collect();
    for block in lines.split(|l| l.trim().is_empty()) {
        if block.is_empty() {
            continue;
        }
        roff.control("PP", []);
        if block.iter().all(|l| l.starts_with(' ')) {
            let indent = block
                .iter()
                .map(|l| l.len() - l.trim_start().len())
                .min()
                .unwrap_or(0);
            roff.control("nf", []);
            for l in block {
                roff.text([roman(&l[indent..])]);
            }
            roff.control("fi", []);
        } else {
            for l in block {
                roff.text([roman(*l)]);
            }
        }
    }
    roff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_is_valid_and_has_every_tool() {
        let cmd = command_tree();
        cmd.clone().debug_assert();
        for t in tools::TOOLS {
            assert!(cmd.find_subcommand(t.name).is_some(), "{}", t.name);
        }
    }

    #[test]
    fn examples_keep_command_lines_verbatim() {
        let r = examples("examples:\n    tcplife -T   # time\n    tcplife\n\nsome prose\nmore")
            .to_roff();
        assert!(
            r.contains(".nf\ntcplife \\-T   # time\ntcplife\n.fi\n"),
            "{r}"
        );
        assert!(r.contains(".PP\nsome prose\nmore\n"), "{r}");
    }

    #[test]
    fn aliases_reach_the_help() {
        let t = tools::find("softirqs").unwrap();
        let cmd = tool_command(t);
        let d = cmd.get_arguments().find(|a| a.get_id() == "dist").unwrap();
        assert!(
            d.get_help()
                .unwrap()
                .to_string()
                .ends_with("[alias: --distributed]"),
            "{:?}",
            d.get_help()
        );
    }
}
