//! `results.json` (merged across invocations) and the Markdown table for the terminal and README.md.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::Path;

use super::json::{Json, obj, s};
use super::kernel::version_cmp;
use super::{ALL_PATHS, headline, now_utc, results_path, shorten, tail};
use crate::{Res, fail, io_fail, workspace_root};

const README_BEGIN: &str = "<!-- vmtest:begin -->";
const README_END: &str = "<!-- vmtest:end -->";

pub(super) fn merge_results(file: &Path, new: &[Json]) -> Res<usize> {
    let mut runs: Vec<Json> = match fs::read_to_string(file) {
        Ok(text) => Json::parse(&text)
            .map_err(|e| fail(format!("{}: {e}", file.display())))?
            .arr("runs")
            .to_vec(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_fail("cannot read", file, e)),
    };
    let key = |r: &Json| {
        (
            r.str("series").unwrap_or("").to_string(),
            r.str("path").unwrap_or("").to_string(),
        )
    };
    let replaced: HashSet<_> = new.iter().map(key).collect();
    runs.retain(|r| !replaced.contains(&key(r)));
    runs.extend(new.iter().cloned());
    runs.sort_by(|a, b| {
        version_cmp(a.str("kernel").unwrap_or(""), b.str("kernel").unwrap_or("")).then(
            path_rank(a.str("path").unwrap_or("")).cmp(&path_rank(b.str("path").unwrap_or(""))),
        )
    });
    let count = runs.len();
    let doc = obj([
        (
            "about",
            s(
                "cargo xtask vmtest: integration tests per kernel and attach path; a run of a kernel series \
               and path replaces the earlier one",
            ),
        ),
        ("updated", s(now_utc())),
        ("runs", Json::Arr(runs)),
    ]);
    if let Some(dir) = file.parent() {
        fs::create_dir_all(dir).map_err(|e| io_fail("cannot create", dir, e))?;
    }
    fs::write(file, doc.pretty()).map_err(|e| io_fail("cannot write", file, e))?;
    Ok(count)
}

fn path_rank(p: &str) -> usize {
    ALL_PATHS
        .iter()
        .position(|x| *x == p)
        .unwrap_or(ALL_PATHS.len())
}

/// `6.1.0-56-amd64` → `6.1.0-56`.
pub(super) fn short_kernel(v: &str) -> &str {
    v.strip_suffix("-amd64").unwrap_or(v)
}

/// Markdown table: one row per (tool, path), one column per kernel series, then the failures.
/// With `readme`, the notes name the source; without, it is a terminal summary.
pub(super) fn render_table(runs: &[Json], readme: bool) -> String {
    // columns: series in kernel order, headed by the kernel version(s) they ran
    let mut series: Vec<(String, BTreeSet<String>)> = Vec::new();
    let mut sorted: Vec<&Json> = runs.iter().collect();
    sorted
        .sort_by(|a, b| version_cmp(a.str("kernel").unwrap_or(""), b.str("kernel").unwrap_or("")));
    for r in &sorted {
        let (Some(se), Some(k)) = (r.str("series"), r.str("kernel")) else {
            continue;
        };
        match series.iter_mut().find(|(s, _)| s == se) {
            Some((_, ks)) => {
                ks.insert(short_kernel(k).to_string());
            }
            None => series.push((
                se.to_string(),
                BTreeSet::from([short_kernel(k).to_string()]),
            )),
        }
    }
    let mut tools: BTreeSet<String> = BTreeSet::new();
    let mut paths: BTreeSet<(usize, String)> = BTreeSet::new();
    for r in runs {
        paths.insert((
            path_rank(r.str("path").unwrap_or("")),
            r.str("path").unwrap_or("").to_string(),
        ));
        for t in r.arr("tests") {
            tools.insert(t.str("tool").unwrap_or("?").to_string());
        }
    }
    let find = |se: &str, path: &str| {
        runs.iter()
            .find(|r| r.str("series") == Some(se) && r.str("path") == Some(path))
    };
    let mut out = String::new();
    out.push_str("| tool | path |");
    for (_, ks) in &series {
        out.push_str(&format!(
            " {} |",
            ks.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    out.push_str("\n|---|---|");
    out.push_str(&"---|".repeat(series.len()));
    out.push('\n');
    let mut filtered = false;
    for tool in &tools {
        for (_, path) in &paths {
            let cells: Vec<String> = series
                .iter()
                .map(|(se, _)| {
                    let Some(r) = find(se, path) else {
                        return "–".to_string();
                    };
                    let star = if r.arr("args").is_empty() {
                        ""
                    } else {
                        filtered = true;
                        "*"
                    };
                    if r.str("status") == Some("skip") {
                        return "n/a".to_string();
                    }
                    let Some(t) = r.arr("tests").iter().find(|t| t.str("tool") == Some(tool))
                    else {
                        return "–".to_string();
                    };
                    let st = t.str("status").unwrap_or("?");
                    let (p, f) = (
                        t.num("passed").unwrap_or(0.0),
                        t.num("failed").unwrap_or(0.0),
                    );
                    match st {
                        "pass" => format!("pass{star}"),
                        "fail" if p + f > 0.0 => format!("**FAIL** {f} of {}{star}", p + f),
                        other => format!("**{}**{star}", other.to_uppercase()),
                    }
                })
                .collect();
            if cells.iter().all(|c| c == "–") {
                continue;
            }
            out.push_str(&format!("| {tool} | {path} | {} |\n", cells.join(" | ")));
        }
    }
    let mut notes = Vec::new();
    if filtered {
        notes.push("`*`: run with test filter arguments (not every test ran).".to_string());
    }
    let mut fails = Vec::new();
    for r in &sorted {
        for t in r.arr("tests") {
            let st = t.str("status").unwrap_or("");
            if st == "pass" || st == "not-run" && r.str("status") == Some("skip") {
                continue;
            }
            let head = format!(
                "{} on {}, path {}",
                t.str("tool").unwrap_or("?"),
                short_kernel(r.str("kernel").unwrap_or("?")),
                r.str("path").unwrap_or("?")
            );
            let fs_ = t.arr("failures");
            if fs_.is_empty() {
                let why = t.str("tail").map(|x| tail(x, 1)).unwrap_or_default();
                fails.push(format!("- {head}: {st} {}", code_span(why.trim())));
            }
            for f in fs_ {
                fails.push(format!(
                    "- {head}: `{}` {}",
                    f.str("name").unwrap_or("?"),
                    code_span(headline(f.str("message").unwrap_or("")))
                ));
            }
        }
    }
    if !fails.is_empty() {
        out.push_str("\nFailures:\n\n");
        for f in &fails {
            out.push_str(f);
            out.push('\n');
        }
    }
    if readme {
        let dates: BTreeSet<&str> = runs.iter().filter_map(|r| r.str("started")).collect();
        let (first, last) = (
            dates.first().map(|d| &d[..10.min(d.len())]).unwrap_or("?"),
            dates.last().map(|d| &d[..10.min(d.len())]).unwrap_or("?"),
        );
        let sources: BTreeSet<&str> = runs.iter().filter_map(|r| r.str("source")).collect();
        let sources: Vec<String> = sources.iter().map(|s| format!("`{s}`")).collect();
        notes.push(format!(
            "Debian `linux-image-<version>-amd64` kernels in QEMU (TCG), runs of {first}{}{}; \
             `pass` = every test of that binary passed, `n/a` = the kernel has no such path, \
             `–` = not run.",
            if first == last {
                String::new()
            } else {
                format!(" to {last}")
            },
            if sources.is_empty() {
                String::new()
            } else {
                format!(", tests built from {}", sources.join(", "))
            }
        ));
    }
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            out.push_str(&n);
            out.push('\n');
        }
    }
    out
}

fn code_span(s: &str) -> String {
    if s.is_empty() {
        return String::new();
    }
    let s = shorten(s, 1, 200);
    if s.contains('`') {
        format!("`` {s} ``")
    } else {
        format!("`{s}`")
    }
}

/// `--report`: the README table between the markers, from results.json.
pub(super) fn report() -> Res {
    let file = results_path();
    let text = fs::read_to_string(&file).map_err(|e| {
        fail(format!(
            "cannot read {}: {e} (run `cargo xtask vmtest` first)",
            file.display()
        ))
    })?;
    let doc = Json::parse(&text).map_err(|e| fail(format!("{}: {e}", file.display())))?;
    let runs = doc.arr("runs");
    if runs.is_empty() {
        return Err(fail(format!("{}: no runs recorded", file.display())));
    }
    let table = render_table(runs, true);
    let readme = workspace_root().join("README.md");
    let old = fs::read_to_string(&readme).map_err(|e| io_fail("cannot read", &readme, e))?;
    let (Some(b), Some(e)) = (old.find(README_BEGIN), old.find(README_END)) else {
        return Err(fail(format!(
            "README.md has no `{README_BEGIN}` … `{README_END}` markers"
        )));
    };
    if e < b {
        return Err(fail("README.md: vmtest markers out of order"));
    }
    let new = format!(
        "{}{README_BEGIN}\n<!-- generated by `cargo xtask vmtest --report` from target/vmtest/results.json; \
         do not edit by hand -->\n\n{table}\n{}",
        &old[..b],
        &old[e..]
    );
    if new == old {
        println!("README.md: kernel table unchanged");
        return Ok(());
    }
    fs::write(&readme, new).map_err(|e| io_fail("cannot write", &readme, e))?;
    println!("README.md: kernel table updated from {}", file.display());
    Ok(())
}
