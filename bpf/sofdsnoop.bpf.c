// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* sofdsnoop: every file descriptor passed over a Unix socket (SCM_RIGHTS), sent and received.
 *
 * BCC hooks __scm_send() and scm_detach_fds() with kprobes. Here: the syscall tracepoints of sendmsg,
 * recvmsg, sendmmsg and recvmmsg. The entry reads the caller's msghdr from user memory and leaves at
 * once when it has no room for control messages (msg_controllen < sizeof(struct cmsghdr): the common
 * case, one user read), then when the fd is not a Unix socket; else it remembers the msghdr per thread.
 * The exit (a successful call only: a failed send passed nothing) walks the control messages in user
 * memory (bounded), and for each fd of an SCM_RIGHTS message sends one record, with what the fd refers
 * to read from the task's fd table: its file system's magic, inode number, and its path's components
 * from the dentry up to the root (crossing mounts), as the kernel's d_path() would build it. On receive
 * the kernel has rewritten msg_controllen and the cmsgs with the new fds by then. */
#include "common.bpf.h"
#include "sofdsnoop.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct sofdsnoop_event _sofdsnoop_event = {};

#define AF_UNIX 1
#define SOL_SOCKET 1
#define SCM_RIGHTS 1

/* bounds of the walk: control messages per msghdr, fds per control message, messages per
 * sendmmsg/recvmmsg call; what lies beyond is counted in `unseen` */
#define SOFD_MAX_CMSGS 8
#define SOFD_MAX_FDS 64
#define SOFD_MAX_MMSG 8

#define EEXIST 17

/* -t: only this thread; 0: any */
const volatile __u32 filter_tid = 0;
/* -n: only processes whose comm contains this (filter_comm_len bytes); 0: any */
const volatile __u32 filter_comm_len = 0;
const volatile char filter_comm[16] = {};

/* what the bounded walk left out: [0] fds beyond SOFD_MAX_FDS in a control message, [1] control
 * messages beyond SOFD_MAX_CMSGS, [2] messages beyond SOFD_MAX_MMSG in one sendmmsg/recvmmsg */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} unseen SEC(".maps");

static __always_inline void count_unseen(__u32 what, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&unseen, &what);
	if (v)
		*v += n;
}

/* a call in progress that may pass fds: its msghdr (or mmsghdr array) */
struct fd_call {
	__u64 msg;
	__s32 sock_fd;
	__u32 vlen; /* 0: sendmsg/recvmsg (one msghdr); else the mmsghdr array's length */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct fd_call);
} calls SEC(".maps");

/* entries in `calls`: while there are none, which is nearly always, an exit returns after one load
 * instead of a map lookup (a thread's own entry, added before its exit, is seen by that exit) */
__u64 calls_in_flight = 0;

static __always_inline bool comm_ok(void)
{
	char c[16];
	__u32 n = filter_comm_len;

	if (!n)
		return true;
	bpf_get_current_comm(c, sizeof(c));
	for (int s = 0; s < 16; s++) {
		bool m = true;

		if (s + n > 15)
			return false;
		for (int j = 0; j < 15; j++) {
			if (j >= n)
				break;
			if (c[(s + j) & 15] != filter_comm[j]) {
				m = false;
				break;
			}
		}
		if (m)
			return true;
	}
	return false;
}

static __always_inline struct file *file_of_fd(long fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct file **fds = BPF_CORE_READ(task, files, fdt, fd);
	unsigned int max = BPF_CORE_READ(task, files, fdt, max_fds);
	struct file *file = NULL;

	if (fd < 0 || fd >= (long)max)
		return NULL;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	return file;
}

/* the Unix socket's file behind fd, or NULL */
static __always_inline struct file *unix_sock_file(long fd)
{
	struct file *file = file_of_fd(fd);
	struct socket *sock;
	struct sock *sk;

	if (!file)
		return NULL;
	sock = BPF_CORE_READ(file, private_data);
	if (!sock || BPF_CORE_READ(sock, file) != file)
		return NULL;
	sk = BPF_CORE_READ(sock, sk);
	if (!sk || SK_R(sk, __sk_common.skc_family) != AF_UNIX)
		return NULL;
	return file;
}

static __always_inline bool ids_ok(__u64 id)
{
	return tgid_ok(id >> 32) && (!filter_tid || filter_tid == (__u32)id);
}

static __always_inline void on_enter(long fd, __u64 umsg, __u32 vlen)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct fd_call c = {.msg = umsg, .sock_fd = fd, .vlen = vlen};
	long err;

	if (!ids_ok(id))
		return;
	if (!vlen) {
		/* the common case ends here: no room for control messages, nothing can be passed */
		__u64 ctl[2] = {};

		if (bpf_probe_read_user(ctl, sizeof(ctl),
					(void *)(umsg + offsetof(struct user_msghdr, msg_control))))
			return;
		if (!ctl[0] || ctl[1] < sizeof(struct cmsghdr))
			return;
	}
	if (!unix_sock_file(fd) || !comm_ok())
		return;
	err = bpf_map_update_elem(&calls, &id, &c, BPF_NOEXIST);
	if (!err)
		__sync_fetch_and_add(&calls_in_flight, 1);
	else if (err == -EEXIST)
		/* left by a call whose exit was not seen (it entered while the tool was attaching) */
		bpf_map_update_elem(&calls, &id, &c, BPF_EXIST);
	else
		count_lost_as(LOST_CAPACITY);
}

/* Reads what fd refers to into e: the file's magic, inode, and its path (dentry names up to the root). */
static __always_inline void describe_fd(struct sofdsnoop_event *e, long fd)
{
	struct file *file = file_of_fd(fd);
	struct inode *inode;
	struct dentry *d, *parent;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	__u32 n = 0;

	if (!file)
		return;
	inode = BPF_CORE_READ(file, f_inode);
	e->ino = BPF_CORE_READ(inode, i_ino);
	e->mode = BPF_CORE_READ(inode, i_mode);
	e->magic = BPF_CORE_READ(inode, i_sb, s_magic);
	d = BPF_CORE_READ(file, f_path.dentry);
	if (e->magic == 0x534F434B || e->magic == 0x50495045) /* sockfs, pipefs: named by inode */
		return;
	vfsmnt = BPF_CORE_READ(file, f_path.mnt);
	mnt = (void *)vfsmnt - bpf_core_field_offset(struct mount, mnt);
	parent = BPF_CORE_READ(d, d_parent);
	if (!BPF_CORE_READ(d, d_hash.pprev) && parent != d)
		e->flags |= SOFD_DELETED;
	/* One slot per step, so that the verifier follows one counter: a mount crossed leaves its slot
	 * empty (user space skips empty components). */
	for (n = 0; n < SOFD_PATH_DEPTH; n++) {
		const unsigned char *name;
		char *slot = (char *)&e->comps[n];

		if (d == BPF_CORE_READ(vfsmnt, mnt_root)) {
			struct mount *up = BPF_CORE_READ(mnt, mnt_parent);

			if (up == mnt) {
				e->flags |= SOFD_PATH_FULL;
				break;
			}
			d = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = up;
			vfsmnt = (void *)mnt + bpf_core_field_offset(struct mount, mnt);
			slot[0] = 0;
			continue;
		}
		parent = BPF_CORE_READ(d, d_parent);
		if (parent == d) {
			e->flags |= SOFD_PATH_FULL;
			break;
		}
		name = BPF_CORE_READ(d, d_name.name);
		bpf_probe_read_kernel_str(slot, SOFD_NAME_LEN, name);
		d = parent;
	}
	e->depth = n;
}

/* One record for one passed fd. A global function: verified once, not at every call site. */
__noinline int sofd_emit(__u32 action_index, __s32 sock_fd, __s32 fd, __u32 count, __u64 sock_ino)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct sofdsnoop_event *e = event_reserve(sizeof(*e));

	if (!e)
		return 0;
	e->ts_ns = bpf_ktime_get_ns();
	e->sock_ino = sock_ino;
	e->ino = 0;
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->sock_fd = sock_fd;
	e->fd = fd;
	e->magic = 0;
	e->mode = 0;
	e->action = action_index >> 16;
	e->flags = 0;
	e->index = action_index & 0xffff;
	e->count = count;
	e->depth = 0;
	e->pad = 0;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	describe_fd(e, fd);
	event_submit(e);
	return 0;
}

/* The n fds of one SCM_RIGHTS control message, at data in user memory: one record each. Global, as
 * sofd_emit: the verifier walks this loop once, not once for each control message. */
__noinline int sofd_walk_fds(__u64 data, __u32 n, __u32 action, __s32 sock_fd, __u64 sock_ino)
{
	int fds[SOFD_MAX_FDS];
	/* a 64-bit copy the compiler cannot trace back to n, bounded where the verifier sees it */
	__u64 k = n;

	asm volatile("" : "+r"(k));
	if (k > SOFD_MAX_FDS) {
		count_unseen(0, k - SOFD_MAX_FDS);
		k = SOFD_MAX_FDS;
	}
	if (!k || bpf_probe_read_user(fds, k * sizeof(int), (void *)data))
		return 0;
	for (int j = 0; j < SOFD_MAX_FDS; j++) {
		if (j >= k)
			break;
		sofd_emit(action << 16 | j, sock_fd, fds[j], n, sock_ino);
	}
	return 0;
}

/* Every SCM_RIGHTS fd in the control messages of the user msghdr at umsg. Global, as sofd_emit. */
__noinline int sofd_walk_msg(__u64 umsg, __u32 action, __s32 sock_fd, __u64 sock_ino)
{
	__u64 ctl[2] = {};
	__u64 p, end;

	if (bpf_probe_read_user(ctl, sizeof(ctl), (void *)(umsg + offsetof(struct user_msghdr, msg_control))))
		return 0;
	p = ctl[0];
	if (!p || ctl[1] < sizeof(struct cmsghdr) || ctl[1] > (1 << 20))
		return 0;
	end = p + ctl[1];
	for (int i = 0; i < SOFD_MAX_CMSGS; i++) {
		struct cmsghdr h;

		if (p + sizeof(h) > end)
			return 0;
		if (bpf_probe_read_user(&h, sizeof(h), (void *)p))
			return 0;
		if (h.cmsg_len < sizeof(h) || h.cmsg_len > end - p)
			return 0;
		if (h.cmsg_level == SOL_SOCKET && h.cmsg_type == SCM_RIGHTS)
			sofd_walk_fds(p + sizeof(h), (h.cmsg_len - sizeof(h)) / sizeof(int), action, sock_fd,
				      sock_ino);
		/* CMSG_NXTHDR: the next header at an 8-byte boundary */
		p += (h.cmsg_len + 7) & ~7ULL;
	}
	if (p + sizeof(struct cmsghdr) <= end)
		count_unseen(1, 1);
	return 0;
}

static __always_inline void on_exit(long ret, __u32 action)
{
	struct fd_call *cp, c;
	struct file *sf;
	__u64 sock_ino, id;

	if (!calls_in_flight)
		return;
	id = bpf_get_current_pid_tgid();
	if (!ids_ok(id))
		return;
	cp = bpf_map_lookup_elem(&calls, &id);
	if (!cp)
		return;
	c = *cp;
	if (!bpf_map_delete_elem(&calls, &id))
		__sync_fetch_and_add(&calls_in_flight, -1);
	if (ret < 0)
		return;
	sf = file_of_fd(c.sock_fd);
	sock_ino = sf ? BPF_CORE_READ(sf, f_inode, i_ino) : 0;
	if (!c.vlen) {
		sofd_walk_msg(c.msg, action, c.sock_fd, sock_ino);
		return;
	}
	/* sendmmsg/recvmmsg: ret messages were sent / received */
	for (int i = 0; i < SOFD_MAX_MMSG; i++) {
		if (i >= ret)
			return;
		sofd_walk_msg(c.msg + i * sizeof(struct mmsghdr), action, c.sock_fd, sock_ino);
	}
	if (ret > SOFD_MAX_MMSG)
		count_unseen(2, ret - SOFD_MAX_MMSG);
}

SEC("tracepoint/syscalls/sys_enter_sendmsg")
int sofd_enter_sendmsg(struct trace_event_raw_sys_enter *ctx)
{
	on_enter((int)ctx->args[0], ctx->args[1], 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_sendmsg")
int sofd_exit_sendmsg(struct trace_event_raw_sys_exit *ctx)
{
	on_exit(ctx->ret, SOFD_SEND);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_recvmsg")
int sofd_enter_recvmsg(struct trace_event_raw_sys_enter *ctx)
{
	on_enter((int)ctx->args[0], ctx->args[1], 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_recvmsg")
int sofd_exit_recvmsg(struct trace_event_raw_sys_exit *ctx)
{
	on_exit(ctx->ret, SOFD_RECV);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_sendmmsg")
int sofd_enter_sendmmsg(struct trace_event_raw_sys_enter *ctx)
{
	__u32 vlen = ctx->args[2];

	if (vlen)
		on_enter((int)ctx->args[0], ctx->args[1], vlen);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_sendmmsg")
int sofd_exit_sendmmsg(struct trace_event_raw_sys_exit *ctx)
{
	on_exit(ctx->ret, SOFD_SEND);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_recvmmsg")
int sofd_enter_recvmmsg(struct trace_event_raw_sys_enter *ctx)
{
	__u32 vlen = ctx->args[2];

	if (vlen)
		on_enter((int)ctx->args[0], ctx->args[1], vlen);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_recvmmsg")
int sofd_exit_recvmmsg(struct trace_event_raw_sys_exit *ctx)
{
	on_exit(ctx->ret, SOFD_RECV);
	return 0;
}
