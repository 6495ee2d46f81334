//! Compiles every `bpf/<tool>.bpf.c` with clang (CO-RE, against the committed `vmlinux.h`) and generates
//! one libbpf-rs skeleton per tool into OUT_DIR, plus `ebpf_sources.rs`: the C text each tool prints
//! for `--ebpf` (the tool's program with the local headers it includes, inlined in include order).

use std::collections::BTreeSet;
use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use libbpf_cargo::SkeletonBuilder;

fn arch_dir() -> &'static str {
    match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64",
        Ok(other) => panic!("sockray ships vmlinux.h for x86_64 only (target arch {other})"),
        Err(_) => "x86_64",
    }
}

/// Local `#include "x.h"` lines of a file, in order.
fn local_includes(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("#include")?.trim();
            let name = rest.strip_prefix('"')?.strip_suffix('"')?;
            Some(name.to_string())
        })
        .collect()
}

/// The program text with its local headers, each once, headers first (depth-first include order).
fn gather(dir: &Path, file: &str, seen: &mut BTreeSet<String>, out: &mut Vec<(String, String)>) {
    if file == "vmlinux.h" || !seen.insert(file.to_string()) {
        return;
    }
    let path = dir.join(file);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    for inc in local_includes(&text) {
        gather(dir, &inc, seen, out);
    }
    out.push((file.to_string(), text));
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let bpf_dir = manifest.join("bpf");
    let vmlinux_dir = bpf_dir.join("vmlinux").join(arch_dir());
    println!("cargo:rerun-if-changed=bpf");

    let mut tools: Vec<String> = fs::read_dir(&bpf_dir)
        .expect("bpf/ directory")
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter_map(|n| n.strip_suffix(".bpf.c").map(str::to_string))
        .collect();
    tools.sort();

    let mut sources = String::from(
        "/// (tool, BPF C text) for `--ebpf`.\npub const EBPF_SOURCES: &[(&str, &str)] = &[\n",
    );
    for tool in &tools {
        let src = bpf_dir.join(format!("{tool}.bpf.c"));
        let skel = out.join(format!("{tool}.skel.rs"));
        let obj = out.join(format!("{tool}.bpf.o"));
        SkeletonBuilder::new()
            .source(&src)
            .obj(&obj)
            .clang_args([
                OsStr::new("-I"),
                vmlinux_dir.as_os_str(),
                OsStr::new("-I"),
                bpf_dir.as_os_str(),
                OsStr::new("-Wall"),
                OsStr::new("-Wno-unused-function"),
                OsStr::new("-Wno-compare-distinct-pointer-types"),
            ])
            .build_and_generate(&skel)
            .unwrap_or_else(|e| panic!("building bpf/{tool}.bpf.c: {e:#}"));

        let mut seen = BTreeSet::new();
        let mut parts = Vec::new();
        gather(&bpf_dir, &format!("{tool}.bpf.c"), &mut seen, &mut parts);
        let mut text = String::new();
        for (name, body) in parts {
            text.push_str(&format!("/* ---- bpf/{name} ---- */\n{body}\n"));
        }
        sources.push_str(&format!("    ({tool:?}, {text:?}),\n"));
    }
    sources.push_str("];\n");
    fs::write(out.join("ebpf_sources.rs"), sources).unwrap();
}
