// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tcpconnlat: the time an active TCP open takes, from SYN_SENT (inside connect(), in the connecting
 * task) until ESTABLISHED (when the SYN-ACK is processed: softirq, or the socket's backlog). Both ends
 * come from sock:inet_sock_set_state, keyed by socket; the owner is taken at SYN_SENT, never from the
 * task that happens to run when the SYN-ACK arrives. A handshake that fails (SYN_SENT -> CLOSE) is not
 * a latency and prints nothing. */
#include "common.bpf.h"
#include "sockowner.h"
#include "tcpconnlat.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct tcpconnlat_event _tcpconnlat_event = {};

/* set by user space before load: only show handshakes at least this slow */
const volatile __u64 min_lat_ns = 0;

struct start {
	__u64 ts_ns;
	struct sock_owner owner;
};

/* Handshakes in progress (sockets in SYN_SENT). A plain hash, not an LRU: an LRU makes room by evicting
 * another handshake silently (and on a machine with many CPUs, before it is full: each CPU keeps free
 * entries of its own); here a handshake that finds no room is counted (lost_capacity). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, SOCK_MAP_ENTRIES);
	__type(key, __u64); /* struct sock * */
	__type(value, struct start);
} starts SEC(".maps");

static __always_inline int handle_set_state(const struct sock *sk, int oldstate, int newstate)
{
	struct tcpconnlat_event *e;
	struct sk_tuple t = {};
	__u64 key = (__u64)sk, now;
	struct start *s;

	if (oldstate != TCP_SYN_SENT && newstate != TCP_SYN_SENT)
		return 0;
	if (SK_R(sk, sk_protocol) != IPPROTO_TCP)
		return 0;

	if (newstate == TCP_SYN_SENT) {
		/* in connect() (or a Fast Open sendmsg): the current task is the owner */
		struct start st = { .ts_ns = bpf_ktime_get_ns() };
		__u16 family = SK_R(sk, __sk_common.skc_family);

		if (!family_ok(family))
			return 0;
		st.owner.pid = bpf_get_current_pid_tgid() >> 32;
		st.owner.uid = (__u32)bpf_get_current_uid_gid();
		st.owner.scope = scope_id_current();
		bpf_get_current_comm(&st.owner.comm, sizeof(st.owner.comm));
		if (!tgid_ok(st.owner.pid) || !uid_ok(st.owner.uid) || !scope_ok(st.owner.scope))
			return 0;
		map_update_counted(&starts, &key, &st, BPF_ANY);
		return 0;
	}

	/* leaving SYN_SENT: ESTABLISHED is a latency, anything else (CLOSE) a failed handshake */
	s = bpf_map_lookup_elem(&starts, &key);
	if (!s)
		return 0;
	if (newstate != TCP_ESTABLISHED)
		goto out;
	now = bpf_ktime_get_ns();
	if (now - s->ts_ns < min_lat_ns)
		goto out;
	read_sk_tuple(sk, &t);
	if (!ports_ok(t.lport, t.rport))
		goto out;
	e = event_reserve(sizeof(*e));
	if (!e)
		goto out;
	e->ts_ns = now;
	e->lat_ns = now - s->ts_ns;
	e->owner = s->owner;
	e->family = t.family;
	e->lport = t.lport;
	e->dport = t.rport;
	e->pad = 0;
	__builtin_memcpy(e->saddr, t.laddr, 16);
	__builtin_memcpy(e->daddr, t.raddr, 16);
	event_submit(e);
out:
	bpf_map_delete_elem(&starts, &key);
	return 0;
}

/* the handler reads with BPF_CORE_READ in both kinds of program */
#define handle_set_state_d(sk, oldstate, newstate, direct) handle_set_state(sk, oldstate, newstate)
SET_STATE_PROGS(tcpconnlat_set_state, handle_set_state_d)
