//! `cargo xtask vmtest`: the integration tests under other kernels (Debian's 5.10 … 7.x) in QEMU.
//!
//! - Kernels: the newest Debian `linux-image-<series>…-amd64` package of each series (Debian replaces
//!   package names as it updates a series, so names are never pinned), found and downloaded with apt under
//!   a private configuration in the cache (the host's apt sources are untouched), unpacked with
//!   `dpkg-deb -x`; nothing is installed. Of each kernel a small kit stays in the cache: `vmlinuz`, the
//!   decompressed `vmlinux` (QEMU boots its PVH entry: no in-guest decompression, ~5 s less per boot under
//!   TCG), `config`, and the few modules the guest needs (virtio, 9p, virtiofs, overlay: Debian builds them
//!   as =m), with their dependencies in load order.
//! - Guest: QEMU with software emulation (TCG; never KVM, whose `/dev/kvm` on our machines is a
//!   paravirtual one that hangs stock kernels). The host's root file system is shared read-only (virtiofs,
//!   else 9p) under a tmpfs overlay, so the test binaries built on the host run unchanged and find
//!   `sockray`/`sockray-testgen` at their absolute host paths (`env!("CARGO_BIN_EXE_…")`). The initramfs
//!   (static busybox, `vm/init.sh`, `vm/guest.sh`, the modules) is rebuilt per kernel on every invocation.
//!   Host environment variables do not reach the guest: the job directory says what to set.
//! - One VM per (kernel, path), for a fresh guest per run; the test binaries run one after another with
//!   `--test-threads=1` and `CI=1` (tests fail rather than skip when BPF is unusable). A path other than
//!   `default` sets `SOCKRAY_ATTACH=<path>` in the guest (src/attach.rs).
//! - Results: `target/vmtest/results.json`, one record per (kernel series, path, test binary), written as
//!   each VM run ends; a new run replaces the records of the same triples and keeps the others.
//!   `--report` renders them into docs/kernels.md between `<!-- vmtest:begin -->` and `<!-- vmtest:end -->`.
//! - Limits: 300 s per test binary (busybox `timeout` in the guest), `--timeout` (120 s + 120 s per test binary) per VM; QEMU
//!   and virtiofsd are stopped by their PIDs.

mod json;
mod kernel;
mod report;

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use self::json::{Json, n, obj, s};
use self::kernel::{Kernel, build_initrd, remove_dir, resolve_kernels};
use self::report::{merge_results, render_table, report, short_kernel};
use crate::{Res, fail, find_cmd, io_fail, is_root, target_dir, usage_err, workspace_root};

pub const USAGE: &str = "\
usage: cargo xtask vmtest [options] [-- <test binary args>]
       cargo xtask vmtest --report

Runs the integration tests (tests/*.rs) inside QEMU (software emulation) under Debian kernels, one VM
per kernel and attach path, and records pass/fail per kernel, path and test binary in
target/vmtest/results.json (a new run replaces the records it repeats). Exits non-zero if any failed.

options:
  --kernel SERIES   a kernel series (version prefix: 5.10, 6.1, 6.12, 6.18, 7, or an exact version such as
                    6.1.0-56-amd64); the newest Debian package of it is used; repeatable
                    (default: 5.10 6.1 6.12 6.18 7)
  --path PATH       default (no SOCKRAY_ATTACH), tracepoint, tp_btf, raw_tp, fentry or kprobe; repeatable
                    (default: default raw_tp; no tool has fentry or kprobe programs yet, so those paths
                    would repeat default)
  --quick           only the default path
  --test NAME       only this test binary (tests/NAME.rs); repeatable
  --timeout SECS    wall-clock limit of one VM run (default 120 + 120 per test binary); one test binary
                    gets at most 300 s
  --offline         no apt: use the kernels already in the cache
  --mttcg           multi-threaded TCG (one host thread per guest CPU). Not faster for these tests (one VM
                    run took 3.5-5 min either way on 2 host cores), and QEMU then races with the guest
                    kernel's live code patching (static keys, tracepoints being switched on): seen as
                    \"Oops: int3\" in syscall_exit_to_user_mode_prepare on 6.12 and 7.3. By default
                    both guest CPUs run on one host thread.
  --verbose         show the guest console and every test binary's output
  --report          regenerate the kernel table (docs/kernels.md) from target/vmtest/results.json, run nothing

Kernels are cached in target/vmtest/kernels (or $VMTEST_CACHE/kernels); apt lists are refreshed daily.
Needs root for virtiofs (else the slower 9p is used); installs qemu-system-x86, busybox-static, xz-utils,
zstd with apt when missing.
";

const DEFAULT_SERIES: &[&str] = &["5.10", "6.1", "6.12", "6.18", "7"];
const DEFAULT_PATHS: &[&str] = &["default", "raw_tp"];
const ALL_PATHS: &[&str] = &[
    "default",
    "tracepoint",
    "tp_btf",
    "raw_tp",
    "fentry",
    "kprobe",
];

/// Host packages for the VMs (Debian names).
const VM_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "xz-utils",
    "zstd",
    "debian-archive-keyring",
];

/// A VM run's wall-clock limit unless `--timeout` sets one: its boot, then this much per test binary
/// (each also has TEST_LIMIT of its own): the matrix grows with each tool, and a fixed limit ended
/// runs whose every binary was within its own.
const BOOT_LIMIT: Duration = Duration::from_secs(120);
const PER_BINARY: Duration = Duration::from_secs(120);
const TEST_LIMIT: Duration = Duration::from_secs(300);
const MEM: &str = "1G";
const CPUS: &str = "2";

struct Opts {
    series: Vec<String>,
    paths: Vec<String>,
    tests: Vec<String>,
    test_args: Vec<String>,
    /// `--timeout`; else BOOT_LIMIT + PER_BINARY per test binary
    timeout: Option<Duration>,
    offline: bool,
    verbose: bool,
    report: bool,
    /// multi-threaded TCG: faster, but see `--mttcg` in USAGE
    mttcg: bool,
}

impl Opts {
    /// A VM run's wall-clock limit for `binaries` test binaries.
    fn run_limit(&self, binaries: usize) -> Duration {
        self.timeout
            .unwrap_or(BOOT_LIMIT + PER_BINARY * binaries as u32)
    }
}

fn parse_opts(args: &[OsString]) -> Res<Option<Opts>> {
    let mut o = Opts {
        series: Vec::new(),
        paths: Vec::new(),
        tests: Vec::new(),
        test_args: Vec::new(),
        timeout: None,
        offline: false,
        verbose: false,
        report: false,
        mttcg: false,
    };
    let mut quick = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a
            .to_str()
            .ok_or_else(|| usage_err(format!("vmtest: argument {a:?} is not UTF-8")))?;
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a, None),
        };
        let mut value = || -> Res<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .and_then(|v| v.to_str())
                    .map(str::to_string)
                    .ok_or_else(|| usage_err(format!("vmtest: {flag} needs a value"))),
            }
        };
        match flag {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "--kernel" => {
                let v = value()?;
                if v.is_empty()
                    || !v
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-+~_".contains(c))
                {
                    return Err(usage_err(format!("vmtest: bad kernel series {v:?}")));
                }
                o.series.push(v);
            }
            "--path" => {
                let v = value()?;
                if !ALL_PATHS.contains(&v.as_str()) {
                    return Err(usage_err(format!(
                        "vmtest: unknown path {v:?} (expected one of {})",
                        ALL_PATHS.join(", ")
                    )));
                }
                if !o.paths.contains(&v) {
                    o.paths.push(v);
                }
            }
            "--test" => o.tests.push(value()?),
            "--timeout" => {
                let v = value()?;
                let secs: u64 = v
                    .parse()
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or_else(|| usage_err(format!("vmtest: bad --timeout {v:?}")))?;
                o.timeout = Some(Duration::from_secs(secs));
            }
            "--quick" => quick = true,
            "--offline" => o.offline = true,
            "--mttcg" => o.mttcg = true,
            "--verbose" | "-v" => o.verbose = true,
            "--report" => o.report = true,
            "--" => {
                for t in it.by_ref() {
                    let t = t.to_str().filter(|t| !t.contains('\n')).ok_or_else(|| {
                        usage_err(format!(
                            "vmtest: test argument {t:?} is not one line of UTF-8"
                        ))
                    })?;
                    o.test_args.push(t.to_string());
                }
            }
            _ => return Err(usage_err(format!("vmtest: unknown argument `{a}`"))),
        }
    }
    if quick {
        if !o.paths.is_empty() && o.paths != ["default"] {
            return Err(usage_err(
                "vmtest: --quick runs the default path only; drop --path",
            ));
        }
        o.paths = vec!["default".into()];
    }
    if o.series.is_empty() {
        o.series = DEFAULT_SERIES.iter().map(|s| s.to_string()).collect();
    }
    if o.paths.is_empty() {
        o.paths = DEFAULT_PATHS.iter().map(|s| s.to_string()).collect();
    }
    Ok(Some(o))
}

pub fn cmd(args: &[OsString]) -> Res {
    let Some(o) = parse_opts(args)? else {
        return Ok(());
    };
    if o.report {
        return report();
    }
    let t0 = Instant::now();
    crate::deps()?;
    crate::install_packages("tests: ", crate::TEST_PACKAGES)?;
    vm_deps()?;
    let cache = cache_dir();
    let kernels = resolve_kernels(&o, &cache)?;
    let source = source_version();
    let tests = build_tests(&o.tests)?;
    let qemu = find_cmd("qemu-system-x86_64")
        .ok_or_else(|| fail("qemu-system-x86_64 not found (package qemu-system-x86)"))?;
    let busybox = static_busybox()?;
    let vfsd = if is_root() { find_virtiofsd() } else { None };
    if vfsd.is_none() {
        eprintln!(
            "xtask: vmtest: no virtiofsd{}: sharing the root file system over 9p (slower)",
            if is_root() { "" } else { " as non-root" }
        );
    }
    eprintln!(
        "xtask: vmtest: {} kernel(s) × {} path(s) × {} test binaries; limit {} s per VM",
        kernels.len(),
        o.paths.len(),
        tests.len(),
        o.run_limit(tests.len()).as_secs()
    );

    let file = results_path();
    let mut records = Vec::new();
    let mut bad = Vec::new();
    let mut recorded = 0;
    for k in &kernels {
        let initrd = build_initrd(&k.dir, &busybox)?;
        let initrd_path = k.dir.join("initrd.img");
        fs::write(&initrd_path, initrd).map_err(|e| io_fail("cannot write", &initrd_path, e))?;
        for path in &o.paths {
            let vm = Vm {
                qemu: &qemu,
                vfsd: vfsd.as_deref(),
                kernel: k,
                initrd: &initrd_path,
                source: source.as_deref(),
            };
            let (status, run) = run_one(&vm, path, &tests, &o)?;
            if !matches!(status, "pass" | "skip") {
                bad.push(format!("{} {path}: {status}", short_kernel(&k.version)));
            }
            // recorded as each run ends: an interrupted matrix keeps what it has done
            recorded = merge_results(&file, &run)?;
            records.extend(run);
        }
    }

    let text = render_table(&records, false);
    println!("\n{text}");
    println!(
        "xtask: vmtest: {} VM run(s) in {}; results in {} ({} record(s)); \
         `cargo xtask vmtest --report` puts them into docs/kernels.md",
        kernels.len() * o.paths.len(),
        fmt_secs(t0.elapsed().as_secs_f64()),
        file.display(),
        recorded
    );
    if bad.is_empty() {
        Ok(())
    } else {
        Err(fail(format!("vmtest: not passed: {}", bad.join("; "))))
    }
}

/// `git describe --always --dirty` of the workspace (the commit the tests were built from).
fn source_version() -> Option<String> {
    let out = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(workspace_root())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !v.is_empty()).then_some(v)
}

// ---- host packages ----

fn vm_deps() -> Res {
    crate::install_packages("vmtest: ", VM_PACKAGES)
}

/// `/bin/busybox`, checked to be statically linked (the `busybox` package's is not).
fn static_busybox() -> Res<Vec<u8>> {
    let p = Path::new("/bin/busybox");
    let b = fs::read(p).map_err(|e| io_fail("cannot read", p, e))?;
    if !is_static_elf(&b) {
        return Err(fail(
            "/bin/busybox is dynamically linked: the guest initramfs needs busybox-static",
        ));
    }
    Ok(b)
}

/// An ELF64 little-endian file without a PT_INTERP program header.
fn is_static_elf(b: &[u8]) -> bool {
    let u = |at: usize, len: usize| -> Option<u64> {
        let mut v = [0u8; 8];
        v[..len].copy_from_slice(b.get(at..at + len)?);
        Some(u64::from_le_bytes(v))
    };
    if !b.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u(32, 8), u(54, 2), u(56, 2)) else {
        return false;
    };
    (0..phnum).all(|i| u((phoff + i * phentsize) as usize, 4).is_some_and(|t| t != 3))
}

fn find_virtiofsd() -> Option<PathBuf> {
    ["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| find_cmd("virtiofsd"))
}

// ---- places ----

/// `$VMTEST_CACHE` or `target/vmtest`: apt lists and kernel kits.
fn cache_dir() -> PathBuf {
    match std::env::var_os("VMTEST_CACHE").filter(|d| !d.is_empty()) {
        Some(d) => std::env::current_dir().unwrap_or_default().join(d),
        None => target_dir().join("vmtest"),
    }
}

fn results_path() -> PathBuf {
    target_dir().join("vmtest").join("results.json")
}

// ---- test binaries ----

struct TestBin {
    name: String,
    exe: PathBuf,
}

/// `cargo test --no-run`: the integration test executables (and, built with them, `sockray` and
/// `sockray-testgen`, which the tests find at their absolute paths).
fn build_tests(only: &[String]) -> Res<Vec<TestBin>> {
    let mut cmd = crate::cargo();
    cmd.args([
        "test",
        "-p",
        "sockray",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    eprintln!("==> {}", crate::show(&cmd));
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| fail(format!("cannot run cargo: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!("cargo test --no-run failed ({})", out.status)));
    }
    let mut tests = Vec::new();
    let mut bins = HashSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = Json::parse(line) else { continue };
        if msg.str("reason") != Some("compiler-artifact") {
            continue;
        }
        let (Some(target), Some(exe)) = (msg.get("target"), msg.str("executable")) else {
            continue;
        };
        let kinds: Vec<&str> = target.arr("kind").iter().filter_map(Json::as_str).collect();
        let name = target.str("name").unwrap_or("").to_string();
        let is_test = msg
            .get("profile")
            .and_then(|p| p.get("test"))
            .is_some_and(|t| *t == Json::Bool(true));
        if kinds == ["test"] {
            tests.push(TestBin {
                name,
                exe: PathBuf::from(exe),
            });
        } else if kinds == ["bin"] && !is_test {
            bins.insert(name);
        }
    }
    for b in ["sockray", "sockray-testgen"] {
        if !bins.contains(b) {
            return Err(fail(format!("cargo test --no-run built no `{b}` binary")));
        }
    }
    for t in only {
        if !tests.iter().any(|x| &x.name == t) {
            let all: Vec<&str> = tests.iter().map(|t| t.name.as_str()).collect();
            return Err(usage_err(format!(
                "vmtest: no test binary `{t}` (have: {})",
                all.join(", ")
            )));
        }
    }
    tests.retain(|t| only.is_empty() || only.contains(&t.name));
    tests.sort_by(|a, b| a.name.cmp(&b.name));
    if tests.is_empty() {
        return Err(fail("cargo test --no-run built no integration tests"));
    }
    Ok(tests)
}

// ---- one VM run ----

struct Vm<'a> {
    qemu: &'a Path,
    vfsd: Option<&'a Path>,
    kernel: &'a Kernel,
    initrd: &'a Path,
    /// What was tested: `git describe` of the workspace.
    source: Option<&'a str>,
}

/// Boots `vm.kernel`, runs every test binary with `path`; returns the run's status and one results.json
/// record per test binary.
fn run_one(vm: &Vm, path: &str, tests: &[TestBin], o: &Opts) -> Res<(&'static str, Vec<Json>)> {
    let k = vm.kernel;
    let tag = format!("{} {path}", short_kernel(&k.version));
    let run_dir = target_dir()
        .join("vmtest")
        .join("runs")
        .join(&k.version)
        .join(path);
    let job = run_dir.join("job");
    remove_dir(&run_dir)?;
    fs::create_dir_all(&job).map_err(|e| io_fail("cannot create", &job, e))?;
    let limit = TEST_LIMIT.min(o.run_limit(tests.len()));
    let mut files: Vec<(&str, String)> = vec![
        (
            "tests",
            tests
                .iter()
                .map(|t| format!("{}\t{}\n", t.name, t.exe.display()))
                .collect(),
        ),
        (
            "args",
            o.test_args.iter().map(|a| format!("{a}\n")).collect(),
        ),
        ("path", format!("{path}\n")),
        ("limit", format!("{}\n", limit.as_secs())),
        ("cwd", format!("{}\n", workspace_root().display())),
    ];
    // the scale tests (tests/scale.rs) with fewer connections: the guest has 1 GiB and an emulated CPU,
    // whose reader may not run at all while the sockets close (500 connections' rows fit in the ring)
    let mut env = String::from("SOCKRAY_SCALE_CONNS=500\n");
    if path != "default" {
        env.push_str(&format!("SOCKRAY_ATTACH={path}\n"));
    }
    files.push(("env", env));
    for (name, text) in &files {
        let p = job.join(name);
        fs::write(&p, text).map_err(|e| io_fail("cannot write", &p, e))?;
    }

    let started = now_utc();
    eprintln!("xtask: vmtest: [{tag}] booting {}", k.version);
    let boot = boot(
        vm,
        &run_dir,
        &job,
        o.run_limit(tests.len()),
        &tag,
        o.verbose,
        o.mttcg,
    )?;

    // collect
    let read = |name: &str| fs::read_to_string(job.join(name)).ok();
    let uname = read("kernel").map(|s| s.trim().to_string());
    let skipped = read("skipped").map(|s| s.trim().to_string());
    let done = job.join("done").exists();
    let console = fs::read_to_string(run_dir.join("console.log")).unwrap_or_default();
    let complaints = kernel_complaints(&console);
    let mut records = Vec::new();
    let mut statuses = Vec::new();
    let mut seen_missing = false;
    for t in tests {
        let log = read(&format!("{}.log", t.name)).unwrap_or_default();
        let rc = read(&format!("{}.rc", t.name));
        let (code, secs) = rc
            .as_deref()
            .and_then(|r| {
                let mut it = r.split_whitespace();
                Some((
                    it.next()?.parse::<i32>().ok()?,
                    it.next()?.parse::<f64>().ok()?,
                ))
            })
            .unwrap_or((-1, 0.0));
        let mut parsed = parse_libtest(&log);
        // tests run again after failing on skipped runs only (vm/guest.sh, src/rerun.rs)
        let reruns: Vec<(String, bool)> = read(&format!("{}.reruns", t.name))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(name, v)| (name.to_string(), v == "pass"))
            .collect();
        for (name, passed) in &reruns {
            eprintln!(
                "xtask: vmtest: [{tag}] {}: {name} failed on runs the kernel skipped; rerun: {}",
                t.name,
                if *passed { "pass" } else { "fail" }
            );
            if *passed {
                parsed.failures.retain(|f| &f.name != name);
                parsed.failed = parsed.failed.saturating_sub(1);
                parsed.passed += 1;
            }
        }
        let status = if skipped.is_some() {
            "skip"
        } else if rc.is_none() {
            if log.is_empty() && (seen_missing || !boot.timed_out) {
                "not-run"
            } else {
                seen_missing = true;
                if boot.timed_out { "timeout" } else { "error" }
            }
        } else if code == 0 && !complaints.iter().any(|(n, _)| n == &t.name) {
            "pass"
        } else if code == 0 {
            // the tests passed, but the kernel complained (a WARN, a lockup) while they ran
            "fail"
        } else if [124, 137, 143].contains(&code) && secs + 1.0 >= limit.as_secs_f64() {
            "timeout"
        } else {
            "fail"
        };
        statuses.push(status);
        if o.verbose || !matches!(status, "pass" | "skip") {
            let log_path = job.join(format!("{}.log", t.name));
            print_log(&tag, &t.name, status, &log, &log_path, o.verbose);
        }
        let mut failures: Vec<Json> = parsed
            .failures
            .iter()
            .map(|f| {
                obj([
                    ("name", s(&f.name)),
                    ("summary", s(&f.summary)),
                    ("message", s(&f.message)),
                ])
            })
            .collect();
        for (_, line) in complaints.iter().filter(|(n, _)| n == &t.name) {
            eprintln!("xtask: vmtest: [{tag}] {}: the kernel said: {line}", t.name);
            failures.push(obj([
                ("name", s("(kernel log)")),
                ("summary", s(format!("kernel: {line}"))),
                ("message", s(line)),
            ]));
        }
        let mut rec = vec![
            ("series", s(&k.series)),
            ("kernel", s(&k.version)),
            ("uname", uname.clone().map(s).unwrap_or(Json::Null)),
            ("path", s(path)),
            ("test", s(&t.name)),
            ("tool", s(tool_of(&t.name))),
            ("status", s(status)),
            ("passed", n(parsed.passed)),
            ("failed", n(parsed.failed)),
            ("ignored", n(parsed.ignored)),
            ("seconds", n(secs)),
            ("started", s(&started)),
            ("source", vm.source.map(s).unwrap_or(Json::Null)),
            ("rootfs", s(if boot.virtiofs { "virtiofs" } else { "9p" })),
            ("args", Json::Arr(o.test_args.iter().map(s).collect())),
            (
                "reruns",
                Json::Arr(
                    reruns
                        .iter()
                        .map(|(name, passed)| {
                            obj([
                                ("name", s(name)),
                                ("result", s(if *passed { "pass" } else { "fail" })),
                            ])
                        })
                        .collect(),
                ),
            ),
        ];
        if let Some(why) = &skipped {
            rec.push(("skipped", s(why)));
        }
        if !matches!(status, "pass" | "skip") && (status == "timeout" || failures.is_empty()) {
            rec.push(("tail", s(tail(&log, 15))));
        }
        rec.push(("failures", Json::Arr(failures)));
        records.push(Json::Obj(
            rec.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        ));
    }
    let status = if skipped.is_some() {
        "skip"
    } else if boot.timed_out {
        "timeout"
    } else if !done || statuses.contains(&"error") || statuses.contains(&"not-run") {
        "error"
    } else if statuses.iter().all(|s| *s == "pass") {
        "pass"
    } else if statuses.contains(&"timeout") {
        "timeout"
    } else {
        "fail"
    };
    if status == "error" || (status == "timeout" && statuses.iter().all(|s| *s == "not-run")) {
        eprintln!(
            "xtask: vmtest: [{tag}] the guest did not finish; console ({}):\n{}",
            run_dir.join("console.log").display(),
            boot.console_tail
        );
    }
    eprintln!(
        "xtask: vmtest: [{tag}] {} in {}",
        status.to_uppercase(),
        fmt_secs(boot.secs)
    );
    Ok((status, records))
}

/// Kernel warnings, oopses, lockups and stalls in the guest's console, each with the test binary that
/// was running then (the guest prints `vmtest: NAME: running` before each).
fn kernel_complaints(console: &str) -> Vec<(String, String)> {
    const SIGNS: &[&str] = &[
        "WARNING: CPU:",
        "BUG:",
        "Oops:",
        "general protection fault",
        "self-detected stall",
        "blocked for more than",
        "Kernel panic",
    ];
    let mut running = String::new();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut last_text = String::new();
    for line in console.lines() {
        if let Some(rest) = line.strip_prefix("vmtest: ")
            && let Some(name) = rest.strip_suffix(": running")
        {
            running = name.to_string();
            continue;
        }
        // "WARNING: CPU: 1 PID: 793 at kernel/bpf/verifier.c:10519 ..." follows the line that says what
        let text = line.split_once("] ").map(|(_, t)| t).unwrap_or(line).trim();
        if SIGNS.iter().any(|s| text.contains(s)) && !running.is_empty() {
            let said = if text.starts_with("WARNING: CPU:") && !last_text.is_empty() {
                format!("{last_text} ({text})")
            } else {
                text.to_string()
            };
            if !out.iter().any(|(n, _)| *n == running) {
                out.push((running.clone(), said));
            }
        }
        last_text = text.to_string();
    }
    out
}

fn print_log(tag: &str, name: &str, status: &str, log: &str, log_path: &Path, verbose: bool) {
    let text = if verbose {
        log.to_string()
    } else {
        // the failures section when there is one, else the end of the output
        let part = match log.find("\nfailures:\n") {
            Some(at) => &log[at + 1..],
            None => log,
        };
        let lines: Vec<&str> = part.lines().collect();
        if lines.len() > 80 {
            format!(
                "{}\n[… {} more lines in the log]",
                lines[..60].join("\n"),
                lines.len() - 60
            )
        } else {
            part.to_string()
        }
    };
    eprintln!(
        "---- [{tag}] {name}: {status} ({}) ----",
        log_path.display()
    );
    eprintln!("{}", text.trim_end());
    eprintln!("---- end of {name} ----");
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

struct Boot {
    timed_out: bool,
    virtiofs: bool,
    secs: f64,
    console_tail: String,
}

fn boot(
    vm: &Vm,
    run_dir: &Path,
    job: &Path,
    limit: Duration,
    tag: &str,
    verbose: bool,
    mttcg: bool,
) -> Res<Boot> {
    let t0 = Instant::now();
    let kit = &vm.kernel.dir;
    let image = if kit.join("vmlinux").exists() {
        kit.join("vmlinux")
    } else {
        kit.join("vmlinuz")
    };
    let mut vfsd: Option<Child> = None;
    static BOOTS: AtomicU32 = AtomicU32::new(0);
    let sock = std::env::temp_dir().join(format!(
        "sockray-vmtest-{}-{}.sock",
        std::process::id(),
        BOOTS.fetch_add(1, Ordering::Relaxed)
    ));
    if let Some(bin) = vm.vfsd {
        let log = fs::File::create(run_dir.join("virtiofsd.log"))
            .map_err(|e| io_fail("cannot create", &run_dir.join("virtiofsd.log"), e))?;
        let _ = fs::remove_file(&sock);
        let child = Command::new(bin)
            .arg(format!("--socket-path={}", sock.display()))
            .args([
                "-o",
                "source=/",
                "-o",
                "cache=always",
                "-o",
                "sandbox=chroot",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| fail(e.to_string()))?)
            .stderr(log)
            .spawn();
        match child {
            Ok(mut c) => {
                let deadline = Instant::now() + Duration::from_secs(10);
                while !sock.exists()
                    && Instant::now() < deadline
                    && matches!(c.try_wait(), Ok(None))
                {
                    thread::sleep(Duration::from_millis(20));
                }
                if sock.exists() {
                    vfsd = Some(c);
                } else {
                    eprintln!(
                        "xtask: vmtest: [{tag}] virtiofsd did not start (see {}); using 9p",
                        run_dir.join("virtiofsd.log").display()
                    );
                    stop(&mut c, Duration::ZERO);
                }
            }
            Err(e) => eprintln!(
                "xtask: vmtest: [{tag}] cannot run {}: {e}; using 9p",
                bin.display()
            ),
        }
    }
    let virtiofs = vfsd.is_some();

    let mut cmd = Command::new(vm.qemu);
    let accel = if mttcg {
        "tcg,thread=multi"
    } else {
        "tcg,thread=single"
    };
    cmd.args(["-accel", accel, "-cpu", "max", "-m", MEM, "-smp", CPUS])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(&image)
        .arg("-initrd")
        .arg(vm.initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 loglevel=5 softlockup_panic=1 panic=-1 vm.rootfs={}",
            if virtiofs { "virtiofs" } else { "9p" }
        ));
    if virtiofs {
        cmd.args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={MEM},share=on"),
            "-numa",
            "node,memdev=mem",
            "-chardev",
            &format!("socket,id=vfs,path={}", sock.display()),
            "-device",
            "vhost-user-fs-pci,chardev=vfs,tag=root",
        ]);
    } else {
        cmd.args([
            "-virtfs",
            "local,id=root,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap",
        ]);
    }
    cmd.arg("-virtfs").arg(format!(
        "local,id=vmjob,path={},mount_tag=vmjob,security_model=none",
        job.display()
    ));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut qemu = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            if let Some(c) = vfsd.as_mut() {
                stop(c, Duration::ZERO);
            }
            let _ = fs::remove_file(&sock);
            return Err(fail(format!("cannot run {}: {e}", vm.qemu.display())));
        }
    };

    // console → console.log; "vmtest:" lines as progress
    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    for stream in [
        qemu.stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        qemu.stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        readers.push(thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut buf = Vec::new();
            while matches!(r.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                if tx.send(line).is_err() {
                    break;
                }
                buf.clear();
            }
        }));
    }
    drop(tx);
    let console_path = run_dir.join("console.log");
    let mut console =
        fs::File::create(&console_path).map_err(|e| io_fail("cannot create", &console_path, e))?;
    let deadline = t0 + limit;
    let mut timed_out = false;
    let mut last = Vec::<String>::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let _ = writeln!(console, "{line}");
                if let Some(msg) = line.strip_prefix("vmtest: ") {
                    eprintln!(
                        "xtask: vmtest: [{tag}] {msg} ({})",
                        fmt_secs(t0.elapsed().as_secs_f64())
                    );
                } else if verbose || line.starts_with("vmtest-init:") {
                    eprintln!("[{tag}] {line}");
                }
                last.push(line);
                if last.len() > 30 {
                    last.remove(0);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                eprintln!(
                    "xtask: vmtest: [{tag}] time-out after {} s: stopping QEMU (pid {})",
                    limit.as_secs(),
                    qemu.id()
                );
                let _ = writeln!(
                    console,
                    "xtask: vmtest: time-out after {} s",
                    limit.as_secs()
                );
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // QEMU closed its output (or ran out of time): give it a moment, then stop it.
    stop(
        &mut qemu,
        if timed_out {
            Duration::ZERO
        } else {
            Duration::from_secs(10)
        },
    );
    for r in readers {
        let _ = r.join();
    }
    if let Some(c) = vfsd.as_mut() {
        stop(c, Duration::from_secs(3));
    }
    let _ = fs::remove_file(&sock);
    // the C virtiofsd (Debian 12) leaves a pid file named after the socket path
    let pid_file = sock.to_string_lossy().replace('/', ".") + ".pid";
    let _ = fs::remove_file(Path::new("/run/virtiofsd").join(pid_file));
    Ok(Boot {
        timed_out,
        virtiofs,
        secs: t0.elapsed().as_secs_f64(),
        console_tail: last.join("\n"),
    })
}

/// Waits up to `grace` for a child we started to exit, then kills it (SIGKILL to its PID) and reaps it.
fn stop(child: &mut Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() >= deadline => break,
            Ok(None) => thread::sleep(Duration::from_millis(50)),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs a command (stdio as configured by the caller), killing it (by PID) if it overruns.
fn run_limited(cmd: &mut Command, limit: Duration) -> Res {
    let what = crate::show(cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot run `{what}`: {e}")))?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(fail(format!("`{what}` failed ({st})"))),
            Ok(None) if Instant::now() >= deadline => {
                stop(&mut child, Duration::ZERO);
                return Err(fail(format!(
                    "`{what}` did not finish within {} s",
                    limit.as_secs()
                )));
            }
            Ok(None) => thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(fail(format!("waiting for `{what}`: {e}"))),
        }
    }
}

// ---- libtest output ----

#[derive(Default)]
struct Libtest {
    passed: u32,
    failed: u32,
    ignored: u32,
    failures: Vec<Failure>,
}

struct Failure {
    name: String,
    /// One line: what went wrong (see `summarize`).
    summary: String,
    /// The test's output, shortened.
    message: String,
}

fn parse_libtest(log: &str) -> Libtest {
    let mut r = Libtest::default();
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("test ") {
            if rest.ends_with(" ... ok") {
                r.passed += 1;
            } else if rest.ends_with(" ... FAILED") {
                r.failed += 1;
            } else if rest.contains(" ... ignored") {
                r.ignored += 1;
            }
        }
    }
    for (name, body) in crate::rerun::failure_blocks(log) {
        r.failures.push(Failure {
            name,
            summary: summarize(&body),
            message: shorten(&body, 25, 2500),
        });
    }
    r
}

/// The line that says what went wrong: the panic message (the line after "panicked at"), preceded by
/// the BPF verifier's verdict (the line before "processed N insns") or the tool's own error line when
/// the panic is about a tool that did not start.
fn summarize(body: &str) -> String {
    let lines: Vec<&str> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let first = lines
        .iter()
        .position(|l| l.contains(" panicked at "))
        .and_then(|i| lines.get(i + 1))
        .or_else(|| lines.iter().find(|l| l.contains("rror")))
        .or(lines.first())
        .copied()
        .unwrap_or("");
    if !first.ends_with("stderr:") {
        return first.to_string();
    }
    let verifier = lines
        .iter()
        .position(|l| l.starts_with("processed ") && l.contains(" insns "))
        .and_then(|i| i.checked_sub(1))
        .map(|i| format!("verifier: {}", lines[i]));
    let tool = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("sockray ") && (l.contains("failed") || l.contains("rror")))
        .map(|l| l.to_string());
    match verifier.or(tool) {
        Some(why) => format!("{why} — {first}"),
        None => first.to_string(),
    }
}

fn shorten(text: &str, max_lines: usize, max_chars: usize) -> String {
    let mut out: String = text.lines().take(max_lines).collect::<Vec<_>>().join("\n");
    if out.len() > max_chars {
        let mut cut = max_chars;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    } else if text.lines().count() > max_lines {
        out.push_str("\n…");
    }
    out
}

/// Test binary → tool: `tests/tcplife.rs` → tcplife; `tests/cli.rs` → cli.
fn tool_of(test: &str) -> &str {
    test
}

// ---- small helpers ----

fn fmt_secs(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
fn now_utc() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // civil from days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_warnings_are_blamed_on_the_running_binary() {
        let console = "\
vmtest: tcpconnlat: running
vmtest: tcpconnlat: exit 0 after 23 s
vmtest: tcplife: running
[  117.287592] ------------[ cut here ]------------
[  117.290588] trace type BPF program uses run-time allocation
[  117.292099] WARNING: CPU: 1 PID: 793 at kernel/bpf/verifier.c:10519 bpf_check+0x2f8e/0x3470
[  117.300064] Call Trace:
vmtest: tcplife: exit 0 after 33 s
vmtest: tcpstates: running
";
        let c = kernel_complaints(console);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].0, "tcplife");
        assert!(
            c[0].1
                .starts_with("trace type BPF program uses run-time allocation (WARNING: CPU: 1")
        );
        assert!(kernel_complaints("vmtest: cli: running\n[ 1.0] all fine\n").is_empty());
    }

    #[test]
    fn libtest_output() {
        let log = "running 3 tests\ntest a ... ok\ntest b ... FAILED\ntest c ... ignored, slow\n\n\
                   failures:\n\n---- b stdout ----\nthread 'b' panicked at tests/x.rs:1:2:\nboom\n\n\n\
                   failures:\n    b\n\ntest result: FAILED. 1 passed; 1 failed; 1 ignored\n";
        let r = parse_libtest(log);
        assert_eq!((r.passed, r.failed, r.ignored), (1, 1, 1));
        assert_eq!(r.failures[0].name, "b");
        assert!(
            r.failures[0].message.ends_with("boom"),
            "{:?}",
            r.failures[0].message
        );
        assert_eq!(r.failures[0].summary, "boom");
    }

    #[test]
    fn summary_of_a_tool_that_did_not_start() {
        let body = "thread 't' (1) panicked at tests/common/mod.rs:311:17:\n\
                    sockray tcplife -L 1 exited before it was ready (status 1); stderr:\n\
                    -- BEGIN PROG LOAD LOG --\n302: (71) r1 = *(u8 *)(r2 +0)\n\
                    R2 unbounded memory access\nprocessed 139 insns (limit 1000000)\n\
                    -- END PROG LOAD LOG --\nsockray tcplife: loading the BPF programs failed\n";
        assert_eq!(
            summarize(body),
            "verifier: R2 unbounded memory access — sockray tcplife -L 1 exited before it was \
             ready (status 1); stderr:"
        );
    }

    #[test]
    fn dates() {
        let d = now_utc();
        assert_eq!(d.len(), 20);
        assert!(d.starts_with("20"));
    }
}
