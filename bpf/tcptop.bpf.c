// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tcptop (and tcpsubnet): bytes sent and received per flow, counted in the kernel; user space reads the
 * counts once per interval. Nothing per send or receive reaches user space.
 *
 * Hooks, alternatives for the attach layer (src/attach.rs):
 *  - sock:sock_send_length / sock:sock_recv_length (Linux 6.3+; tp_btf, else raw_tp): called from
 *    sock_sendmsg()/sock_recvmsg() with what the protocol's sendmsg/recvmsg returned, in the task that
 *    made the call. Every way of sending through the socket layer passes there: write(), send*(),
 *    writev(), sendfile() and splice() to a socket (their pages go through sock_sendmsg since 6.5), and
 *    kernel users of kernel_sendmsg(). Receiving through splice() from a socket (tcp_splice_read) does
 *    not: it never calls recvmsg.
 *  - older kernels: fexit on tcp_sendmsg and tcp_sendpage (their return values: bytes taken; sendfile
 *    and splice went through the latter before 6.5) and on tcp_recvmsg (bytes read); BCC's kprobes
 *    see no sendpage, and count reads on tcp_cleanup_rbuf (see below).
 *
 * Owner: the task that makes the call. Sends and receives run in the calling process's own context
 * (unlike state changes, which run in softirqs), so the current task is the one moving the bytes; no
 * socket-owner map is needed (a socket shared by two processes shows as two flows, one per process,
 * which is what BCC shows too).
 *
 * Counting, and reading without losing counts: the programs add into a hash map reached through a
 * one-slot array of maps (`flows`). User space keeps two such hash maps and, at each interval, points
 * the slot at the empty one; the kernel's update of a map-in-map slot returns only after an RCU grace
 * period (synchronize_rcu(), so that user space knows no program still uses the old inner map: every
 * BPF program of ours runs inside an RCU read-side section), after which nothing can write into the
 * retired map any more; it is then read and emptied at leisure (batch lookup-and-delete) and becomes
 * the spare for the next interval. A per-key lookup-then-delete on one live map would lose what a
 * program adds between the two; reading cumulative counters and subtracting would never free the
 * entries of flows that ended. A flow that finds the map full is counted as lost (lost_capacity). */
#include "common.bpf.h"
#include "flows.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";


#define MSG_PEEK 2

/* direct: a typed sk (tp_btf, fentry/fexit): plain loads; else helper reads (raw_tp) */
static __always_inline void count_bytes(const struct sock *sk, int bytes, bool rx, bool direct)
{
	struct tcptop_key key;
	struct tcptop_val *v;
	void *inner;
	__u64 pid_tgid;
	__u32 zero = 0;
	__u16 family;

	if (bytes <= 0 || !sk)
		return;
	if (SK_FIELD(direct, sk, sk_protocol) != IPPROTO_TCP)
		return;
	family = SK_FIELD(direct, sk, __sk_common.skc_family);
	if (!family_ok(family))
		return;
	pid_tgid = bpf_get_current_pid_tgid();
	if (!tgid_ok(pid_tgid >> 32) || (pid_tgid >> 32) == self_tgid)
		return;
	if (filter_scope && !scope_ok(scope_id_current()))
		return;

	__builtin_memset(&key, 0, sizeof(key));
	key.pid = pid_tgid >> 32;
	key.family = family;
	key.lport = SK_FIELD(direct, sk, __sk_common.skc_num);
	key.rport = bpf_ntohs(SK_FIELD(direct, sk, __sk_common.skc_dport));
	if (direct) {
		if (family == AF_INET6) {
			__builtin_memcpy(key.laddr, SK_D(sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8), 16);
			__builtin_memcpy(key.raddr, SK_D(sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8), 16);
		} else {
			*(__u32 *)key.laddr = SK_D(sk, __sk_common.skc_rcv_saddr);
			*(__u32 *)key.raddr = SK_D(sk, __sk_common.skc_daddr);
		}
	} else if (family == AF_INET6) {
		SK_R_INTO(&key.laddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		SK_R_INTO(&key.raddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	} else {
		SK_R_INTO((__u32 *)key.laddr, sk, __sk_common.skc_rcv_saddr);
		SK_R_INTO((__u32 *)key.raddr, sk, __sk_common.skc_daddr);
	}
	if (!ports_ok(key.lport, key.rport))
		return;

	inner = bpf_map_lookup_elem(&flows, &zero);
	if (!inner)
		return;
	v = bpf_map_lookup_elem(inner, &key);
	if (!v) {
		struct tcptop_val fresh = {};

		fresh.uid = (__u32)bpf_get_current_uid_gid();
		bpf_get_current_comm(&fresh.comm, sizeof(fresh.comm));
		/* -EEXIST: another CPU inserted it first; else (-E2BIG) the map is full */
		if (bpf_map_update_elem(inner, &key, &fresh, BPF_NOEXIST) && !bpf_map_lookup_elem(inner, &key)) {
			count_lost_as(LOST_CAPACITY);
			return;
		}
		v = bpf_map_lookup_elem(inner, &key);
		if (!v)
			return;
	}
	if (rx) {
		__sync_fetch_and_add(&v->rx_bytes, bytes);
		__sync_fetch_and_add(&v->rx_calls, 1);
	} else {
		__sync_fetch_and_add(&v->tx_bytes, bytes);
		__sync_fetch_and_add(&v->tx_calls, 1);
	}
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(tcptop_send__btf, struct sock *sk, int ret, int flags)
{
	count_bytes(sk, ret, false, true);
	return 0;
}

SEC("raw_tp/sock_send_length")
int BPF_PROG(tcptop_send__raw, struct sock *sk, int ret, int flags)
{
	count_bytes(sk, ret, false, false);
	return 0;
}

SEC("fexit/tcp_sendmsg")
int BPF_PROG(tcptop_send__fexit, struct sock *sk, struct msghdr *msg, size_t size, int ret)
{
	count_bytes(sk, ret, false, true);
	return 0;
}

/* Before 6.5, sendfile() and splice() to a TCP socket (and the kernel's kernel_sendpage()) went through
 * ->sendpage, tcp_sendpage(), not tcp_sendmsg(): taken with it (the same group and kind, so both or
 * neither). */
SEC("fexit/tcp_sendpage")
int BPF_PROG(tcptop_send__fexit_page, struct sock *sk, struct page *page, int offset, size_t size, int flags,
	     int ret)
{
	count_bytes(sk, ret, false, true);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(tcptop_recv__btf, struct sock *sk, int ret, int flags)
{
	/* a peek leaves the bytes queued: they are counted when read */
	if (!(flags & MSG_PEEK))
		count_bytes(sk, ret, true, true);
	return 0;
}

SEC("raw_tp/sock_recv_length")
int BPF_PROG(tcptop_recv__raw, struct sock *sk, int ret, int flags)
{
	if (!(flags & MSG_PEEK))
		count_bytes(sk, ret, true, false);
	return 0;
}

/* tcp_recvmsg's return value: bytes read. Its parameters changed in 5.19 (nonblock went): user space
 * reads their number from the kernel's BTF (5 now, 6 before), the return value follows them; the
 * verifier sees the constant and walks only the branch that fits. (BCC's tcp_cleanup_rbuf runs several
 * times in a recvmsg that waits for more data, each with the total so far: it counts bytes twice.) */
const volatile __u32 recvmsg_nargs = 0;

SEC("fexit/tcp_recvmsg")
int tcptop_recv__fexit(unsigned long long *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	int ret, flags;

	/* barrier_var: each branch keeps its own constant offsets. Without it clang loads through one
	 * computed index (ctx + 8 * (3 or 4)), which 5.10's verifier refuses ("dereference of modified ctx
	 * ptr"), as it does not drop the branch the constant rules out before looking at the loads. */
	if (recvmsg_nargs == 6) {
		flags = (int)ctx[4];
		ret = (int)ctx[6];
		barrier_var(flags);
		barrier_var(ret);
	} else if (recvmsg_nargs == 5) {
		flags = (int)ctx[3];
		ret = (int)ctx[5];
		barrier_var(flags);
		barrier_var(ret);
	} else {
		return 0;
	}
	if (!(flags & MSG_PEEK))
		count_bytes(sk, ret, true, true);
	return 0;
}
