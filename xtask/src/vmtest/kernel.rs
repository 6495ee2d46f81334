//! Kernels for `vmtest`: the newest Debian package of a series (apt with a private configuration),
//! unpacked into a small cached kit (vmlinuz, vmlinux, config, the guest's modules), and the guest's
//! initramfs (static busybox, `vm/init.sh`, `vm/guest.sh`, the modules).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use super::{Opts, run_limited};
use crate::{Res, fail, io_fail, is_root};

/// Guest modules (with their dependencies): virtio PCI transport, 9p (job directory, fallback root),
/// virtiofs (root), overlay (writable root), veth (tests whose traffic crosses two namespaces), tun (tcprtt's
/// tests: a link that delays packets, tests/common DelayLine). Built in
/// on some kernels; then they are not needed.
const MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "virtiofs",
    "overlay",
    "veth",
    "tun",
];
/// Bump when the kit layout or `MODULES` change: cached kits of another version are fetched again.
const KIT_VERSION: &str = "3";

const INIT_SH: &str = include_str!("../../vm/init.sh");
const GUEST_SH: &str = include_str!("../../vm/guest.sh");

const APT_LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

pub(super) struct Kernel {
    pub(super) series: String,
    /// Debian's name for it, e.g. `6.1.0-56-amd64` (`linux-image-<version>`).
    pub(super) version: String,
    pub(super) dir: PathBuf,
}

/// A version of an ordinary kernel image: `X.Y.Z…`, no rt/cloud/debug flavour, no backport to an older
/// release (`6.1.0-0.deb11.52`), no meta package (`6.1-amd64`).
fn plain_kernel(version: &str) -> bool {
    let base = version.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = base.split('.').collect();
    parts.len() >= 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
        && version.ends_with("-amd64")
        && !["-rt-", "-cloud-", "-dbg", "unsigned", "-0.deb"]
            .iter()
            .any(|x| version.contains(x))
}

/// Does `version` belong to `series` (a prefix ending at a component boundary, or the exact version)?
fn in_series(version: &str, series: &str) -> bool {
    version == series
        || version
            .strip_prefix(series)
            .is_some_and(|rest| rest.starts_with(['.', '-', '+']))
}

/// Natural order: digit runs compare as numbers.
pub(super) fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let b = s.as_bytes();
        for i in 1..=b.len() {
            if i == b.len() || b[i].is_ascii_digit() != b[start].is_ascii_digit() {
                out.push((b[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(&cb) {
        let o = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then(x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if o.is_ne() {
            return o;
        }
    }
    ca.len().cmp(&cb.len())
}

fn newest<'a>(versions: impl IntoIterator<Item = &'a String>, series: &str) -> Option<String> {
    versions
        .into_iter()
        .filter(|v| in_series(v, series))
        .max_by(|a, b| version_cmp(a, b))
        .cloned()
}

/// Kits in the cache that are complete and of the current layout.
fn cached_kernels(kdir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(kdir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| {
            fs::read_to_string(e.path().join("kit-version")).is_ok_and(|v| v.trim() == KIT_VERSION)
        })
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|v| !v.starts_with('.'))
        .collect()
}

pub(super) fn resolve_kernels(o: &Opts, cache: &Path) -> Res<Vec<Kernel>> {
    let kdir = cache.join("kernels");
    fs::create_dir_all(&kdir).map_err(|e| io_fail("cannot create", &kdir, e))?;
    let cached = cached_kernels(&kdir);
    let apt = if o.offline {
        None
    } else {
        match Apt::new(cache).and_then(|apt| apt.kernels().map(|v| (apt, v))) {
            Ok(x) => Some(x),
            Err(f) => {
                eprintln!(
                    "xtask: vmtest: warning: cannot list Debian kernels ({}); using the cache",
                    f.msg
                );
                None
            }
        }
    };
    let mut out: Vec<Kernel> = Vec::new();
    for series in &o.series {
        let from_cache = newest(&cached, series);
        let version = match &apt {
            None => from_cache.ok_or_else(|| {
                fail(format!(
                    "no cached kernel of series {series} in {} (run without --offline)",
                    kdir.display()
                ))
            })?,
            Some((apt, available)) => match newest(available, series) {
                None => {
                    return Err(fail(format!(
                        "Debian has no linux-image package of series {series} (amd64)"
                    )));
                }
                Some(v) if cached.contains(&v) => v,
                Some(v) => match apt.fetch(&v, &kdir) {
                    Ok(()) => v,
                    Err(f) => match from_cache {
                        Some(c) => {
                            eprintln!(
                                "xtask: vmtest: warning: cannot fetch {v} ({}); using cached {c}",
                                f.msg
                            );
                            c
                        }
                        None => return Err(f),
                    },
                },
            },
        };
        if out.iter().any(|k| k.version == version) {
            continue;
        }
        eprintln!("xtask: vmtest: kernel {series}: {version}");
        out.push(Kernel {
            series: series.clone(),
            dir: kdir.join(&version),
            version,
        });
    }
    Ok(out)
}

/// apt-get / apt-cache with a private configuration under `<cache>/apt`.
struct Apt {
    dir: PathBuf,
    conf: PathBuf,
}

impl Apt {
    fn new(cache: &Path) -> Res<Apt> {
        let dir = cache.join("apt");
        for d in ["lists/partial", "cache/archives/partial"] {
            let p = dir.join(d);
            fs::create_dir_all(&p).map_err(|e| io_fail("cannot create", &p, e))?;
        }
        let key = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let mut sources = String::new();
        // 5.10: bullseye(-security); 6.1: bookworm(-security); 6.12: bookworm-security, trixie;
        // 6.18 and 7.x: trixie-backports, sid.
        for (base, suite) in [
            ("debian", "bullseye"),
            ("debian-security", "bullseye-security"),
            ("debian", "bookworm"),
            ("debian-security", "bookworm-security"),
            ("debian", "trixie"),
            ("debian", "trixie-backports"),
            ("debian", "sid"),
        ] {
            sources.push_str(&format!(
                "deb [arch=amd64 signed-by={key}] http://deb.debian.org/{base} {suite} main\n"
            ));
        }
        let d = dir.display();
        let mut conf = format!(
            "Dir::Etc::SourceList \"{d}/sources.list\";\n\
             Dir::Etc::SourceParts \"/nonexistent\";\n\
             Dir::State::Lists \"{d}/lists\";\n\
             Dir::State::status \"{d}/status\";\n\
             Dir::Cache \"{d}/cache\";\n\
             Dir::Cache::pkgcache \"pkgcache.bin\";\n\
             Dir::Cache::srcpkgcache \"\";\n\
             APT::Architectures \"amd64\";\n\
             Acquire::Languages \"none\";\n\
             Acquire::IndexTargets::deb::DEP-11::DefaultEnabled \"false\";\n\
             Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled \"false\";\n\
             Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled \"false\";\n\
             Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled \"false\";\n\
             Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled \"false\";\n"
        );
        if is_root() {
            // the lists live in a root-owned directory the _apt sandbox user cannot write
            conf.push_str("APT::Sandbox::User \"root\";\n");
        }
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            fs::write(&p, text).map_err(|e| io_fail("cannot write", &p, e))
        };
        write("sources.list", &sources)?;
        write("apt.conf", &conf)?;
        if !dir.join("status").exists() {
            write("status", "")?;
        }
        let apt = Apt {
            conf: dir.join("apt.conf"),
            dir,
        };
        apt.update_if_stale()?;
        Ok(apt)
    }

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("APT_CONFIG", &self.conf)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        c
    }

    fn update_if_stale(&self) -> Res {
        let stamp = self.dir.join("lists/.updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < APT_LISTS_MAX_AGE);
        if fresh {
            return Ok(());
        }
        eprintln!("xtask: vmtest: apt-get update (Debian kernel lists, private to the cache)");
        run_limited(
            self.cmd("apt-get")
                .args(["update", "-q"])
                .stdout(Stdio::null()),
            Duration::from_secs(600),
        )?;
        fs::write(&stamp, "").map_err(|e| io_fail("cannot write", &stamp, e))
    }

    /// Versions of all plain amd64 kernel images Debian offers (`linux-image-<version>`).
    fn kernels(&self) -> Res<Vec<String>> {
        let out = self
            .cmd("apt-cache")
            .args(["search", "--names-only", "^linux-image-[0-9].*-amd64$"])
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| fail(format!("cannot run apt-cache: {e}")))?;
        if !out.status.success() {
            return Err(fail(format!("apt-cache search failed ({})", out.status)));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Vec<String> = text
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.strip_prefix("linux-image-"))
            .filter(|v| plain_kernel(v))
            .map(str::to_string)
            .collect();
        if v.is_empty() {
            return Err(fail("apt-cache lists no linux-image packages"));
        }
        Ok(v)
    }

    /// A package with a version to download (`apt-cache show` prints nothing for a virtual one).
    fn has_package(&self, name: &str) -> bool {
        self.cmd("apt-cache")
            .args(["show", "--no-all-versions", name])
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"Package:"))
    }

    /// Downloads `linux-image-<version>` (and, for kernels split into several packages like 7.x,
    /// the `linux-*-<version>` packages it depends on), unpacks them and keeps the kit.
    fn fetch(&self, version: &str, kdir: &Path) -> Res {
        let pkg = format!("linux-image-{version}");
        let show = self
            .cmd("apt-cache")
            .args(["show", "--no-all-versions", &pkg])
            .output()
            .map_err(|e| fail(format!("cannot run apt-cache: {e}")))?;
        let text = String::from_utf8_lossy(&show.stdout);
        let mut pkgs = vec![pkg.clone()];
        for line in text.lines().filter(|l| l.starts_with("Depends:")) {
            for dep in line["Depends:".len()..].split([',', '|']) {
                let name = dep.split_whitespace().next().unwrap_or("");
                // real packages only: 6.18's linux-base-<version> is virtual
                if name.starts_with("linux-")
                    && name.contains(version)
                    && !pkgs.iter().any(|p| p == name)
                    && self.has_package(name)
                {
                    pkgs.push(name.to_string());
                }
            }
        }
        let dl = kdir.join(format!(".{version}.download"));
        let unpack = kdir.join(format!(".{version}.unpack"));
        let new = kdir.join(format!(".{version}.new"));
        for d in [&dl, &unpack, &new] {
            remove_dir(d)?;
        }
        fs::create_dir_all(&dl).map_err(|e| io_fail("cannot create", &dl, e))?;
        eprintln!("xtask: vmtest: downloading {}", pkgs.join(" "));
        run_limited(
            self.cmd("apt-get")
                .args(["download", "-q"])
                .args(&pkgs)
                .current_dir(&dl)
                .stdout(Stdio::null()),
            Duration::from_secs(1200),
        )?;
        for e in fs::read_dir(&dl).map_err(|e| io_fail("cannot read", &dl, e))? {
            let deb = e.map_err(|e| io_fail("cannot read", &dl, e))?.path();
            if deb.extension().is_some_and(|x| x == "deb") {
                crate::step_quiet(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpack))?;
            }
        }
        make_kit(&unpack, version, &new)?;
        let dest = kdir.join(version);
        remove_dir(&dest)?;
        fs::rename(&new, &dest).map_err(|e| io_fail("cannot rename to", &dest, e))?;
        remove_dir(&unpack)?;
        remove_dir(&dl)
    }
}

pub(super) fn remove_dir(d: &Path) -> Res {
    match fs::remove_dir_all(d) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_fail("cannot remove", d, e)),
        _ => Ok(()),
    }
}

/// From an unpacked kernel package: `vmlinuz`, `vmlinux` (when it can be extracted), `config`,
/// `modules/NN-name.ko` (decompressed) + `modules/order`, and `kit-version` (written last).
fn make_kit(unpack: &Path, version: &str, kit: &Path) -> Res {
    let first = |cands: &[PathBuf]| cands.iter().find(|p| p.exists()).cloned();
    let vmlinuz = first(&[
        unpack.join(format!("boot/vmlinuz-{version}")),
        unpack.join(format!("usr/lib/modules/{version}/vmlinuz")),
        unpack.join(format!("lib/modules/{version}/vmlinuz")),
    ])
    .ok_or_else(|| fail(format!("no vmlinuz in the {version} packages")))?;
    let moddir = first(&[
        unpack.join(format!("lib/modules/{version}")),
        unpack.join(format!("usr/lib/modules/{version}")),
    ])
    .ok_or_else(|| fail(format!("no modules directory in the {version} packages")))?;
    let mods = kit.join("modules");
    fs::create_dir_all(&mods).map_err(|e| io_fail("cannot create", &mods, e))?;
    let copy = |from: &Path, to: &str| {
        fs::copy(from, kit.join(to))
            .map(|_| ())
            .map_err(|e| io_fail("cannot copy", from, e))
    };
    copy(&vmlinuz, "vmlinuz")?;
    if let Some(config) = first(&[
        unpack.join(format!("boot/config-{version}")),
        moddir.join("config"),
    ]) {
        copy(&config, "config")?;
    }
    let bz = fs::read(&vmlinuz).map_err(|e| io_fail("cannot read", &vmlinuz, e))?;
    match extract_vmlinux(&bz) {
        Some(elf) => {
            let p = kit.join("vmlinux");
            fs::write(&p, elf).map_err(|e| io_fail("cannot write", &p, e))?;
        }
        None => eprintln!(
            "xtask: vmtest: warning: cannot extract vmlinux from {}: booting the bzImage",
            vmlinuz.display()
        ),
    }
    let order = resolve_modules(&moddir)?;
    let mut list = String::new();
    for (i, (name, bytes)) in order.iter().enumerate() {
        let file = format!("{:02}-{name}.ko", i + 1);
        let p = mods.join(&file);
        fs::write(&p, bytes).map_err(|e| io_fail("cannot write", &p, e))?;
        list.push_str(&file);
        list.push('\n');
    }
    let p = mods.join("order");
    fs::write(&p, list).map_err(|e| io_fail("cannot write", &p, e))?;
    let p = kit.join("kit-version");
    fs::write(&p, KIT_VERSION).map_err(|e| io_fail("cannot write", &p, e))
}

/// `MODULES` and what they depend on (modinfo `depends=`), dependencies first, decompressed.
/// Modules built into this kernel are left out.
fn resolve_modules(moddir: &Path) -> Res<Vec<(String, Vec<u8>)>> {
    let norm = |s: &str| s.replace('-', "_");
    let mut index = BTreeMap::new();
    let mut stack = vec![moddir.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)
            .map_err(|e| io_fail("cannot read", &d, e))?
            .flatten()
        {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                for ext in [".ko", ".ko.xz", ".ko.zst", ".ko.gz"] {
                    if let Some(stem) = name.strip_suffix(ext) {
                        index.insert(norm(stem), p.clone());
                    }
                }
            }
        }
    }
    let builtin: HashSet<String> = fs::read_to_string(moddir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko").map(norm))
        .collect();

    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        builtin: &HashSet<String>,
        seen: &mut HashSet<String>,
        out: &mut Vec<(String, Vec<u8>)>,
    ) -> Res {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let Some(path) = index.get(name) else {
            if builtin.contains(name) {
                return Ok(());
            }
            return Err(fail(format!(
                "kernel module {name} not found (nor built in)"
            )));
        };
        let bytes = read_module(path)?;
        for dep in modinfo(&bytes, "depends")
            .unwrap_or_default()
            .split(',')
            .filter(|d| !d.is_empty())
        {
            visit(&dep.replace('-', "_"), index, builtin, seen, out)?;
        }
        out.push((name.to_string(), bytes));
        Ok(())
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for m in MODULES {
        visit(m, &index, &builtin, &mut seen, &mut out)?;
    }
    Ok(out)
}

fn read_module(path: &Path) -> Res<Vec<u8>> {
    let name = path.to_string_lossy();
    let prog = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return fs::read(path).map_err(|e| io_fail("cannot read", path, e));
    };
    let out = Command::new(prog)
        .arg("-dcq")
        .arg(path)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| fail(format!("cannot run {prog}: {e}")))?;
    if !out.status.success() || !out.stdout.starts_with(b"\x7fELF") {
        return Err(fail(format!("{prog} could not decompress {name}")));
    }
    Ok(out.stdout)
}

/// A `key=value` string of a module's `.modinfo` section.
fn modinfo(ko: &[u8], key: &str) -> Option<String> {
    let pat = format!("\0{key}=");
    let at = ko.windows(pat.len()).position(|w| w == pat.as_bytes())? + pat.len();
    let end = ko[at..].iter().position(|&c| c == 0)? + at;
    Some(String::from_utf8_lossy(&ko[at..end]).into_owned())
}

/// The ELF kernel inside a bzImage (like linux/scripts/extract-vmlinux): try each compressed stream.
fn extract_vmlinux(bz: &[u8]) -> Option<Vec<u8>> {
    let magics: [(&[u8], &str); 3] = [
        (b"\xfd7zXZ\x00", "xz"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"\x1f\x8b\x08", "gzip"),
    ];
    for (magic, prog) in magics {
        let mut from = 0;
        for _ in 0..8 {
            let Some(at) = bz[from..]
                .windows(magic.len())
                .position(|w| w == magic)
                .map(|p| p + from)
            else {
                break;
            };
            if let Some(elf) = pipe_through(prog, &bz[at..])
                && elf.starts_with(b"\x7fELF")
            {
                return Some(elf);
            }
            from = at + 1;
        }
    }
    None
}

/// `prog -dcq` with `input` on stdin; its stdout, whatever its exit status (trailing data after the
/// compressed stream makes decompressors complain).
fn pipe_through(prog: &str, input: &[u8]) -> Option<Vec<u8>> {
    let mut child = Command::new(prog)
        .arg("-dcq")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let mut stdout = child.stdout.take()?;
    let mut out = Vec::new();
    thread::scope(|sc| {
        sc.spawn(move || {
            let _ = stdin.write_all(input);
        });
        let _ = stdout.read_to_end(&mut out);
    });
    let _ = child.wait();
    Some(out)
}

// ---- initramfs ----

/// newc cpio archive writer.
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

/// Uncompressed initramfs: busybox, init (vm/init.sh), guest.sh, the kit's modules.
pub(super) fn build_initrd(kit: &Path, busybox: &[u8]) -> Res<Vec<u8>> {
    let mut c = Cpio {
        buf: Vec::new(),
        ino: 0,
    };
    for d in ["bin", "dev", "proc", "sys", "modules"] {
        c.entry(d, 0o040755, &[], (0, 0));
    }
    c.entry("dev/console", 0o020600, &[], (5, 1));
    c.entry("bin/busybox", 0o100755, busybox, (0, 0));
    c.entry("init", 0o100755, INIT_SH.as_bytes(), (0, 0));
    c.entry("guest.sh", 0o100644, GUEST_SH.as_bytes(), (0, 0));
    let mods = kit.join("modules");
    let order = fs::read_to_string(mods.join("order"))
        .map_err(|e| io_fail("cannot read", &mods.join("order"), e))?;
    c.entry("modules/order", 0o100644, order.as_bytes(), (0, 0));
    for m in order.lines().filter(|l| !l.is_empty()) {
        let p = mods.join(m);
        let b = fs::read(&p).map_err(|e| io_fail("cannot read", &p, e))?;
        c.entry(&format!("modules/{m}"), 0o100644, &b, (0, 0));
    }
    c.entry("TRAILER!!!", 0, &[], (0, 0));
    Ok(c.buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_and_versions() {
        assert!(in_series("6.1.0-56-amd64", "6.1"));
        assert!(!in_series("6.12.117+deb12-amd64", "6.1"));
        assert!(in_series("7.3.4+deb13-amd64", "7"));
        assert!(in_series("6.1.0-56-amd64", "6.1.0-56-amd64"));
        assert!(plain_kernel("5.10.0-46-amd64"));
        assert!(plain_kernel("6.12.117+deb12-amd64"));
        assert!(!plain_kernel("6.1-amd64"));
        assert!(!plain_kernel("6.1.0-0.deb11.52-amd64"));
        assert!(!plain_kernel("6.1.0-56-rt-amd64"));
        let v: Vec<String> = ["6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-0.deb11.52-amd64"]
            .map(String::from)
            .to_vec();
        assert_eq!(newest(&v, "6.1").as_deref(), Some("6.1.0-56-amd64"));
        let v: Vec<String> = [
            "7.2.13+deb14-amd64",
            "7.3.4+deb13-amd64",
            "7.10.1+deb13-amd64",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(newest(&v, "7").as_deref(), Some("7.10.1+deb13-amd64"));
    }

    #[test]
    fn modinfo_depends() {
        let ko = b"\x7fELF....\0license=GPL\0depends=virtio,virtio_ring\0intree=Y\0";
        assert_eq!(
            modinfo(ko, "depends").as_deref(),
            Some("virtio,virtio_ring")
        );
        assert_eq!(modinfo(ko, "vermagic"), None);
    }
}
