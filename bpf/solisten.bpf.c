// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* solisten: one line per listen() on a TCP socket, with the port and address it listens on.
 *
 * BCC hooks inet_listen() with a kprobe. Here: the listen() syscall tracepoints. The entry stashes the
 * fd and backlog per thread; the exit resolves the fd to its socket and reads the address after the
 * kernel has acted, so a listen() on an unbound socket shows the port the kernel picked, and a failed
 * listen() carries its error. Only TCP sockets (IPv4, IPv6) are reported, as inet_listen() sees only
 * those: listen() on a UDP socket (EOPNOTSUPP) or on a non-socket fd is not shown. */
#include "common.bpf.h"
#include "solisten.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct solisten_event _solisten_event = {};

/* -n/--netns: only sockets of this network namespace (inode number); 0: any */
const volatile __u32 filter_netns = 0;

#define EBADF 9
#define ENOTSOCK 88

struct listen_args {
	__s64 fd;
	__s32 backlog;
	__s32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct listen_args);
} listen_calls SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_listen")
int solisten_enter_listen(struct trace_event_raw_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct listen_args a = {
		.fd = (int)ctx->args[0],
		.backlog = (int)ctx->args[1],
	};

	if (!tgid_ok(id >> 32))
		return 0;
	map_update_counted(&listen_calls, &id, &a, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_listen")
int solisten_exit_listen(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct solisten_event *e;
	struct listen_args *a;
	struct sk_tuple t = {};
	long ret = ctx->ret;
	struct sock *sk;
	__s64 fd;
	__s32 backlog;
	__u32 uid, netns;

	a = bpf_map_lookup_elem(&listen_calls, &id);
	if (!a)
		return 0;
	fd = a->fd;
	backlog = a->backlog;
	bpf_map_delete_elem(&listen_calls, &id);
	if (ret == -EBADF || ret == -ENOTSOCK)
		return 0; /* not a socket: never reached inet_listen() */

	sk = sock_of_fd(fd);
	if (!sk || SK_R(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	read_sk_tuple(sk, &t);
	if (!family_ok(t.family))
		return 0;
	netns = sk_netns(sk);
	if (filter_netns && netns != filter_netns)
		return 0;
	uid = (__u32)bpf_get_current_uid_gid();
	if (!uid_ok(uid) || !scope_ok(scope_id_current()))
		return 0;

	e = event_reserve(sizeof(*e));
	if (!e)
		return 0;
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = id >> 32;
	e->uid = uid;
	e->netns = netns;
	e->backlog = backlog;
	e->ret = (__s32)ret;
	e->family = t.family;
	e->lport = t.lport;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	__builtin_memcpy(e->laddr, t.laddr, 16);
	event_submit(e);
	return 0;
}
