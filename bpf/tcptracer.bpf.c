// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tcptracer: one line per connect (C), accept (A) and close (X) of an established TCP connection.
 *
 * BCC hooks tcp_v4/v6_connect, tcp_set_state and tcp_close with kprobes and inet_csk_accept with a
 * kretprobe. Here:
 *   C  sock:inet_sock_set_state SYN_SENT -> ESTABLISHED (an active open that succeeded). It runs in
 *      softirq context (on loopback: in whichever task sent the SYN-ACK), so the process is the owner the
 *      socket-owner map recorded at CLOSE -> SYN_SENT, inside the connecting task's connect().
 *   A  syscalls:sys_exit_accept4 / sys_exit_accept: the returned fd resolved to its socket, in the
 *      accepting task (which also becomes the socket's recorded owner).
 *   X  sock:inet_sock_set_state to CLOSE from a state of an established connection (ESTABLISHED,
 *      FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK, CLOSING): not from SYN_SENT or SYN_RECV (a connection that was
 *      never established, as BCC) nor LISTEN. The owner comes from the socket-owner map: the final
 *      transition usually runs in softirq context, on loopback in the peer's task.
 * SADDR/SPORT are always the local end, DADDR/DPORT the remote end. */
#include "common.bpf.h"
#include "sockowner.bpf.h"
#include "tcptracer.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct tcptracer_event _tcptracer_event = {};

/* -N/--netns: only sockets of this network namespace (inode number); 0: any */
const volatile __u32 filter_netns = 0;

/* direct: true in the tp_btf program (plain loads from sk, see SK_FIELD), false elsewhere */
static __always_inline void emit(const struct sock *sk, __u32 kind, const struct sock_owner *o, bool direct)
{
	struct tcptracer_event *e;
	struct sk_tuple t = {};
	__u32 netns;

	read_sk_tuple_d(sk, &t, direct);
	if (!family_ok(t.family) || !t.lport || !t.rport)
		return;
	netns = sk_netns_d(sk, direct);
	if (filter_netns && netns != filter_netns)
		return;
	if (!owner_ok(o))
		return;

	e = event_reserve(sizeof(*e));
	if (!e)
		return;
	e->ts_ns = bpf_ktime_get_ns();
	e->owner = *o;
	e->kind = kind;
	e->netns = netns;
	e->family = t.family;
	e->sport = t.lport;
	e->dport = t.rport;
	e->pad = 0;
	__builtin_memcpy(e->saddr, t.laddr, 16);
	__builtin_memcpy(e->daddr, t.raddr, 16);
	event_submit(e);
}

/* States of a connection that was established; a CLOSE from any of them is BCC's "close". */
static __always_inline bool was_established(int state)
{
	switch (state) {
	case TCP_ESTABLISHED:
	case TCP_FIN_WAIT1:
	case TCP_FIN_WAIT2:
	case TCP_CLOSE_WAIT:
	case TCP_LAST_ACK:
	case TCP_CLOSING:
	case TCP_TIME_WAIT:
		return true;
	}
	return false;
}

static __always_inline int handle_set_state(const struct sock *sk, int oldstate, int newstate, bool direct)
{
	struct sock_owner o;
	__u64 key;

	if (SK_FIELD(direct, sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	key = sock_key_d(sk, direct);
	owner_on_state_d(sk, key, oldstate, newstate, direct, false);

	if (newstate == TCP_ESTABLISHED && oldstate == TCP_SYN_SENT) {
		owner_resolve_d(sk, sock_rec_of_d(sk, key, direct), newstate, &o, direct);
		emit(sk, TCPTRACER_CONNECT, &o, direct);
	} else if (newstate == TCP_CLOSE) {
		struct sock_rec *rec = sock_rec_of_d(sk, key, direct);

		sock_rec_lost_at(rec, oldstate);
		if (was_established(oldstate)) {
			owner_resolve_d(sk, rec, newstate, &o, direct);
			emit(sk, TCPTRACER_CLOSE, &o, direct);
		}
		owner_forget_d(sk, key, direct);
	}
	return 0;
}

SET_STATE_PROGS(tcptracer_set_state, handle_set_state)

/* accept()/accept4() returned fd ret: the accepting process now owns that socket. This replaces the
 * socket-owner component's own accept hooks (user space does not load those for tcptracer). */
static __always_inline int on_accept_exit(long ret)
{
	struct sock_owner o = {};
	struct sock *sk;

	if (ret < 0)
		return 0;
	sk = sock_of_fd(ret);
	if (!sk || SK_R(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	owner_from_current(&o);
	owner_store_d(sk, sock_key_d(sk, false), &o, false);
	emit(sk, TCPTRACER_ACCEPT, &o, false);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int tcptracer_exit_accept4(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int tcptracer_exit_accept(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept_exit(ctx->ret);
}
