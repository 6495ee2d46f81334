// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tcpstates: every TCP state change, with the time spent in the previous state and the owning process. */
#include "common.bpf.h"
#include "sockowner.bpf.h"
#include "tcpstates.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* puts the event type into BTF, so the skeleton carries it to Rust */
struct tcpstates_event _tcpstates_event = {};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, SOCK_MAP_ENTRIES);
	__type(key, __u64);
	__type(value, __u64);
} last_change SEC(".maps");

/* direct: true in the tp_btf program (plain loads from sk), false in raw_tp (helper reads) */
static __always_inline int handle_set_state(const struct sock *sk, int oldstate, int newstate, bool direct)
{
	struct tcpstates_event *e;
	struct sk_tuple t = {};
	__u64 key = (__u64)sk, now, *prev;

	if (SK_FIELD(direct, sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	owner_on_state_d(sk, oldstate, newstate, direct);

	now = bpf_ktime_get_ns();
	prev = bpf_map_lookup_elem(&last_change, &key);
	__u64 delta = prev ? now - *prev : 0;
	if (newstate == TCP_CLOSE)
		bpf_map_delete_elem(&last_change, &key);
	else
		bpf_map_update_elem(&last_change, &key, &now, BPF_ANY);

	read_sk_tuple_d(sk, &t, direct);
	if (!family_ok(t.family) || !ports_ok(t.lport, t.rport))
		goto out;

	e = event_reserve(sizeof(*e));
	if (!e)
		goto out;
	owner_resolve(sk, newstate, &e->owner);
	if (!owner_ok(&e->owner)) {
		bpf_ringbuf_discard(e, 0);
		goto out;
	}
	e->skaddr = key;
	e->ts_ns = now;
	e->delta_ns = delta;
	e->ctx_pid = bpf_get_current_pid_tgid() >> 32;
	EVENT_SET_TUPLE(e, t);
	e->pad = 0;
	e->oldstate = oldstate;
	e->newstate = newstate;
	event_submit(e);
out:
	if (newstate == TCP_CLOSE)
		owner_forget(sk);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tcpstates_set_state__btf, const struct sock *sk, int oldstate, int newstate)
{
	return handle_set_state(sk, oldstate, newstate, true);
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(tcpstates_set_state__raw, const struct sock *sk, int oldstate, int newstate)
{
	return handle_set_state(sk, oldstate, newstate, false);
}
