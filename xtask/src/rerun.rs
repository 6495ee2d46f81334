//! One rule for reading test output, on the host (`cargo xtask test`) and in the vmtest guest
//! (`vm/guest.sh` carries the same rule in awk): a test whose only failure is the harness's
//! skipped-runs check (`Tracer::stop` in tests/common: the kernel skipped, and counted, runs of one of
//! the tool's programs, so the trace cannot be checked for exact counts) is run again by its exact name,
//! up to [`RERUNS`] times, and passes if a rerun passes. Every other failure fails at once. The reruns
//! are printed and counted; a kernel that keeps skipping still fails the test.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Res, fail, show};

/// The message `Tracer::stop` panics with when the kernel skipped program runs.
pub const SKIP_MARK: &str = "the kernel skipped program runs; stderr:";
/// Runs of a skipped-runs failure after the first.
pub const RERUNS: usize = 2;

/// Each failed test of one libtest run, with its captured output (the `---- NAME stdout ----` block).
pub fn failure_blocks(log: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in log.lines() {
        let Some(name) = line
            .strip_prefix("test ")
            .and_then(|r| r.strip_suffix(" ... FAILED"))
        else {
            continue;
        };
        let head = format!("---- {name} stdout ----\n");
        let body = match log.find(&head) {
            Some(at) => {
                let body = &log[at + head.len()..];
                let end = [body.find("\n---- "), body.find("\n\nfailures:\n")]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(body.len());
                body[..end].trim()
            }
            None => "",
        };
        out.push((name.to_string(), body.to_string()));
    }
    out
}

/// The tests to run again: `Some` when every failed test failed on skipped runs only, `None` when
/// any failed otherwise or the run failed without a failed test (a crash, a time-out, no libtest).
pub fn skip_only(log: &str) -> Option<Vec<String>> {
    let blocks = failure_blocks(log);
    if blocks.is_empty() || blocks.iter().any(|(_, b)| !b.contains(SKIP_MARK)) {
        return None;
    }
    Some(blocks.into_iter().map(|(n, _)| n).collect())
}

/// One test binary's part of `cargo test`'s output.
struct Segment {
    /// What cargo said it runs (`tests/tcptop.rs`, `unittests src/main.rs`, `Doc-tests sockray`).
    what: String,
    exe: Option<PathBuf>,
    text: String,
}

/// Splits `cargo test`'s merged output at its `Running`/`Doc-tests` lines.
fn segments(out: &str, root: &Path) -> Vec<Segment> {
    let mut segs: Vec<Segment> = Vec::new();
    for line in out.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("Running ") {
            let (what, exe) = match (rest.rfind(" ("), rest.ends_with(')')) {
                (Some(at), true) => (
                    rest[..at].to_string(),
                    Some(root.join(&rest[at + 2..rest.len() - 1])),
                ),
                _ => (rest.to_string(), None),
            };
            segs.push(Segment {
                what,
                exe,
                text: String::new(),
            });
        } else if t.starts_with("Doc-tests ") {
            segs.push(Segment {
                what: t.to_string(),
                exe: None,
                text: String::new(),
            });
        } else if let Some(s) = segs.last_mut() {
            s.text.push_str(line);
            s.text.push('\n');
        }
    }
    segs
}

/// Runs `cargo test` (stdout and stderr merged, echoed as they come), then applies the rule above.
pub fn cargo_test(mut cmd: Command, root: &Path) -> Res {
    eprintln!("==> {}", show(&cmd));
    let (reader, writer) = std::io::pipe().map_err(|e| fail(format!("pipe: {e}")))?;
    let writer2 = writer.try_clone().map_err(|e| fail(format!("pipe: {e}")))?;
    let mut child = cmd
        .stdout(writer)
        .stderr(writer2)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", show(&cmd))))?;
    // the command holds the pipe's writing ends until it is dropped
    drop(cmd);
    let mut out = String::new();
    let mut echo = std::io::stdout().lock();
    for line in BufReader::new(reader).lines() {
        let line = line.map_err(|e| fail(format!("reading cargo test's output: {e}")))?;
        let _ = writeln!(echo, "{line}");
        out.push_str(&line);
        out.push('\n');
    }
    drop(echo);
    let status = child
        .wait()
        .map_err(|e| fail(format!("waiting for cargo test: {e}")))?;
    if status.success() {
        return Ok(());
    }
    let mut failed = Vec::new();
    let mut rerun_any = false;
    for seg in segments(&out, root) {
        if !seg.text.contains("test result: FAILED") {
            continue;
        }
        match (skip_only(&seg.text), &seg.exe) {
            (Some(names), Some(exe)) => {
                for name in names {
                    rerun_any = true;
                    if !rerun(exe, &name, root) {
                        failed.push(format!("{}: {name} (skipped runs on every run)", seg.what));
                    }
                }
            }
            _ => failed.push(seg.what),
        }
    }
    if !failed.is_empty() {
        return Err(fail(format!("tests failed: {}", failed.join(", "))));
    }
    if !rerun_any {
        // cargo failed, but no test binary did: a build error, or output this parser does not know
        return Err(fail(format!("cargo test failed ({status})")));
    }
    eprintln!("xtask: test: passed, with the reruns above");
    Ok(())
}

/// Runs one test again by its exact name, up to [`RERUNS`] times, until it passes.
fn rerun(exe: &Path, name: &str, root: &Path) -> bool {
    for n in 1..=RERUNS {
        eprintln!(
            "xtask: test: {name} failed on runs the kernel skipped (counted, so the trace is not \
             exact); run {n} of {RERUNS} again: {} --exact {name}",
            exe.display()
        );
        let ok = Command::new(exe)
            .args(["--exact", name, "--test-threads=1"])
            .current_dir(root)
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            eprintln!("xtask: test: {name}: passed on rerun {n}");
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const SKIPPED: &str = "\
running 2 tests
test a ... ok
test pid_filter ... FAILED

failures:

---- pid_filter stdout ----
sockray tcptop: the kernel skipped 2 program run(s)

thread 'pid_filter' panicked at tests/common/mod.rs:1047:9:
assertion `left == right` failed: the kernel skipped program runs; stderr:
sockray: ready

failures:
    pid_filter

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 6.00s
";

    #[test]
    fn only_skipped_runs_are_rerun() {
        assert_eq!(skip_only(SKIPPED), Some(vec!["pid_filter".to_string()]));
        let other = SKIPPED.replace(SKIP_MARK, "RX of the client");
        assert_eq!(skip_only(&other), None);
        // a second failure of another kind: nothing is rerun
        let two = SKIPPED.replace(
            "test a ... ok",
            "test a ... FAILED\n\n---- a stdout ----\nassertion failed\n",
        );
        assert_eq!(skip_only(&two), None);
        assert_eq!(skip_only("error: could not compile"), None);
    }

    #[test]
    fn cargo_output_is_split_per_binary() {
        let out = format!(
            "   Compiling x\n     Running unittests src/main.rs (target/release/deps/sockray-1)\n\
             test result: ok.\n     Running tests/tcptop.rs (target/release/deps/tcptop-2)\n{SKIPPED}\
             \x20  Doc-tests sockray\nrunning 0 tests\n"
        );
        let segs = segments(&out, Path::new("/w"));
        assert_eq!(segs.len(), 3);
        assert_eq!(segs[1].what, "tests/tcptop.rs");
        assert_eq!(
            segs[1].exe.as_deref(),
            Some(Path::new("/w/target/release/deps/tcptop-2"))
        );
        assert!(skip_only(&segs[1].text).is_some());
        assert!(segs[2].exe.is_none());
    }
}
