// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tcpstates: every TCP state change, with the time spent in the previous state and the owning process. */
#include "common.bpf.h"
#include "sockowner.bpf.h"
#include "tcpstates.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* puts the event type into BTF, so the skeleton carries it to Rust */
struct tcpstates_event _tcpstates_event = {};

/* Before Linux 5.11-ish (seen on 5.10), a passively opened socket enters SYN_RECV inside
 * inet_csk_clone_lock() before the peer's address and port are copied into it: that row would read
 * 0.0.0.0:0. Such a row is held here and sent at the socket's next change (from SYN_RECV, right after:
 * the child exists only once the handshake's last ACK came), with the addresses known by then. */
struct held_row {
	__u64 ts_ns;
	__u64 delta_ns;
	__u32 ctx_pid;
	__u32 pad;
};

/* (a plain hash: a row that finds no room is counted, where an LRU would drop another silently) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct held_row);
} held_syn_recv SEC(".maps");

/* rec_owner: the owner in the socket's record (pid 0: none, or no record) */
static __always_inline void emit(const struct sock *sk, const struct sock_owner *rec_owner, const struct sk_tuple *t,
				 __u64 ts, __u64 delta, __u32 ctx_pid, int oldstate, int newstate, bool direct)
{
	struct tcpstates_event *e;
	struct sock_owner o;

	/* the process filters first: a record reserved and discarded costs nearly what a sent one does */
	owner_resolve_from_d(sk, rec_owner, newstate, &o, direct);
	if (!owner_ok(&o))
		return;
	e = event_reserve(sizeof(*e));
	if (!e)
		return;
	e->owner = o;
	e->skaddr = (__u64)sk;
	e->ts_ns = ts;
	e->delta_ns = delta;
	e->ctx_pid = ctx_pid;
	EVENT_SET_TUPLE(e, *t);
	e->pad = 0;
	e->oldstate = oldstate;
	e->newstate = newstate;
	event_submit(e);
}

/* direct: true in the tp_btf program (plain loads from sk), false in raw_tp (helper reads) */
static __always_inline int handle_set_state(const struct sock *sk, int oldstate, int newstate, bool direct)
{
	struct sk_tuple t = {};
	struct held_row held = {};
	struct sock_owner owner;
	__u64 key, now, delta = 0;
	struct sock_rec *rec;
	__u32 ctx_pid;

	if (SK_FIELD(direct, sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	key = sock_key_d(sk, direct);
	rec = owner_on_state_d(sk, key, oldstate, newstate, direct, false);
	if (!rec)
		rec = sock_rec_of_d(sk, key, direct);

	/* Everything the rows need of the record is read here (and its time written): past this block the
	 * program is the same whichever map holds the record (slot table, socket storage or hash map), so
	 * the verifier walks the rest once instead of once per map (6.18: 4,520 -> 3,061 instructions
	 * walked, ~3 ms of start-up). The time of the socket's previous change is in its record (tool_ns). */
	now = bpf_ktime_get_ns();
	if (rec) {
		if (newstate == TCP_CLOSE)
			sock_rec_lost_at(rec, oldstate);
		if (rec->tool_ns)
			delta = now - rec->tool_ns;
		rec->tool_ns = now;
		owner_copy(&owner, &rec->owner);
	} else {
		owner_copy(&owner, NULL);
		if (newstate == TCP_CLOSE) {
			sock_rec_lost_at(NULL, oldstate);
		} else {
			/* a socket the component has no record of (owner unknown) */
			struct sock_rec fresh = { .tool_ns = now };
			sock_rec_create_d(sk, key, &fresh, direct);
		}
	}

	read_sk_tuple_d(sk, &t, direct);
	ctx_pid = bpf_get_current_pid_tgid() >> 32;
	if (oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV && !t.rport) {
		struct held_row h = { .ts_ns = now, .delta_ns = delta, .ctx_pid = ctx_pid };

		map_update_counted(&held_syn_recv, &key, &h, BPF_ANY);
		return 0;
	}
	if (oldstate == TCP_SYN_RECV) {
		struct held_row *h = bpf_map_lookup_elem(&held_syn_recv, &key);

		if (h) {
			held = *h;
			bpf_map_delete_elem(&held_syn_recv, &key);
		}
	}
	if (!family_ok(t.family) || !ports_ok(t.lport, t.rport))
		goto out;
	if (held.ts_ns)
		emit(sk, &owner, &t, held.ts_ns, held.delta_ns, held.ctx_pid, TCP_LISTEN, TCP_SYN_RECV, direct);
	emit(sk, &owner, &t, now, delta, ctx_pid, oldstate, newstate, direct);
out:
	if (newstate == TCP_CLOSE)
		owner_forget_d(sk, key, direct);
	return 0;
}

SET_STATE_PROGS(tcpstates_set_state, handle_set_state)
