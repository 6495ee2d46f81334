#!/bin/busybox sh
# cargo xtask vmtest, guest stage 1: PID 1 inside the initramfs that xtask builds per kernel (a static
# busybox, this script, guest.sh and the kernel's own virtio/9p/virtiofs/overlay modules, which Debian
# builds as =m).
#
# Mounts the host's root file system (shared by QEMU read-only over virtiofs, or 9p when the host has no
# virtiofsd) with a tmpfs overlay on top, so that the guest can write anywhere and nothing reaches the host;
# mounts the job directory read-write at /run/vmjob and the kernel file systems the tools and tests use
# (proc, sys, tracefs, debugfs, bpffs, cgroup2; a fresh /run, but not /tmp: a checkout may live there);
# brings loopback up; then switch_roots into guest.sh.
/bin/busybox --install -s /bin
export PATH=/bin

die() {
    echo "vmtest-init: $*"
    poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do
    insmod "/modules/$m" || echo "vmtest-init: insmod $m failed"
done

rootfs=9p
for a in $(cat /proc/cmdline); do
    case "$a" in
    vm.rootfs=*) rootfs=${a#vm.rootfs=} ;;
    esac
done
p9=trans=virtio,version=9p2000.L,msize=1048576
mkdir -p /lower /rw /newroot
if [ "$rootfs" = virtiofs ]; then
    mount -t virtiofs -o ro root /lower || die "cannot mount the host root file system (virtiofs)"
else
    mount -t 9p -o "$p9,cache=loose,ro" root /lower || die "cannot mount the host root file system (9p)"
fi
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
R=/newroot
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay $R ||
    die "cannot mount the overlay on the host root file system"

mount --move /dev $R/dev
[ -e $R/dev/fd ] || ln -s /proc/self/fd $R/dev/fd
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs -o nosuid,nodev tmpfs $R/dev/shm
mount -t proc -o nosuid,nodev,noexec proc $R/proc
mount -t sysfs -o nosuid,nodev,noexec sys $R/sys
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs $R/run
mount -t tracefs tracefs $R/sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
mount -t bpf bpf $R/sys/fs/bpf
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup
mkdir -p $R/run/vmjob $R/run/vm
mount -t 9p -o "$p9" vmjob $R/run/vmjob || die "cannot mount the job directory (9p)"
cp /bin/busybox /guest.sh $R/run/vm/
ip link set lo up
hostname vmtest
umount /proc /sys
exec switch_root $R /run/vm/busybox sh /run/vm/guest.sh
