//! The command line, without BPF: help, flag errors, --ebpf, and the multi-call symlink. Runs as any user.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::{run_timeout, sockray_bin};

fn sockray(args: &[&str]) -> Output {
    run_timeout(
        Command::new(sockray_bin()).args(args),
        Duration::from_secs(20),
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn no_panic(o: &Output) {
    let all = text(&o.stdout) + &text(&o.stderr);
    assert!(!all.contains("panicked"), "panic output: {all}");
    assert!(!all.contains("RUST_BACKTRACE"), "panic output: {all}");
}

#[test]
fn top_level_help_lists_the_tools() {
    let o = sockray(&["--help"]);
    assert!(o.status.success(), "sockray --help: {}", o.status);
    let out = text(&o.stdout);
    let listed = sockray(&["--list-tools"]);
    let names: Vec<String> = text(&listed.stdout).lines().map(str::to_string).collect();
    assert!(names.len() >= 15, "--list-tools: {names:?}");
    // each tool once, under a question
    for n in &names {
        let lines = out
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(n.as_str()))
            .count();
        assert_eq!(lines, 1, "{n} listed {lines} times:\n{out}");
    }
    assert!(out.contains("who connects where, and when?"), "{out}");
    no_panic(&o);
}

#[test]
fn tool_help_shows_its_flags() {
    for tool in ["tcplife", "tcpstates", "tcpretrans", "tcpsynbl", "tcpdrop"] {
        let o = sockray(&[tool, "--help"]);
        assert!(o.status.success(), "sockray {tool} --help: {}", o.status);
        let out = text(&o.stdout);
        for flag in ["-L", "-4", "-6", "--json"]
            .into_iter()
            .chain((tool != "tcpsynbl").then_some("-D"))
        {
            assert!(
                out.contains(flag),
                "sockray {tool} --help lacks {flag}:\n{out}"
            );
        }
        no_panic(&o);
    }
    let out = text(&sockray(&["tcplife", "--help"]).stdout);
    assert!(out.contains("-p"), "tcplife --help lacks -p:\n{out}");
}

#[test]
fn bad_port_is_a_one_line_error() {
    for tool in ["tcplife", "tcpstates", "tcpretrans", "tcpsynbl", "tcpdrop"] {
        for flag in ["-L", "-D"] {
            if tool == "tcpsynbl" && flag == "-D" {
                continue;
            }
            let o = sockray(&[tool, flag, "70000"]);
            assert!(!o.status.success(), "sockray {tool} {flag} 70000 succeeded");
            no_panic(&o);
            let err = text(&o.stderr);
            // the message itself is one line; clap's "For more information, try '--help'." hint may follow
            let lines: Vec<&str> = err
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with("For more information"))
                .collect();
            assert_eq!(
                lines.len(),
                1,
                "sockray {tool} {flag} 70000: want a one-line error, got:\n{err}"
            );
            assert!(
                lines[0].contains("70000"),
                "the error does not name the port:\n{err}"
            );
            assert!(o.stdout.is_empty(), "stdout: {}", text(&o.stdout));
        }
    }
}

#[test]
fn unknown_tool_fails() {
    let o = sockray(&["nosuchtool"]);
    assert!(!o.status.success(), "sockray nosuchtool succeeded");
    no_panic(&o);
    assert!(
        text(&o.stderr).contains("nosuchtool"),
        "stderr: {}",
        text(&o.stderr)
    );
}

#[test]
fn ebpf_prints_the_program() {
    for tool in ["tcplife", "tcpstates", "tcpretrans", "tcpsynbl", "tcpdrop"] {
        let o = sockray(&[tool, "--ebpf"]);
        assert!(
            o.status.success(),
            "sockray {tool} --ebpf: {} {}",
            o.status,
            text(&o.stderr)
        );
        let out = text(&o.stdout);
        assert!(
            out.contains("inet_sock_set_state"),
            "sockray {tool} --ebpf:\n{out}"
        );
        assert!(out.contains("SEC("), "not BPF C:\n{out}");
        if tool == "tcpsynbl" {
            // with the objects that find tcp_rcv_state_process
            assert!(out.contains("---- bpf/ksymrange.bpf.c ----"), "{out}");
            assert!(out.contains("---- bpf/ksymwalk.bpf.c ----"), "{out}");
        }
        no_panic(&o);
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "sockray-cli-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn symlink_named_after_a_tool_runs_it() {
    let dir = TempDir::new();
    for tool in ["tcplife", "tcpstates", "tcpretrans", "tcpsynbl", "tcpdrop"] {
        let link = dir.0.join(tool);
        std::os::unix::fs::symlink(sockray_bin(), &link).unwrap();
        let o = run_timeout(Command::new(&link).arg("--help"), Duration::from_secs(20));
        assert!(
            o.status.success(),
            "{tool} --help via symlink: {} {}",
            o.status,
            text(&o.stderr)
        );
        let out = text(&o.stdout);
        assert!(out.contains("-L"), "{tool} --help via symlink:\n{out}");
        assert!(
            out.contains(tool),
            "{tool} --help via symlink does not name the tool:\n{out}"
        );
        no_panic(&o);
    }
}

#[test]
fn tcprtt_help_bad_values_ebpf_and_symlink() {
    let o = sockray(&["tcprtt", "--help"]);
    assert!(o.status.success(), "sockray tcprtt --help: {}", o.status);
    let out = text(&o.stdout);
    for flag in [
        "-i",
        "-d",
        "-T",
        "-m",
        "-p",
        "-P",
        "-a",
        "-A",
        "-b",
        "-B",
        "-e",
        "-4",
        "-6",
        "--json",
        "--by-process",
        "--by-rport",
    ] {
        assert!(
            out.contains(flag),
            "sockray tcprtt --help lacks {flag}:\n{out}"
        );
    }
    no_panic(&o);
    for (flag, value) in [("-p", "70000"), ("-P", "70000"), ("-a", "10.0.0.300")] {
        let o = sockray(&["tcprtt", flag, value]);
        assert!(
            !o.status.success(),
            "sockray tcprtt {flag} {value} succeeded"
        );
        no_panic(&o);
        let err = text(&o.stderr);
        assert!(
            err.contains(value),
            "the error does not name {value}:\n{err}"
        );
        assert!(o.stdout.is_empty(), "stdout: {}", text(&o.stdout));
    }
    let o = sockray(&["tcprtt", "--ebpf"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("tp_btf/tcp_probe"), "{out}");
    assert!(out.contains("raw_tp/tcp_probe"), "{out}");
    let dir = TempDir::new();
    let link = dir.0.join("tcprtt");
    std::os::unix::fs::symlink(sockray_bin(), &link).unwrap();
    let o = run_timeout(Command::new(&link).arg("--help"), Duration::from_secs(20));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("tcprtt"), "{}", text(&o.stdout));
}

#[test]
fn tcptop_command_line() {
    let o = sockray(&["tcptop", "--help"]);
    assert!(o.status.success(), "tcptop --help: {}", o.status);
    let out = text(&o.stdout);
    for flag in [
        "-C",
        "-S",
        "-p",
        "-4",
        "-6",
        "-r",
        "-s",
        "--cgroup",
        "--json",
        "INTERVAL",
        "COUNT",
        "--walk",
        "bytes acked by the peer",
    ] {
        assert!(out.contains(flag), "tcptop --help lacks {flag}:\n{out}");
    }
    no_panic(&o);
    let o = sockray(&["tcptop", "--ebpf"]);
    assert!(o.status.success(), "tcptop --ebpf: {}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("sock_send_length") && out.contains("SEC("),
        "{out}"
    );
    // --walk's program: the socket walk, no data-path hook
    let o = sockray(&["tcptop", "--walk", "--ebpf"]);
    let out = text(&o.stdout);
    assert!(o.status.success() && out.contains("iter/tcp"), "{out}");
    assert!(!out.contains("SEC(\"tp_btf/sock_send_length"), "{out}");
    for bad in [&["-s", "bytes"][..], &["0"][..], &["-r", "0"][..]] {
        let mut args = vec!["tcptop"];
        args.extend_from_slice(bad);
        let o = sockray(&args);
        assert!(!o.status.success(), "tcptop {bad:?} succeeded");
        assert!(o.stdout.is_empty(), "stdout: {}", text(&o.stdout));
        no_panic(&o);
    }
    let dir = TempDir::new();
    let link = dir.0.join("tcptop");
    std::os::unix::fs::symlink(sockray_bin(), &link).unwrap();
    let o = run_timeout(Command::new(&link).arg("--help"), Duration::from_secs(20));
    assert!(o.status.success() && text(&o.stdout).contains("tcptop"));
}

#[test]
fn tcpcong_command_line() {
    let o = sockray(&["tcpcong", "--help"]);
    assert!(o.status.success(), "tcpcong --help: {}", o.status);
    let out = text(&o.stdout);
    for flag in [
        "-L",
        "--localport",
        "-R",
        "--remoteport",
        "-T",
        "-d",
        "--dist",
        "-u",
        "--microseconds",
        "--owner",
        "-4",
        "-6",
        "--json",
        "--ebpf",
        "--verbose",
        "INTERVAL",
        "OUTPUTS",
        "tcpcong -L 3000-3006 1",
    ] {
        assert!(out.contains(flag), "tcpcong --help lacks {flag}:\n{out}");
    }
    no_panic(&o);
    let o = sockray(&["tcpcong", "--ebpf"]);
    assert!(o.status.success(), "tcpcong --ebpf: {}", text(&o.stderr));
    let out = text(&o.stdout);
    for want in [
        "tp_btf/tcp_cong_state_set",
        "raw_tp/tcp_cong_state_set",
        "fexit/tcp_fastretrans_alert",
        "inet_sock_set_state",
    ] {
        assert!(out.contains(want), "tcpcong --ebpf lacks {want}:\n{out}");
    }
    for bad in [
        &["-L", "70000"][..],
        &["-R", "9-3"][..],
        &["0"][..],
        &["1", "0"][..],
    ] {
        let mut args = vec!["tcpcong"];
        args.extend_from_slice(bad);
        let o = sockray(&args);
        assert!(!o.status.success(), "tcpcong {bad:?} succeeded");
        assert!(o.stdout.is_empty(), "stdout: {}", text(&o.stdout));
        no_panic(&o);
    }
    let dir = TempDir::new();
    let link = dir.0.join("tcpcong");
    std::os::unix::fs::symlink(sockray_bin(), &link).unwrap();
    let o = run_timeout(Command::new(&link).arg("--help"), Duration::from_secs(20));
    assert!(o.status.success() && text(&o.stdout).contains("tcpcong"));
}

#[test]
fn netqtop_command_line() {
    let o = sockray(&["netqtop", "--help"]);
    assert!(o.status.success(), "netqtop --help: {}", o.status);
    let out = text(&o.stdout);
    for flag in [
        "-n, --name",
        "-i, --interval",
        "-t, --throughput",
        "--json",
        "--ebpf",
        "COUNT",
        "examples:",
    ] {
        assert!(out.contains(flag), "netqtop --help lacks {flag}:\n{out}");
    }
    no_panic(&o);
    let o = sockray(&["netqtop", "--ebpf"]);
    assert!(o.status.success(), "netqtop --ebpf: {}", text(&o.stderr));
    let out = text(&o.stdout);
    for hook in [
        "tp_btf/net_dev_start_xmit",
        "raw_tp/net_dev_start_xmit",
        "tp_btf/netif_receive_skb",
        "raw_tp/netif_receive_skb",
        "struct netqtop_queue",
    ] {
        assert!(out.contains(hook), "{out}");
    }
    // no interface, a bad interval, a name no interface can have, one that is not there
    for bad in [
        &[][..],
        &["-n", "lo", "-i", "0"][..],
        &["-n", "lo", "-i", "-1"][..],
        &["-n", "lo", "0"][..],
        &["-n", "a/b"][..],
        &["-n", "srnosuchnic0"][..],
    ] {
        let mut args = vec!["netqtop"];
        args.extend_from_slice(bad);
        let o = sockray(&args);
        assert!(!o.status.success(), "netqtop {bad:?} succeeded");
        assert!(o.stdout.is_empty(), "stdout: {}", text(&o.stdout));
        no_panic(&o);
    }
}

#[test]
fn softirqs_command_line() {
    let o = sockray(&["softirqs", "--help"]);
    assert!(o.status.success(), "softirqs --help: {}", o.status);
    let out = text(&o.stdout);
    for flag in [
        "-T",
        "-N",
        "-C",
        "-d",
        "-c",
        "--per-cpu",
        "--json",
        "--ebpf",
        "INTERVAL",
        "COUNT",
    ] {
        assert!(out.contains(flag), "softirqs --help lacks {flag}:\n{out}");
    }
    no_panic(&o);
    let o = sockray(&["softirqs", "--ebpf"]);
    assert!(o.status.success(), "softirqs --ebpf: {}", text(&o.stderr));
    let out = text(&o.stdout);
    for hook in [
        "tp_btf/softirq_entry",
        "raw_tp/softirq_entry",
        "tp_btf/softirq_exit",
        "raw_tp/softirq_exit",
    ] {
        assert!(out.contains(hook), "{out}");
    }
    assert!(
        !out.contains("---- bpf/sockowner.bpf.h ----"),
        "no socket-owner component"
    );
    // BCC refuses -C with the time options; a CPU that is not there, a zero interval
    for bad in [
        &["-C", "-d"][..],
        &["-C", "-N"][..],
        &["-c", "100000"][..],
        &["-c", "x"][..],
        &["0"][..],
    ] {
        let mut args = vec!["softirqs"];
        args.extend_from_slice(bad);
        let o = sockray(&args);
        assert!(!o.status.success(), "softirqs {bad:?} succeeded");
        assert!(o.stdout.is_empty(), "stdout: {}", text(&o.stdout));
        no_panic(&o);
    }
    let o = sockray(&["softirqs", "-c", "100000"]);
    assert!(
        text(&o.stderr).contains("invalid CPU 100000"),
        "{}",
        text(&o.stderr)
    );
    let dir = TempDir::new();
    let link = dir.0.join("softirqs");
    std::os::unix::fs::symlink(sockray_bin(), &link).unwrap();
    let o = run_timeout(Command::new(&link).arg("--help"), Duration::from_secs(20));
    assert!(o.status.success() && text(&o.stdout).contains("softirqs"));
}

/// BCC's and libbpf-tools' own usage examples (their `-h` texts), typed as is: every one is accepted.
/// `--ebpf` stops each right after its flags are parsed (no BPF needed). Example values that name
/// things on the authors' machines (a cgroup path, a pinned map) point at this machine's.
#[test]
fn bcc_usage_examples_parse() {
    let cgroup = "/sys/fs/cgroup";
    let examples = [
        "softirqs",
        "softirqs -C",
        "softirqs -d",
        "softirqs 1 10",
        "softirqs -NT 1",
        "softirqs -c 0",
        "solisten",
        "solisten -t",
        "solisten -p 1216",
        "tcpaccept",
        "tcpaccept -t",
        "tcpaccept -P 80,81",
        "tcpaccept -p 181",
        "tcpaccept -4",
        "tcpaccept -6",
        "tcpcong",
        "tcpcong 1 10",
        "tcpcong -L 3000-3006 1",
        "tcpcong -R 5000-5005 1",
        "tcpcong -uT 1",
        "tcpcong -d",
        "tcpconnect",
        "tcpconnect -t",
        "tcpconnect -d",
        "tcpconnect -p 181",
        "tcpconnect -P 80",
        "tcpconnect -P 80,81",
        "tcpconnect -4",
        "tcpconnect -6",
        "tcpconnect -U",
        "tcpconnect -u 1000",
        "tcpconnect -c",
        "tcpconnect -L",
        "tcpconnlat",
        "tcpconnlat 1",
        "tcpconnlat 0.1",
        "tcpconnlat -t",
        "tcpconnlat -p 181",
        "tcpconnlat -L",
        "tcpconnlat -4",
        "tcpconnlat -6",
        "tcpdrop",
        "tcpdrop -4",
        "tcpdrop -6",
        "tcplife",
        "tcplife -T",
        "tcplife -w",
        "tcplife -stT",
        "tcplife -p 181",
        "tcplife -L 80",
        "tcplife -L 80,81",
        "tcplife -D 80",
        "tcplife -4",
        "tcplife -6",
        "tcplife -p 1215 -4",
        "tcpretrans",
        "tcpretrans -l",
        "tcpretrans -4",
        "tcpretrans -6",
        "tcpretrans -s",
        "tcpretrans -c",
        "tcprtt",
        "tcprtt -i 1 -d 10",
        "tcprtt -m -T",
        "tcprtt -p 80",
        "tcprtt -P 80",
        "tcprtt -a 10.0.0.1",
        "tcprtt -A 10.0.0.2",
        "tcprtt -b",
        "tcprtt -B",
        "tcprtt -e",
        "tcprtt -4",
        "tcprtt -6",
        "tcpstates",
        "tcpstates -t",
        "tcpstates -T",
        "tcpstates -w",
        "tcpstates -stT",
        "tcpstates -Y",
        "tcpstates -L 80",
        "tcpstates -L 80,81",
        "tcpstates -D 80",
        "tcpstates -4",
        "tcpstates -6",
        "tcpsubnet",
        "tcpsubnet -f K",
        "tcpsubnet 10.80.0.0/24",
        "tcpsubnet -J",
        "tcpsynbl",
        "tcpsynbl -4",
        "tcpsynbl -6",
        "tcpsynbl 1 10",
        "tcpsynbl -T 1",
        "tcptop",
        "tcptop -C",
        "tcptop -p 181",
        "tcptop -4",
        "tcptop -6",
        "tcptop 5 10",
        "tcptop -c CGROUP",
        "tcptop -C -S 1 2",
        "tcptop -r 10 -s sent",
        "tcptracer",
        "tcptracer -t",
        "tcptracer -p 181",
        "tcptracer -U",
        "tcptracer -u 1000",
        "tcptracer -v",
        "tcptracer -N 4026531840",
        "tcpaccept --cgroupmap mappath",
        "tcpaccept --mntnsmap mappath",
        "tcpconnect --cgroupmap mappath",
        "tcpconnect --mntnsmap mappath",
        "tcpconnect -C mappath",
        "tcpconnect -M mappath",
        "tcptop --cgroupmap mappath",
        "tcptop --mntnsmap mappath",
        "tcptracer --cgroupmap mappath",
        "tcptracer --mntnsmap mappath",
        "tcptracer -C mappath",
        "tcptracer -M mappath",
        "sofdsnoop",
        "sofdsnoop -T",
        "sofdsnoop -p 181",
        "sofdsnoop -t 123",
        "sofdsnoop -d 10",
        "sofdsnoop -n main",
        "netqtop -n lo",
        "netqtop -n lo -i 1",
        "netqtop -n lo -i 0.5 -t",
        "netqtop --name lo --throughput",
    ];
    for ex in examples {
        let mut args: Vec<&str> = ex
            .split_whitespace()
            .map(|a| if a == "CGROUP" { cgroup } else { a })
            .collect();
        args.push("--ebpf");
        let o = sockray(&args);
        no_panic(&o);
        assert!(
            o.status.success() && text(&o.stdout).contains("SEC("),
            "`{ex}` as BCC's help types it is refused: {}",
            text(&o.stderr)
        );
    }
    // BCC tcprtt's -D: the BPF program
    let o = sockray(&["tcprtt", "-D"]);
    assert!(
        o.status.success() && text(&o.stdout).contains("tcp_probe"),
        "tcprtt -D: {}",
        text(&o.stderr)
    );
}

/// The flags a tool's `-h` lists in its options: each `-X` and `--long`, and the aliases it names.
fn help_flags(help: &str) -> Vec<String> {
    let mut flags = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        if line.starts_with("  ") && t.starts_with('-') {
            // "-c, --cpu <CPU>    help": the flags are before the first double space
            let head = t.split("  ").next().unwrap_or("");
            for w in head.split([',', ' ']) {
                if w.starts_with('-') && w.len() > 1 {
                    flags.push(w.to_string());
                }
            }
        }
        for tag in ["[alias: ", "[aliases: "] {
            if let Some(i) = line.find(tag) {
                let rest = &line[i + tag.len()..];
                let list = rest.split(']').next().unwrap_or("");
                flags.extend(list.split(", ").map(str::to_string));
            }
        }
    }
    flags
}

/// Roff source as plain text: escapes and font changes undone.
fn unroff(s: &str) -> String {
    s.replace("\\*(Aq", "'")
        .replace("\\-", "-")
        .replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\fP", "")
        .replace("\\&", "")
        .replace("\\\\", "\\")
}

/// The text of one `.SH NAME` section of a page (unroffed).
fn man_section(page: &str, name: &str) -> String {
    let page = unroff(page);
    let start = format!(".SH {name}\n");
    let from = page
        .find(&start)
        .unwrap_or_else(|| panic!("no {name} section:\n{page}"))
        + start.len();
    let rest = &page[from..];
    rest[..rest.find("\n.SH ").unwrap_or(rest.len())].to_string()
}

#[test]
fn man_pages_say_what_help_says() {
    let dir = TempDir::new();
    let o = sockray(&["man", dir.0.to_str().unwrap()]);
    no_panic(&o);
    assert!(o.status.success(), "sockray man: {}", text(&o.stderr));
    let tools: Vec<String> = text(&sockray(&["--list-tools"]).stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(tools.len(), 17, "{tools:?}");
    let mut files: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut want: Vec<String> = vec!["sockray.8".to_string()];
    for t in &tools {
        want.push(format!("sockray-{t}.8"));
        want.push(format!("{t}.8"));
    }
    want.sort();
    assert_eq!(files, want);

    let main = std::fs::read_to_string(dir.0.join("sockray.8")).unwrap();
    let listed = man_section(&main, "TOOLS");
    for t in &tools {
        assert!(
            listed.contains(&format!("sockray-{t}(8)")),
            "sockray.8 lacks {t}:\n{listed}"
        );
        let stub = std::fs::read_to_string(dir.0.join(format!("{t}.8"))).unwrap();
        assert_eq!(stub, format!(".so man8/sockray-{t}.8\n"));

        let page = std::fs::read_to_string(dir.0.join(format!("sockray-{t}.8"))).unwrap();
        assert!(page.starts_with(".ie \\n(.g"), "{t}: {page}");
        assert!(
            page.contains(&format!(".TH SOCKRAY-{} 8 ", t.to_uppercase())),
            "{t}"
        );
        let h = sockray(&[t, "-h"]);
        assert!(h.status.success(), "{t} -h: {}", text(&h.stderr));
        let help = text(&h.stdout);
        let flags = help_flags(&help);
        assert!(
            flags.len() >= 4 && flags.iter().any(|f| f == "--json"),
            "{t}: {flags:?}"
        );
        let options = man_section(&page, "OPTIONS");
        let words: Vec<&str> = options
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .collect();
        for f in &flags {
            assert!(
                words.contains(&f.as_str()),
                "{t}: -h lists {f}, its man page's OPTIONS do not:\n{options}"
            );
        }
        // the first example line of -h, and every one, as a line of EXAMPLES
        let examples: Vec<&str> = help
            .split_once("\nexamples:\n")
            .unwrap_or_else(|| panic!("{t} -h has no examples:\n{help}"))
            .1
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .map(str::trim)
            .collect();
        assert!(
            examples.first().is_some_and(|e| e.starts_with(t.as_str())),
            "{t}: {examples:?}"
        );
        let man_examples = man_section(&page, "EXAMPLES");
        let man_lines: Vec<&str> = man_examples.lines().map(str::trim).collect();
        for e in &examples {
            assert!(
                man_lines.contains(e),
                "{t}: -h example `{e}` is not a line of its man page:\n{man_examples}"
            );
        }
    }
}

/// Rendered by man(1) itself, where it is installed: no warnings, the examples there, and `man TOOL`'s
/// page reaching sockray-TOOL's through the `.so` stub.
#[test]
fn man_pages_render() {
    if Command::new("man").arg("--version").output().is_err() {
        eprintln!("man(1) not installed: skipped");
        return;
    }
    let dir = TempDir::new();
    let man8 = dir.0.join("man8");
    let o = sockray(&["man", man8.to_str().unwrap()]);
    assert!(o.status.success(), "sockray man: {}", text(&o.stderr));
    for page in ["man8/sockray.8", "man8/sockray-tcplife.8", "man8/tcplife.8"] {
        let o = run_timeout(
            Command::new("man")
                .args(["--warnings", "-l", page])
                .current_dir(&dir.0)
                .env("MANWIDTH", "100")
                .env("MANPAGER", "cat")
                .env("PAGER", "cat"),
            Duration::from_secs(20),
        );
        let out = text(&o.stdout);
        assert!(o.status.success(), "man -l {page}: {}", text(&o.stderr));
        assert!(
            o.stderr.is_empty(),
            "man -l {page} warns: {}",
            text(&o.stderr)
        );
        if page == "man8/sockray.8" {
            assert!(out.contains("sockray-tcplife(8)"), "{out}");
        } else {
            assert!(out.contains("tcplife -stT"), "{page}:\n{out}");
            assert!(out.contains("--localport"), "{page}:\n{out}");
        }
    }
}

#[test]
fn completions_cover_every_tool_and_flag() {
    let tools: Vec<String> = text(&sockray(&["--list-tools"]).stdout)
        .lines()
        .map(str::to_string)
        .collect();
    for shell in ["bash", "zsh", "fish"] {
        let o = sockray(&["completions", shell]);
        no_panic(&o);
        assert!(
            o.status.success(),
            "completions {shell}: {}",
            text(&o.stderr)
        );
        let script = text(&o.stdout);
        for t in &tools {
            assert!(script.contains(t.as_str()), "{shell} completions lack {t}");
        }
        // the shell's own syntax check, where that shell is installed (bash is, below)
        let check = Command::new(shell).args(["-n", "-c", &script]).output();
        if let Ok(c) = check {
            assert!(c.status.success(), "{shell} -n: {}", text(&c.stderr));
        }
    }
    let o = sockray(&["completions", "tcsh"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "completions tcsh: {}",
        text(&o.stderr)
    );

    let bin = sockray_bin();
    let bash = |script: &str| {
        let o = run_timeout(
            Command::new("bash").args(["-c", script, "bash", &bin]),
            Duration::from_secs(20),
        );
        assert!(o.status.success(), "bash: {script}: {}", text(&o.stderr));
        text(&o.stdout)
    };
    let out = bash(r#"source <("$1" completions bash) && complete -p sockray"#);
    assert!(out.contains("_sockray sockray"), "{out}");
    // completing a tool name, and a tool's flag
    let complete = |words: &str| {
        bash(&format!(
            r#"source <("$1" completions bash) || exit 1
COMP_WORDS=({words}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
_sockray sockray "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#
        ))
    };
    let out = complete("sockray tcpl");
    assert_eq!(out.trim(), "tcplife", "sockray tcpl<TAB>: {out}");
    let out = complete("sockray tcplife --loc");
    assert_eq!(
        out.trim(),
        "--localport",
        "sockray tcplife --loc<TAB>: {out}"
    );
    let out = complete("sockray softirqs --dist");
    assert!(
        out.contains("--distributed"),
        "sockray softirqs --dist<TAB>: {out}"
    );

    // each tool run through its symlink has a script of its own
    for t in &tools {
        for shell in ["bash", "zsh", "fish"] {
            let o = sockray(&["completions", shell, t]);
            assert!(
                o.status.success(),
                "completions {shell} {t}: {}",
                text(&o.stderr)
            );
            let script = text(&o.stdout);
            // fish spells it `-l json`
            assert!(
                script.contains(t.as_str()) && script.contains("json"),
                "{shell} {t}: {script}"
            );
            if let Ok(c) = Command::new(shell).args(["-n", "-c", &script]).output() {
                assert!(c.status.success(), "{shell} -n ({t}): {}", text(&c.stderr));
            }
        }
    }
    let o = sockray(&["completions", "bash", "nosuchtool"]);
    assert_eq!(o.status.code(), Some(2), "completions bash nosuchtool");
    let out = bash(
        r#"source <("$1" completions bash tcplife) || exit 1
complete -p tcplife || exit 1
COMP_WORDS=(tcplife --loc); COMP_CWORD=1
_tcplife tcplife --loc tcplife
printf '%s\n' "${COMPREPLY[@]}""#,
    );
    assert!(out.ends_with("--localport\n"), "tcplife --loc<TAB>: {out}");
}
