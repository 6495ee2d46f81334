# cargo xtask vmtest, guest stage 2: PID 1 on the host's root file system (read-only, tmpfs overlay),
# run by the static busybox that stage 1 (init.sh) left in /run/vm: every exec of a dynamically linked
# program costs ~0.2 s under TCG, so this script uses shell builtins and busybox applets only.
#
# The job directory /run/vmjob (written by xtask, shared read-write) holds:
#   tests   one "NAME<TAB>EXECUTABLE" line per test binary      args   one test argument per line
#   env     KEY=VALUE lines to export (host variables are not passed in; SOCKRAY_ATTACH comes this way)
#   path    the attach path of this run (default, raw_tp, ...)  cwd    where to run the tests
#   limit   seconds allowed per test binary
# and receives NAME.log (the test binary's output), NAME.rc ("EXIT-STATUS SECONDS"), kernel (uname -r),
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
        t1=$($BB date +%s)
        echo "$rc $((t1 - t0))" >"$J/$name.rc"
        echo "vmtest: $name: exit $rc after $((t1 - t0)) s"
    done <$J/tests
fi
$BB dmesg >$J/dmesg 2>&1
echo done >$J/done
$BB sync
$BB poweroff -f
