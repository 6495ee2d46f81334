// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* sockseed: fills the socket-owner maps of bpf/sockowner.bpf.h with every TCP socket that a process holds
 * when a tool starts, by walking every task's open files (iter/task_file). A separate BPF object: user
 * space loads it on a second thread while the tool's own object loads, with the two maps shared by fd,
 * and runs it once the tool's hooks are attached (src/runtime.rs). Its CO-RE relocations (task_struct,
 * socket, tcp_sock; file before Linux 5.11) are the costliest part of its load: each type relocated against
 * costs libbpf a walk over all of vmlinux BTF's types. */
#define SOCKOWNER_NO_HOOKS
#include "common.bpf.h"
#include "sockowner.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* puts the slot table's header type into BTF, so the skeleton carries it to Rust (src/runtime.rs reads
 * its counters at exit); read-only data the object has anyway: no map of its own */
const volatile struct sock_slots_hdr sockray_slots_hdr_type = {};

/* ---- seeding: every TCP socket held by a process when the tool starts ---- */

/* The task_file iterator's context (Linux 5.8+; its layout is the iterator's ABI), declared without
 * CO-RE relocation: one type fewer for libbpf to look up in vmlinux BTF at start-up. */
struct sockray_iter_task_file {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	__u32 fd;
	struct file *file;
};

/* Records the owner of a socket that `task` holds, if it is TCP. */
static __always_inline int seed_sock(struct task_struct *task, struct socket *sock, bool with_cgroup)
{
	struct sock_rec r = {};
	struct sock *sk;
	__u16 fam;
	__u64 key;

	sk = BPF_CORE_READ(sock, sk);
	if (!sk || SK_R(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	fam = SK_R(sk, __sk_common.skc_family);
	if (fam != AF_INET && fam != AF_INET6)
		return 0;
	/* the owner only: when the connection began is not known (born_ns 0) */
	owner_from_task(&r.owner, task, sk, with_cgroup);
	r.flags = SOCK_SEEDED;
	key = sock_key_d(sk, false);
	sock_rec_create_new(key, &r);
	if (SK_R(sk, __sk_common.skc_state) == TCP_LISTEN)
		listener_record(sk, key, &r.owner, false);
	return 0;
}

/* `from_file`: the socket through bpf_sock_from_file() (Linux 5.11+), which checks that the file is a
 * socket: no CO-RE relocation against struct file, one type fewer for libbpf to look up in vmlinux BTF
 * (~1-2 ms of start-up). Else through the file's private_data, which for a socket file is its struct
 * socket, whose ->file points back. */
static __always_inline int seed_one(struct sockray_iter_task_file *ctx, bool with_cgroup, bool from_file)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct socket *sock;

	if (!task || !file)
		return 0;
	/* threads share the fd table: visit each process once, through its leader */
	if (task->pid != task->tgid)
		return 0;
	if (from_file) {
		sock = bpf_sock_from_file(file);
	} else {
		sock = BPF_CORE_READ(file, private_data);
		if (sock && BPF_CORE_READ(sock, file) != file)
			return 0;
	}
	if (!sock)
		return 0;
	return seed_sock(task, sock, with_cgroup);
}

/* Four variants; user space loads one (src/runtime.rs): the task's cgroup costs three more CO-RE
 * relocations at start-up (css_set, cgroup, kernfs_node; ~1 ms each) and is needed only for --cgroup and
 * --cgroupmap (the `_cg` ones, which read the mount namespace instead for --mntnsmap: filter_scope);
 * the `_file` ones need bpf_sock_from_file() (Linux 5.11+), the others are the fallback before. */
SEC("iter/task_file")
int sockseed_plain_file(struct sockray_iter_task_file *ctx)
{
	return seed_one(ctx, false, true);
}

SEC("iter/task_file")
int sockseed_cg_file(struct sockray_iter_task_file *ctx)
{
	return seed_one(ctx, true, true);
}

SEC("iter/task_file")
int sockseed_plain(struct sockray_iter_task_file *ctx)
{
	return seed_one(ctx, false, false);
}

SEC("iter/task_file")
int sockseed_cg(struct sockray_iter_task_file *ctx)
{
	return seed_one(ctx, true, false);
}
