# cargo xtask vmtest, guest stage 2: PID 1 on the host's root file system (read-only, tmpfs overlay),
# run by the static busybox that stage 1 (init.sh) left in /run/vm: every exec of a dynamically linked
# program costs ~0.2 s under TCG, so this script uses shell builtins and busybox applets only.
#
# The job directory /run/vmjob (written by xtask, shared read-write) holds:
#   tests   one "NAME<TAB>EXECUTABLE" line per test binary      args   one test argument per line
#   env     KEY=VALUE lines to export (host variables are not passed in; SOCKRAY_ATTACH comes this way)
#   path    the attach path of this run (default, raw_tp, ...)  cwd    where to run the tests
#   limit   seconds allowed per test binary
# and receives NAME.log (the test binary's output), NAME.rc ("EXIT-STATUS SECONDS"), NAME.reruns and
# NAME.rerun.log (see rerun_skipped), kernel (uname -r),
# skipped (why the kernel has no such path), dmesg, and done (last).
BB=/run/vm/busybox
J=/run/vmjob
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb LANG=C.UTF-8
# The tests must fail, not skip, when BPF is unusable here.
export CI=1
# Before Linux 5.11, BPF maps and programs are charged to RLIMIT_MEMLOCK (64 KiB by default).
ulimit -l unlimited

while IFS= read -r kv; do
    [ -n "$kv" ] && export "$kv"
done <$J/env
$BB uname -r >$J/kernel
read -r path <$J/path
read -r limit <$J/limit
read -r cwd <$J/cwd

# The rule of xtask/src/rerun.rs: when every failed test of a binary failed only on the harness's
# skipped-runs check, each is run again by its exact name (up to twice) and passes if a rerun passes.
# Writes NAME.reruns ("TEST pass|fail" lines) and NAME.rerun.log; true when every rerun passed.
rerun_skipped() {
    verdicts=$($BB awk '
        /^---- .* stdout ----$/ { n = $0; sub(/^---- /, "", n); sub(/ stdout ----$/, "", n); inb = 1; next }
        /^failures:$/ { inb = 0 }
        inb && index($0, "the kernel skipped program runs; stderr:") { skip[n] = 1 }
        /^test .* \.\.\. FAILED$/ { f = $0; sub(/^test /, "", f); sub(/ \.\.\. FAILED$/, "", f); failed[f] = 1 }
        END { for (f in failed) print ((f in skip) ? "skip" : "fail"), f }' "$J/$1.log")
    [ -n "$verdicts" ] || return 1
    case "$verdicts" in *"fail "*) return 1 ;; esac
    all=0
    for t in $(echo "$verdicts" | $BB sed 's/^skip //'); do
        v=fail
        for n in 1 2; do
            echo "vmtest: $1: $t failed on skipped runs; rerun $n" >>"$J/$1.rerun.log"
            if $BB timeout "$limit" "$2" --exact "$t" --test-threads=1 >>"$J/$1.rerun.log" 2>&1 </dev/null; then
                v=pass
                break
            fi
        done
        echo "$t $v" >>"$J/$1.reruns"
        [ "$v" = pass ] || all=1
    done
    return $all
}

skip=
case "$path" in
kprobe) [ -d /sys/bus/event_source/devices/kprobe ] || skip="this kernel has no kprobes" ;;
fentry | tp_btf) [ -e /sys/kernel/btf/vmlinux ] || skip="this kernel has no BTF" ;;
esac

if [ -n "$skip" ]; then
    echo "vmtest: skipped: $skip"
    echo "$skip" >$J/skipped
else
    set --
    while IFS= read -r a; do
        set -- "$@" "$a"
    done <$J/args
    cd "$cwd" || cd /
    tab=$(printf '\t')
    while IFS="$tab" read -r name exe; do
        echo "vmtest: $name: running"
        t0=$($BB date +%s)
        $BB timeout "$limit" "$exe" --test-threads=1 "$@" >"$J/$name.log" 2>&1 </dev/null
        rc=$?
        [ "$rc" != 0 ] && rerun_skipped "$name" "$exe" && rc=0
        t1=$($BB date +%s)
        echo "$rc $((t1 - t0))" >"$J/$name.rc"
        echo "vmtest: $name: exit $rc after $((t1 - t0)) s"
    done <$J/tests
fi
$BB dmesg >$J/dmesg 2>&1
echo done >$J/done
$BB sync
$BB poweroff -f
