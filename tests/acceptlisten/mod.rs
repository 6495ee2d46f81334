//! Helpers of the tcpaccept and solisten tests (on top of `common`): a tracer in table mode (what a
//! person sees, without --json), a fresh cgroup v2 directory, and the namespace inode.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::common::{Netns, READY_TIMEOUT, STOP_TIMEOUT, kill_by_pid, sockray_bin, wait_timeout};

/// `sockray <tool> --verbose args...` in table mode (no --json): the lines a person reads.
pub struct TextTracer {
    child: Option<Child>,
    desc: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    threads: Vec<JoinHandle<()>>,
}

impl TextTracer {
    /// Start and wait (up to READY_TIMEOUT) for `sockray: ready` on stderr.
    pub fn start(tool: &str, args: &[&str]) -> TextTracer {
        let desc = format!("sockray {tool} --verbose {}", args.join(" "));
        let mut child = Command::new(sockray_bin())
            .arg(tool)
            .arg("--verbose")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<bool>();
        let err_pipe = child.stderr.take().unwrap();
        let err_buf = Arc::clone(&stderr);
        let t_err = thread::spawn(move || {
            let mut told = false;
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                err_buf.lock().unwrap().push_str(&format!("{line}\n"));
                if !told && line.contains("sockray: ready") {
                    told = true;
                    let _ = tx.send(true);
                }
            }
            if !told {
                let _ = tx.send(false);
            }
        });
        let out_pipe = child.stdout.take().unwrap();
        let out_buf = Arc::clone(&stdout);
        let t_out = thread::spawn(move || {
            for line in BufReader::new(out_pipe).lines().map_while(Result::ok) {
                out_buf.lock().unwrap().push(line);
            }
        });
        let t = TextTracer {
            child: Some(child),
            desc,
            stdout,
            stderr,
            threads: vec![t_err, t_out],
        };
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(true) => t,
            Ok(false) | Err(RecvTimeoutError::Disconnected) => panic!(
                "{} exited before it was ready; stderr:\n{}",
                t.desc,
                t.stderr.lock().unwrap()
            ),
            Err(RecvTimeoutError::Timeout) => panic!(
                "{} not ready within {READY_TIMEOUT:?}; stderr:\n{}",
                t.desc,
                t.stderr.lock().unwrap()
            ),
        }
    }

    /// SIGINT, wait for exit 0, return every stdout line (header first).
    pub fn stop(mut self) -> Vec<String> {
        let mut child = self.child.take().unwrap();
        kill_by_pid(&mut child, libc::SIGINT);
        let st = wait_timeout(&mut child, STOP_TIMEOUT);
        let Some(st) = st else {
            kill_by_pid(&mut child, libc::SIGKILL);
            let _ = child.wait();
            panic!(
                "{} did not exit within {STOP_TIMEOUT:?} of SIGINT",
                self.desc
            );
        };
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let err = self.stderr.lock().unwrap().clone();
        assert!(
            st.success(),
            "{} exited with {st}; stderr:\n{err}",
            self.desc
        );
        assert!(
            !err.contains("lost"),
            "{}: events were lost; stderr:\n{err}",
            self.desc
        );
        std::mem::take(&mut *self.stdout.lock().unwrap())
    }
}

impl Drop for TextTracer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_by_pid(&mut child, libc::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid
/// systems), from /proc/mounts.
pub fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .expect("no cgroup2 mount in /proc/mounts")
}

static CG_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh, empty cgroup v2 directory of this test; removed on drop (once its processes are gone).
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new() -> Cgroup {
        let n = CG_COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = cgroup2_root().join(format!("sockray-t-{}-{n}", std::process::id()));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Cgroup { path }
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Move a process (all its threads) into this cgroup.
    pub fn add(&self, pid: u64) {
        let procs = self.path.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", procs.display()));
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // the processes moved in may take a moment to be reaped
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("note: could not remove {}", self.path.display());
    }
}

/// The inode number of a network namespace (as `--show-netns` prints it).
pub fn netns_inode(ns: &Netns) -> u64 {
    let p = format!("/run/netns/{}", ns.name);
    std::fs::metadata(&p)
        .unwrap_or_else(|e| panic!("stat {p}: {e}"))
        .ino()
}

/// The inode number of the test's own (root) network namespace.
pub fn own_netns_inode() -> u64 {
    std::fs::metadata("/proc/self/ns/net")
        .expect("stat /proc/self/ns/net")
        .ino()
}
