//! `results.json` (one record per kernel series × attach path × test binary, merged across invocations)
//! and the Markdown table for the terminal and docs/kernels.md.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use super::json::{Json, obj, s};
use super::kernel::version_cmp;
use super::{ALL_PATHS, now_utc, results_path, shorten};
use crate::{Res, fail, io_fail, workspace_root};

/// The page that holds the kernel table (linked from the README), relative to the workspace root.
const PAGE: &str = "docs/kernels.md";
const MARK_BEGIN: &str = "<!-- vmtest:begin -->";
const MARK_END: &str = "<!-- vmtest:end -->";

fn key(r: &Json) -> (String, String, String) {
    let f = |k| r.str(k).unwrap_or("").to_string();
    (f("series"), f("path"), f("test"))
}

fn read_results(file: &Path) -> Res<Vec<Json>> {
    match fs::read_to_string(file) {
        Ok(text) => Ok(Json::parse(&text)
            .map_err(|e| fail(format!("{}: {e}", file.display())))?
            .arr("results")
            .to_vec()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_fail("cannot read", file, e)),
    }
}

/// Adds `new` records to the file; each replaces the record of the same kernel series, path and test.
/// Returns how many records the file holds.
pub(super) fn merge_results(file: &Path, new: &[Json]) -> Res<usize> {
    let mut all = read_results(file)?;
    all.retain(|r| !new.iter().any(|n| key(n) == key(r)));
    all.extend(new.iter().cloned());
    all.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        version_cmp(a.str("kernel").unwrap_or(""), b.str("kernel").unwrap_or(""))
            .then(path_rank(&ka.1).cmp(&path_rank(&kb.1)))
            .then(ka.2.cmp(&kb.2))
    });
    let count = all.len();
    let doc = obj([
        (
            "about",
            s(
                "cargo xtask vmtest: one record per kernel series, attach path and test binary; \
               a new run replaces the record of the same three",
            ),
        ),
        ("updated", s(now_utc())),
        ("results", Json::Arr(all)),
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

/// Markdown: one row per (tool, path), one column per kernel series, then the failures grouped per
/// test. With `readme`, a note says where the figures come from.
pub(super) fn render_table(records: &[Json], readme: bool) -> String {
    let mut sorted: Vec<&Json> = records.iter().collect();
    sorted.sort_by(|a, b| {
        version_cmp(a.str("kernel").unwrap_or(""), b.str("kernel").unwrap_or(""))
            .then(path_rank(&key(a).1).cmp(&path_rank(&key(b).1)))
    });
    // columns: series in kernel order, headed by the kernel version(s) they ran
    let mut series: Vec<(String, BTreeSet<String>)> = Vec::new();
    let mut tools: BTreeSet<String> = BTreeSet::new();
    let mut paths: BTreeSet<(usize, String)> = BTreeSet::new();
    for r in &sorted {
        let (se, path, _) = key(r);
        let k = short_kernel(r.str("kernel").unwrap_or("?")).to_string();
        match series.iter_mut().find(|(s, _)| *s == se) {
            Some((_, ks)) => {
                ks.insert(k);
            }
            None => series.push((se, BTreeSet::from([k]))),
        }
        paths.insert((path_rank(&path), path));
        tools.insert(r.str("tool").unwrap_or("?").to_string());
    }

    let mut out = String::from("| tool | path |");
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
                    let Some(r) = sorted.iter().find(|r| {
                        r.str("series") == Some(se)
                            && r.str("path") == Some(path)
                            && r.str("tool") == Some(tool)
                    }) else {
                        return "–".to_string();
                    };
                    let star = if r.arr("args").is_empty() {
                        ""
                    } else {
                        filtered = true;
                        "*"
                    };
                    let (p, f) = (
                        r.num("passed").unwrap_or(0.0),
                        r.num("failed").unwrap_or(0.0),
                    );
                    match r.str("status").unwrap_or("?") {
                        "pass" => format!("pass{star}"),
                        "skip" => "n/a".to_string(),
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

    // failures grouped by (tool, test): where they happened, and the first one's summary
    struct Group {
        tool: String,
        test: String,
        summary: String,
        /// (kernel, paths)
        places: Vec<(String, Vec<String>)>,
    }
    let mut groups: Vec<Group> = Vec::new();
    for r in &sorted {
        let st = r.str("status").unwrap_or("");
        if matches!(st, "pass" | "skip") {
            continue;
        }
        let kernel = short_kernel(r.str("kernel").unwrap_or("?")).to_string();
        let path = r.str("path").unwrap_or("?").to_string();
        let tool = r.str("tool").unwrap_or("?").to_string();
        let mut items: Vec<(String, String)> = r
            .arr("failures")
            .iter()
            .map(|f| {
                (
                    format!("`{}`", f.str("name").unwrap_or("?")),
                    f.str("summary").unwrap_or("").to_string(),
                )
            })
            .collect();
        if items.is_empty() {
            let why = r.str("tail").and_then(|t| t.lines().last()).unwrap_or("");
            items.push((format!("({st})"), why.trim().to_string()));
        }
        for (test, summary) in items {
            let i = match groups.iter().position(|g| g.tool == tool && g.test == test) {
                Some(i) => i,
                None => {
                    groups.push(Group {
                        tool: tool.clone(),
                        test,
                        summary,
                        places: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            let places = &mut groups[i].places;
            match places.iter_mut().find(|(k, _)| *k == kernel) {
                Some((_, paths)) => paths.push(path.clone()),
                None => places.push((kernel.clone(), vec![path.clone()])),
            }
        }
    }
    if !groups.is_empty() {
        out.push_str("\nFailures (the first one's message):\n\n");
        for g in &groups {
            let places: Vec<String> = g
                .places
                .iter()
                .map(|(k, paths)| format!("{k} ({})", paths.join(", ")))
                .collect();
            out.push_str(&format!(
                "- {} {} on {}: {}\n",
                g.tool,
                g.test,
                places.join(", "),
                code_span(&g.summary)
            ));
        }
    }

    let mut notes = Vec::new();
    if filtered {
        notes.push("`*`: run with test filter arguments (not every test ran).".to_string());
    }
    if readme {
        let dates: BTreeSet<&str> = records.iter().filter_map(|r| r.str("started")).collect();
        fn day<'a>(d: Option<&&'a str>) -> &'a str {
            d.map(|d| &d[..10.min(d.len())]).unwrap_or("?")
        }
        let (first, last) = (day(dates.first()), day(dates.last()));
        let sources: BTreeSet<&str> = records.iter().filter_map(|r| r.str("source")).collect();
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
    let s = shorten(s, 1, 220);
    if s.contains('`') {
        format!("`` {s} ``")
    } else {
        format!("`{s}`")
    }
}

/// `--report`: the kernel table of docs/kernels.md (between the markers), from results.json.
pub(super) fn report() -> Res {
    let file = results_path();
    let records = read_results(&file)?;
    if records.is_empty() {
        return Err(fail(format!(
            "{}: no results recorded (run `cargo xtask vmtest` first)",
            file.display()
        )));
    }
    let table = render_table(&records, true);
    let readme = workspace_root().join(PAGE);
    let old = fs::read_to_string(&readme).map_err(|e| io_fail("cannot read", &readme, e))?;
    let (Some(b), Some(e)) = (old.find(MARK_BEGIN), old.find(MARK_END)) else {
        return Err(fail(format!(
            "{PAGE} has no `{MARK_BEGIN}` … `{MARK_END}` markers"
        )));
    };
    if e < b {
        return Err(fail(format!("{PAGE}: vmtest markers out of order")));
    }
    let new = format!(
        "{}{MARK_BEGIN}\n<!-- generated by `cargo xtask vmtest --report` from target/vmtest/results.json; \
         do not edit by hand -->\n\n{table}\n{}",
        &old[..b],
        &old[e..]
    );
    if new == old {
        println!("{PAGE}: kernel table unchanged");
        return Ok(());
    }
    fs::write(&readme, new).map_err(|e| io_fail("cannot write", &readme, e))?;
    println!("{PAGE}: kernel table updated from {}", file.display());
    Ok(())
}
