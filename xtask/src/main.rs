//! `cargo xtask <command>`: developer tasks for sockray (see `USAGE`).
//!
//! Plain std on purpose: it has to build on a fresh machine before anything else is installed.
//! One function per subcommand (`cmd_*`); shared steps are `deps`, `build` and `cargo`.

use std::collections::HashSet;
use std::env;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

mod bench;
mod rerun;
mod scale;
mod vmtest;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  deps                                 install missing build packages (Debian/Ubuntu, apt)
  run [--debug] [--] <tool> [args...]  build sockray and run a tool (via sudo when not root)
  test [-- <cargo test args>]          cargo fmt --check, clippy -D warnings, cargo test --release
  install [--prefix DIR] [--debug]     install sockray + one symlink per tool (prefix /usr/local),
                                       man pages (share/man/man8), bash/zsh/fish completions
  deb [--out DIR]                      a Debian package (target/deb): /usr/bin/sockray, the tools'
                                       symlinks in /usr/lib/sockray/bin (libbpf-tools has their
                                       names in /usr/sbin), man pages, completions
  bench [--rounds N] [--tool T]... [--tracer CMD]... [--verbose] [--starts N] [--startup-only]
        [--load conn|transfer|packets|unixmsg]
                                       start-up, RSS and the cost under a load vs libbpf-tools
                                       (20 rounds; T: tcplife, tcpstates, tcpconnect, tcpretrans,
                                       tcpsynbl, tcptop, tcpsubnet, tcprtt, tcpcong, netqtop,
                                       sofdsnoop or softirqs; CMD: any
                                       other tracer command line to compare, e.g. a variant;
                                       --verbose: every interval's rate; --starts: timed starts
                                       per tracer, 11; --startup-only: no load runs; --load:
                                       a loopback connection flood (conn, the default: every
                                       tool but those below) or a loopback transfer in 1 KiB
                                       writes (transfer: tcptop, tcpsubnet, tcprtt) or a UDP packet
                                       flood over a veth pair (packets: netqtop, softirqs) or
                                       sendmsg/recvmsg over a Unix socketpair without control
                                       messages (unixmsg: sofdsnoop))
  bench --scale [--conns N] [--close-rate R]
                                       a server's worth of sockets: N connections (500,000: a
                                       million sockets) held, then closed at R a second (25,000;
                                       0: at once), with and without tcplife: times, rows, lost,
                                       RSS, map memory
  vmtest [--kernel S] [--path P] [--quick] [--report] [-- <test args>]
                                       integration tests under Debian kernels in QEMU (--help)
";

/// Debian/Ubuntu packages needed to build and run sockray (clang for the BPF C, static
/// libbpf/libelf/zlib): all that `cargo xtask run` and `install` install.
const BUILD_PACKAGES: &[&str] = &[
    "clang",
    "llvm",
    "gcc",
    "make",
    "pkg-config",
    "libelf-dev",
    "zlib1g-dev",
];

/// What the tests need besides (`ip netns`; systemd-journald and journalctl for `tcpstates -Y`).
pub(crate) const TEST_PACKAGES: &[&str] = &["iproute2", "systemd", "prometheus"];

/// What the bench needs besides (libbpf-tools is its baseline; `taskset` from util-linux pins the load
/// generator).
const BENCH_PACKAGES: &[&str] = &["iproute2", "libbpf-tools", "util-linux"];

/// A failed command: message for stderr (may be empty) and the process exit code.
struct Fail {
    code: u8,
    msg: String,
}

type Res<T = ()> = Result<T, Fail>;

fn fail(msg: impl Into<String>) -> Fail {
    Fail {
        code: 1,
        msg: msg.into(),
    }
}

fn usage_err(msg: impl std::fmt::Display) -> Fail {
    Fail {
        code: 2,
        msg: format!("{msg} (see `cargo xtask --help`)"),
    }
}

fn print_usage() {
    let _ = io::stdout().write_all(USAGE.as_bytes());
}

fn main() -> ExitCode {
    let mut args = env::args_os().skip(1);
    let cmd = args.next().map(|c| c.to_string_lossy().into_owned());
    let rest: Vec<OsString> = args.collect();
    let result = match cmd.as_deref() {
        Some("-h" | "--help" | "help") => {
            print_usage();
            Ok(())
        }
        Some("deps") => cmd_deps(&rest),
        Some("run") => cmd_run(&rest),
        Some("test") => cmd_test(&rest),
        Some("install") => cmd_install(&rest),
        Some("deb") => cmd_deb(&rest),
        Some("bench") => cmd_bench(&rest),
        Some("vmtest") => vmtest::cmd(&rest),
        Some("__load") => bench::load(&rest).map_err(fail),
        other => {
            if let Some(other) = other {
                eprintln!("xtask: error: unknown command `{other}`");
            }
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.msg.is_empty() {
                eprintln!("xtask: error: {}", f.msg);
            }
            ExitCode::from(f.code)
        }
    }
}

// ---- subcommands ----

fn cmd_deps(args: &[OsString]) -> Res {
    if let Some(a) = args.first() {
        return Err(usage_err(format!("deps: unexpected argument {a:?}")));
    }
    deps()
}

fn cmd_run(args: &[OsString]) -> Res {
    let mut profile = Profile::Release;
    let mut i = 0;
    while let Some(a) = args.get(i).and_then(|a| a.to_str()) {
        match a {
            "--debug" => profile = Profile::Debug,
            "--release" => profile = Profile::Release,
            "-h" | "--help" => {
                print_usage();
                return Ok(());
            }
            "--" => {
                i += 1;
                break;
            }
            _ if a.starts_with('-') => return Err(usage_err(format!("run: unknown option `{a}`"))),
            _ => break,
        }
        i += 1;
    }
    let Some((tool, tool_args)) = args[i..].split_first() else {
        return Err(usage_err(
            "run: missing <tool>, e.g. `cargo xtask run -- tcplife`",
        ));
    };
    deps()?;
    let bin = build(profile)?;
    let mut cmd = if !is_root() && find_cmd("sudo").is_some() {
        eprintln!("xtask: not root, running via sudo");
        let mut c = Command::new("sudo");
        c.arg("--").arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    // exec: the tool gets our stdin/stdout/stderr, signals (Ctrl-C) and exit code directly.
    let err = cmd.arg(tool).args(tool_args).exec();
    Err(fail(format!("cannot run {}: {err}", bin.display())))
}

fn cmd_test(args: &[OsString]) -> Res {
    let extra = match args.split_first() {
        None => &[][..],
        Some((first, rest)) if first == "--" => rest,
        Some((first, _)) if first == "-h" || first == "--help" => {
            print_usage();
            return Ok(());
        }
        Some((first, _)) => {
            return Err(usage_err(format!(
                "test: unexpected argument {first:?}; cargo test arguments go after `--`"
            )));
        }
    };
    deps()?;
    install_packages("tests: ", TEST_PACKAGES)?;
    ensure_tracefs();
    ensure_components();
    step(cargo().args(["fmt", "--all", "--", "--check"]))?;
    step(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // release: the tests run the tool as users run it (the scale tests' hundreds of thousands of rows
    // outrun an unoptimised build's reader)
    // every test binary runs (--no-fail-fast); one that failed only on runs the kernel skipped is
    // run again (src/rerun.rs)
    let mut test = cargo();
    test.args(["test", "--workspace", "--release", "--no-fail-fast"])
        .args(extra);
    rerun::cargo_test(test, &workspace_root())
}

fn cmd_install(args: &[OsString]) -> Res {
    let mut prefix = PathBuf::from("/usr/local");
    let mut profile = Profile::Release;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--debug") => profile = Profile::Debug,
            Some("--release") => profile = Profile::Release,
            Some("--prefix") => match it.next() {
                Some(dir) => prefix = PathBuf::from(dir),
                None => return Err(usage_err("install: --prefix needs a directory")),
            },
            Some(a) if a.starts_with("--prefix=") => {
                prefix = PathBuf::from(&a["--prefix=".len()..])
            }
            Some("-h" | "--help") => {
                print_usage();
                return Ok(());
            }
            _ => return Err(usage_err(format!("install: unexpected argument {a:?}"))),
        }
    }
    if prefix.as_os_str().is_empty() {
        return Err(usage_err("install: empty --prefix"));
    }
    deps()?;
    let built = build(profile)?;
    let tools = list_tools(&built)?;

    let bin_dir = prefix.join("bin");
    fs::create_dir_all(&bin_dir).map_err(|e| io_fail("cannot create", &bin_dir, e))?;
    let dest = bin_dir.join("sockray");
    let previous = fs::metadata(&dest).ok(); // a tool hard-linked to it is ours too
    // Copy beside the target and rename over it: works even while the old binary is running.
    let tmp = bin_dir.join(".sockray.xtask-new");
    let copied = fs::copy(&built, &tmp)
        .and_then(|_| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)))
        .and_then(|()| fs::rename(&tmp, &dest));
    if let Err(e) = copied {
        let _ = fs::remove_file(&tmp);
        return Err(io_fail("cannot install", &dest, e));
    }
    println!("installed {}", dest.display());

    let ours = |m: &fs::Metadata| {
        m.is_file()
            && previous
                .as_ref()
                .is_some_and(|p| (p.dev(), p.ino()) == (m.dev(), m.ino()))
    };
    let mut linked = Vec::new();
    for tool in &tools {
        let link = bin_dir.join(tool);
        match fs::symlink_metadata(&link) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_fail("cannot stat", &link, e)),
            Ok(m) if m.file_type().is_symlink() => {}
            Ok(m) if ours(&m) => {}
            Ok(_) => {
                eprintln!(
                    "xtask: warning: {} exists and is not a symlink; skipped",
                    link.display()
                );
                continue;
            }
        }
        let tmp = bin_dir.join(format!(".{tool}.xtask-new"));
        let _ = fs::remove_file(&tmp);
        symlink("sockray", &tmp)
            .and_then(|()| fs::rename(&tmp, &link))
            .map_err(|e| io_fail("cannot create symlink", &link, e))?;
        linked.push(tool.as_str());
    }
    println!(
        "linked {} tool(s) in {} -> sockray: {}",
        linked.len(),
        bin_dir.display(),
        linked.join(" ")
    );
    install_docs(&built, &prefix, &tools)?;
    install_unit(&prefix, &bin_dir)
}

/// The systemd unit of `sockray serve` (dist/sockray-serve.service) into `<prefix>/lib/systemd/system`,
/// running the binary in `bin_dir` (where it is once installed: /usr/bin for the package).
fn install_unit(prefix: &Path, bin_dir: &Path) -> Res {
    let src = workspace_root().join("dist/sockray-serve.service");
    let text = fs::read_to_string(&src).map_err(|e| io_fail("cannot read", &src, e))?;
    let dir = prefix.join("lib/systemd/system");
    fs::create_dir_all(&dir).map_err(|e| io_fail("cannot create", &dir, e))?;
    let dest = dir.join("sockray-serve.service");
    fs::write(&dest, text.replace("@BINDIR@", &bin_dir.to_string_lossy()))
        .map_err(|e| io_fail("cannot write", &dest, e))?;
    println!(
        "installed {} (`systemctl daemon-reload; systemctl enable --now sockray-serve`)",
        dest.display()
    );
    Ok(())
}

/// Where the .deb puts the tools' names: not /usr/sbin, where Debian's libbpf-tools puts its own
/// `tcplife`, `tcptop`, ... (bcc's are `*-bpfcc`); users put this directory on PATH, or run
/// `sockray TOOL`.
const DEB_TOOL_DIR: &str = "usr/lib/sockray/bin";

/// `cargo xtask deb [--out DIR]`: a Debian package of the release build, made with dpkg-deb from a
/// staged tree: /usr/bin/sockray, a symlink per tool in /usr/lib/sockray/bin, the man pages and the
/// completions (as install makes them), the licenses.
fn cmd_deb(args: &[OsString]) -> Res {
    let mut out_dir = PathBuf::from("target/deb");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--out") => match it.next() {
                Some(d) => out_dir = PathBuf::from(d),
                None => return Err(usage_err("deb: --out needs a directory")),
            },
            Some("-h" | "--help") => {
                print_usage();
                return Ok(());
            }
            _ => return Err(usage_err(format!("deb: unexpected argument {a:?}"))),
        }
    }
    deps()?;
    let built = build(Profile::Release)?;
    let tools = list_tools(&built)?;
    let arch = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .ok_or_else(|| fail("deb: dpkg --print-architecture failed (not a Debian system?)"))?;
    let deb = stage_deb(&built, &tools, &out_dir, env!("CARGO_PKG_VERSION"), &arch)?;
    println!("built {}", deb.display());
    Ok(())
}

/// Stages the package tree under `out_dir` and builds `sockray_VERSION_ARCH.deb` there.
fn stage_deb(
    bin: &Path,
    tools: &[String],
    out_dir: &Path,
    version: &str,
    arch: &str,
) -> Res<PathBuf> {
    let name = format!("sockray_{version}_{arch}");
    let root = out_dir.join(&name);
    let _ = fs::remove_dir_all(&root);
    let usr_bin = root.join("usr/bin");
    fs::create_dir_all(&usr_bin).map_err(|e| io_fail("cannot create", &usr_bin, e))?;
    let dest = usr_bin.join("sockray");
    fs::copy(bin, &dest)
        .and_then(|_| fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)))
        .map_err(|e| io_fail("cannot copy the binary to", &dest, e))?;
    let tool_dir = root.join(DEB_TOOL_DIR);
    fs::create_dir_all(&tool_dir).map_err(|e| io_fail("cannot create", &tool_dir, e))?;
    for tool in tools {
        let link = tool_dir.join(tool);
        symlink("/usr/bin/sockray", &link)
            .map_err(|e| io_fail("cannot create symlink", &link, e))?;
    }
    install_docs(bin, &root.join("usr"), tools)?;
    install_unit(&root.join("usr"), Path::new("/usr/bin"))?;
    let doc = root.join("usr/share/doc/sockray");
    fs::create_dir_all(&doc).map_err(|e| io_fail("cannot create", &doc, e))?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let copyright = [
        "LICENSE",
        "LICENSES/GPL-2.0-only.txt",
        "LICENSES/BSD-2-Clause.txt",
    ]
    .iter()
    .filter_map(|f| fs::read_to_string(manifest.join(f)).ok())
    .collect::<Vec<_>>()
    .join("\n\n");
    fs::write(doc.join("copyright"), copyright)
        .map_err(|e| io_fail("cannot write", &doc.join("copyright"), e))?;
    let control_dir = root.join("DEBIAN");
    fs::create_dir_all(&control_dir).map_err(|e| io_fail("cannot create", &control_dir, e))?;
    let size_kib = dir_size(&root) / 1024 + 1;
    let control = format!(
        "Package: sockray\nVersion: {version}\nArchitecture: {arch}\nMaintainer: sockray developers \
         <sockray@localhost>\nInstalled-Size: {size_kib}\nDepends: libc6\nRecommends: bash-completion, man-db\nSection: net\nPriority: \
         optional\nDescription: TCP and network tracing on eBPF (BCC's network tools, on tracepoints)\n \
         One binary, sockray, with BCC's network tools (tcplife, tcpstates, tcpconnect, tcptop, ...):\n \
         `sockray TOOL`, or TOOL from {dir} (not on PATH by default: Debian's\n \
         libbpf-tools installs tools of the same names in /usr/sbin).\n",
        dir = format_args!("/{DEB_TOOL_DIR}")
    );
    fs::write(control_dir.join("control"), control)
        .map_err(|e| io_fail("cannot write", &control_dir.join("control"), e))?;
    let deb = out_dir.join(format!("{name}.deb"));
    step_quiet(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&root)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// Bytes of the regular files below `dir` (symlinks not followed).
fn dir_size(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Man pages (`sockray man DIR`) and bash, zsh and fish completions (`sockray completions SHELL
/// [TOOL]`: for sockray, and for each tool's symlink), generated by the freshly built binary from the
/// same clap definitions as each tool's `-h`.
fn install_docs(bin: &Path, prefix: &Path, tools: &[String]) -> Res {
    let share = prefix.join("share");
    let man8 = share.join("man/man8");
    let out = Command::new(bin)
        .arg("man")
        .arg(&man8)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| fail(format!("cannot run {} man: {e}", bin.display())))?;
    if !out.status.success() {
        return Err(fail(format!(
            "`{} man {}` failed ({})",
            bin.display(),
            man8.display(),
            out.status
        )));
    }
    println!("installed man pages in {}", man8.display());
    for (shell, dir, file) in [
        ("bash", "bash-completion/completions", "{}"),
        ("zsh", "zsh/vendor-completions", "_{}"),
        ("fish", "fish/vendor_completions.d", "{}.fish"),
    ] {
        let dir = share.join(dir);
        fs::create_dir_all(&dir).map_err(|e| io_fail("cannot create", &dir, e))?;
        let names = std::iter::once("sockray").chain(tools.iter().map(String::as_str));
        for name in names {
            let mut cmd = Command::new(bin);
            cmd.args(["completions", shell]);
            if name != "sockray" {
                cmd.arg(name);
            }
            let what = format!("`{}`", show(&cmd));
            let out = cmd
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| fail(format!("cannot run {what}: {e}")))?;
            if !out.status.success() || out.stdout.is_empty() {
                return Err(fail(format!("{what} failed ({})", out.status)));
            }
            let dest = dir.join(file.replace("{}", name));
            fs::write(&dest, &out.stdout).map_err(|e| io_fail("cannot write", &dest, e))?;
        }
        println!(
            "installed {shell} completions for sockray and its {} tools in {}",
            tools.len(),
            dir.display()
        );
    }
    Ok(())
}

fn cmd_bench(args: &[OsString]) -> Res {
    let mut opts = bench::Options::default();
    let mut scale: Option<scale::ScaleOptions> = None;
    let mut only: Vec<String> = Vec::new();
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| usage_err(format!("bench: {a} needs a value")))
        };
        match a.as_str() {
            "--rounds" => {
                let v = value()?;
                opts.rounds =
                    v.parse().ok().filter(|&n: &usize| n > 0).ok_or_else(|| {
                        usage_err(format!("bench: --rounds {v:?}: a count above 0"))
                    })?;
            }
            "--tool" => only.push(value()?),
            "--tracer" => opts.extra.push(value()?),
            "--verbose" => opts.verbose = true,
            "--starts" => {
                let v = value()?;
                opts.starts =
                    v.parse().ok().filter(|&n: &usize| n > 0).ok_or_else(|| {
                        usage_err(format!("bench: --starts {v:?}: a count above 0"))
                    })?;
            }
            "--startup-only" => opts.startup_only = true,
            "--load" => {
                let v = value()?;
                opts.load = bench::Load::parse(&v).ok_or_else(|| {
                    usage_err(format!(
                        "bench: --load {v:?}: conn, transfer, packets or unixmsg"
                    ))
                })?;
            }
            "--scale" => {
                scale.get_or_insert_with(Default::default);
            }
            "--conns" | "--close-rate" => {
                let v = value()?;
                let n: u32 = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0 || a == "--close-rate")
                    .ok_or_else(|| usage_err(format!("bench: {a} {v:?}: a count")))?;
                let s = scale.get_or_insert_with(Default::default);
                if a == "--conns" {
                    s.conns = n;
                } else {
                    s.close_rate = n;
                }
            }
            _ => return Err(usage_err(format!("bench: unexpected argument {a:?}"))),
        }
    }
    if !is_root() {
        return Err(fail(
            "bench loads BPF programs and creates network namespaces: run it as root",
        ));
    }
    deps()?;
    if let Some(scale) = scale {
        let bin = build(Profile::Release)?;
        step_quiet(cargo().args(["build", "--release", "--bin", "sockray-testgen"]))?;
        let testgen = bin.with_file_name("sockray-testgen");
        return scale::run(&bin, &testgen, &scale).map_err(fail);
    }
    install_packages("bench: ", BENCH_PACKAGES)?;
    let bin = build(Profile::Release)?;
    let mut tools = list_tools(&bin)?;
    if !only.is_empty() {
        if let Some(t) = only
            .iter()
            .find(|t| !bench::TOOLS.contains(&t.as_str()) || !tools.contains(t))
        {
            return Err(usage_err(format!(
                "bench: --tool {t:?}: one of {}",
                bench::TOOLS.join(", ")
            )));
        }
        tools.retain(|t| only.contains(t));
    } else {
        // by default the tools whose hooks run per operation of that load
        tools.retain(|t| bench::default_load(t) == opts.load);
    }
    // the bench itself (its output readers) shares CPU 0 with the tracers
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", "0", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
    bench::run(&bin, &tools, &opts).map_err(fail)
}

// ---- shared steps ----

/// What to build and run sockray.
fn deps() -> Res {
    install_packages("", BUILD_PACKAGES)
}

/// Installs the missing `pkgs` with apt-get; silent when everything is present. `what` names the
/// task that needs them in the message ("" for the build).
pub(crate) fn install_packages(what: &str, pkgs: &[&'static str]) -> Res {
    if find_cmd("apt-get").is_none() || find_cmd("dpkg-query").is_none() {
        return Err(fail(format!(
            "not a Debian/Ubuntu (apt) system; install these packages (Debian names) yourself: {}",
            pkgs.join(" ")
        )));
    }
    let missing = missing_packages(pkgs)?;
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: {what}installing missing packages: {}",
        missing.join(" ")
    );
    apt_get(&["update"])?;
    apt_get(&[&["install", "-y", "--no-install-recommends"][..], &missing].concat())?;
    let still = missing_packages(pkgs)?;
    if !still.is_empty() {
        return Err(fail(format!(
            "packages still missing after apt-get install: {}",
            still.join(" ")
        )));
    }
    Ok(())
}

/// The packages of `pkgs` dpkg does not report as installed.
fn missing_packages(pkgs: &[&'static str]) -> Res<Vec<&'static str>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package}\t${Status}\n"])
        .args(pkgs)
        .stderr(Stdio::null()) // "no packages found matching X" for never-installed ones
        .output()
        .map_err(|e| fail(format!("cannot run dpkg-query: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let installed: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, status)| status.ends_with(" installed"))
        .map(|(pkg, _)| pkg)
        .collect();
    Ok(pkgs
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect())
}

fn apt_get(args: &[&str]) -> Res {
    let mut cmd = if is_root() {
        Command::new("apt-get")
    } else if find_cmd("sudo").is_some() {
        let mut c = Command::new("sudo");
        c.args(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
        c
    } else {
        return Err(fail(format!(
            "need root to run `apt-get {}` (no sudo found)",
            args.join(" ")
        )));
    };
    step_quiet(cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args))
}

#[derive(Clone, Copy)]
enum Profile {
    Release,
    Debug,
}

/// `cargo build [--release] -p sockray`; returns the path of the built binary.
fn build(profile: Profile) -> Res<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "sockray", "--bin", "sockray"]);
    let dir = match profile {
        Profile::Release => {
            cmd.arg("--release");
            "release"
        }
        Profile::Debug => "debug",
    };
    step_quiet(&mut cmd)?;
    Ok(target_dir().join(dir).join("sockray"))
}

/// Tool names from `sockray --list-tools` (one per line), checked to be safe file names.
fn list_tools(bin: &Path) -> Res<Vec<String>> {
    let what = format!("`{} --list-tools`", bin.display());
    let out = Command::new(bin)
        .arg("--list-tools")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| fail(format!("cannot run {what}: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!("{what} failed ({})", out.status)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tools = Vec::new();
    for name in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let ok = name != "sockray"
            && !name.starts_with(['.', '-'])
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok {
            return Err(fail(format!("{what} printed a bad tool name {name:?}")));
        }
        tools.push(name.to_string());
    }
    if tools.is_empty() {
        return Err(fail(format!("{what} printed no tools")));
    }
    Ok(tools)
}

/// Mounts tracefs if it is not there (tracepoint tests need it); failure is only a warning.
fn ensure_tracefs() {
    if Path::new("/sys/kernel/tracing/events").exists() {
        return;
    }
    eprintln!("xtask: mounting tracefs on /sys/kernel/tracing");
    let mounted = Command::new("mount")
        .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("xtask: warning: could not mount tracefs; BPF tests may fail");
    }
}

/// Adds the rustfmt/clippy components (once) if `cargo fmt` or `cargo clippy` is missing.
fn ensure_components() {
    let works = |sub: &str| {
        cargo()
            .args([sub, "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works("fmt") && works("clippy") {
        return;
    }
    eprintln!("xtask: adding rustup components rustfmt, clippy");
    if let Err(f) =
        step_quiet(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))
    {
        eprintln!("xtask: warning: {}", f.msg);
    }
}

// ---- helpers ----

fn workspace_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

/// `CARGO_TARGET_DIR` (relative to the current directory, as cargo reads it) or `<root>/target`.
fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(d) => env::current_dir().unwrap_or_default().join(d),
        None => workspace_root().join("target"),
    }
}

/// The cargo that runs us, in the workspace root, with an absolute `CARGO_TARGET_DIR` if set.
fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    if env::var_os("CARGO_TARGET_DIR").is_some_and(|d| !d.is_empty()) {
        cmd.env("CARGO_TARGET_DIR", target_dir());
    }
    cmd
}

/// Prints `==> <command>` and runs it.
fn step(cmd: &mut Command) -> Res {
    eprintln!("==> {}", show(cmd));
    step_quiet(cmd)
}

/// Runs a command with inherited stdio; non-zero exit is an error.
fn step_quiet(cmd: &mut Command) -> Res {
    let status = cmd
        .status()
        .map_err(|e| fail(format!("cannot run `{}`: {e}", show(cmd))))?;
    if status.success() {
        Ok(())
    } else {
        Err(fail(format!("`{}` failed ({status})", show(cmd))))
    }
}

fn show(cmd: &Command) -> String {
    let prog = Path::new(cmd.get_program());
    let mut s = prog
        .file_name()
        .unwrap_or(prog.as_os_str())
        .to_string_lossy()
        .into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn io_fail(what: &str, path: &Path, e: io::Error) -> Fail {
    fail(format!("{what} {}: {e}", path.display()))
}

/// An executable file `name` in `PATH`.
fn find_cmd(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
}

fn is_root() -> bool {
    unsafe extern "C" {
        safe fn geteuid() -> u32;
    }
    geteuid() == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for sockray in `dir`: `man DIR` and `completions SHELL [TOOL]`.
    fn fake_sockray(dir: &Path) -> PathBuf {
        let bin = dir.join("fake-sockray");
        fs::write(
            &bin,
            "#!/bin/sh\ncase $1 in\n  man) mkdir -p \"$2\" && echo page > \"$2/sockray.8\";;\n  \
             completions) echo \"script $2 ${3:-sockray}\";;\n  *) exit 2;;\nesac\n",
        )
        .unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        bin
    }

    /// install_docs puts what the binary generates where each shell and man look for it.
    #[test]
    fn install_docs_paths() {
        let tmp = env::temp_dir().join(format!("xtask-install-docs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).unwrap();
        let bin = fake_sockray(&tmp);
        let prefix = tmp.join("prefix");
        let tools = vec!["tcplife".to_string()];
        assert!(install_docs(&bin, &prefix, &tools).is_ok());
        let share = prefix.join("share");
        let read =
            |p: &str| fs::read_to_string(share.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(read("man/man8/sockray.8"), "page\n");
        assert_eq!(
            read("bash-completion/completions/sockray"),
            "script bash sockray\n"
        );
        assert_eq!(
            read("bash-completion/completions/tcplife"),
            "script bash tcplife\n"
        );
        assert_eq!(
            read("zsh/vendor-completions/_sockray"),
            "script zsh sockray\n"
        );
        assert_eq!(
            read("zsh/vendor-completions/_tcplife"),
            "script zsh tcplife\n"
        );
        assert_eq!(
            read("fish/vendor_completions.d/sockray.fish"),
            "script fish sockray\n"
        );
        assert_eq!(
            read("fish/vendor_completions.d/tcplife.fish"),
            "script fish tcplife\n"
        );
        assert!(install_unit(&prefix, Path::new("/opt/x/bin")).is_ok());
        let unit =
            fs::read_to_string(prefix.join("lib/systemd/system/sockray-serve.service")).unwrap();
        assert!(
            unit.contains("ExecStart=/opt/x/bin/sockray serve"),
            "{unit}"
        );
        assert!(!unit.contains('@'), "{unit}");
        // a binary that fails is an error, not a silent gap
        fs::write(&bin, "#!/bin/sh\nexit 1\n").unwrap();
        assert!(install_docs(&bin, &prefix, &tools).is_err());
        let _ = fs::remove_dir_all(&tmp);
    }

    /// The .deb: the binary in /usr/bin, the tools' symlinks out of /usr/sbin (libbpf-tools' names),
    /// man pages and completions, the control fields; read back with dpkg-deb.
    #[test]
    fn deb_package_contents() {
        let tmp = env::temp_dir().join(format!("xtask-deb-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).unwrap();
        let bin = fake_sockray(&tmp);
        let tools = vec!["tcplife".to_string(), "tcptop".to_string()];
        let deb =
            stage_deb(&bin, &tools, &tmp, "0.1.0", "amd64").unwrap_or_else(|f| panic!("{}", f.msg));
        assert!(
            deb.ends_with("sockray_0.1.0_amd64.deb"),
            "{}",
            deb.display()
        );
        let run = |args: &[&str]| {
            let o = Command::new("dpkg-deb")
                .args(args)
                .arg(&deb)
                .output()
                .expect("dpkg-deb");
            assert!(
                o.status.success(),
                "dpkg-deb {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        assert_eq!(run(&["--field"]).lines().next(), Some("Package: sockray"));
        let fields = run(&["--field"]);
        for f in ["Version: 0.1.0", "Architecture: amd64", "Depends: libc6"] {
            assert!(fields.contains(f), "{f}: {fields}");
        }
        let contents = run(&["--contents"]);
        for want in [
            "./usr/bin/sockray",
            "./usr/lib/sockray/bin/tcplife -> /usr/bin/sockray",
            "./usr/lib/sockray/bin/tcptop -> /usr/bin/sockray",
            "./usr/share/man/man8/sockray.8",
            "./usr/share/bash-completion/completions/tcplife",
            "./usr/share/zsh/vendor-completions/_sockray",
            "./usr/share/fish/vendor_completions.d/tcptop.fish",
            "./usr/share/doc/sockray/copyright",
            "./usr/lib/systemd/system/sockray-serve.service",
        ] {
            assert!(
                contents.contains(want),
                "{want} not in the package:\n{contents}"
            );
        }
        // nothing where libbpf-tools puts its tools, all owned by root
        assert!(!contents.contains("./usr/sbin/"), "{contents}");
        assert!(
            contents.lines().all(|l| l.contains(" root/root ")),
            "{contents}"
        );
        let _ = fs::remove_dir_all(&tmp);
    }

    /// The real package on this machine: built from the release binary the workspace's tests were
    /// built with, installed with dpkg, a tool run from its symlink, its man page found, removed again
    /// with nothing left. Root only (CI runs as root, where it must run); a machine where a sockray
    /// package is already installed is left alone.
    #[test]
    fn deb_installs_runs_and_removes() {
        let ci = env::var_os("CI").is_some();
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/sockray");
        let installed = Command::new("dpkg")
            .args(["-s", "sockray"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !is_root() || !bin.exists() || installed {
            assert!(
                !ci,
                "CI: root {}, {} exists {}, sockray already installed {installed}",
                is_root(),
                bin.display(),
                bin.exists()
            );
            return;
        }
        let tmp = env::temp_dir().join(format!("xtask-deb-real-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let tools = vec!["tcplife".to_string(), "tcpstates".to_string()];
        let deb =
            stage_deb(&bin, &tools, &tmp, "0.1.0", "amd64").unwrap_or_else(|f| panic!("{}", f.msg));
        let ok = |c: &mut Command| {
            let o = c.output().expect("run");
            assert!(
                o.status.success(),
                "{c:?}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        ok(Command::new("dpkg").arg("-i").arg(&deb));
        let help = Command::new("/usr/lib/sockray/bin/tcplife")
            .arg("--help")
            .output();
        let man = Command::new("man").args(["-w", "tcplife"]).output();
        ok(Command::new("dpkg").args(["-r", "sockray"]));
        let help = help.expect("run tcplife");
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("Usage: tcplife"),
            "{help:?}"
        );
        if let Ok(man) = man {
            // man-db present: the page is where man looks (a stub pointing at sockray-tcplife.8)
            if man.status.code() != Some(127) {
                assert!(
                    String::from_utf8_lossy(&man.stdout).contains("tcplife.8"),
                    "{man:?}"
                );
            }
        }
        assert!(
            !Path::new("/usr/bin/sockray").exists(),
            "left after dpkg -r"
        );
        assert!(
            !Path::new("/usr/lib/sockray").exists(),
            "left after dpkg -r"
        );
        let _ = fs::remove_dir_all(&tmp);
    }
}
