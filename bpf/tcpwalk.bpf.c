// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tcptop --walk and tcpsubnet --walk: bytes per flow from the sockets' own counters, with no hook on the
 * data path (issue 15, design (b)). Each interval user space walks the TCP sockets with a BPF iterator
 * (iter/tcp, Linux 5.9+) and the walk adds, per socket, what its counters grew since the last walk into
 * the same per-flow maps tcptop's send/recv hooks fill (struct tcptop_key/tcptop_val, read and swapped by
 * src/flows.rs):
 *   - TX: tcp_sock.bytes_acked (bytes the peer acknowledged), RX: bytes_received (bytes TCP took in
 *     order), both as payload (payload_bytes(): the SYN and FIN sequence numbers taken out), and
 *     bytes_retrans (bytes sent again: `retrans_bytes`, which BCC lacks);
 *   - walk_seen holds each socket's counters at the last walk, keyed by its address (sock_key_d()).
 *     A walk at start (tcpwalk_base) records them and counts nothing: a connection older than the tool
 *     counts from then on. A socket the walk finds without an entry counts from zero if the
 *     socket-owner component saw it begin (its record's born_ns, set at SYN_SENT/SYN_RECV, after the
 *     tool's state hook was attached), else it is older than the tool (missed by the first walk): its
 *     counters become its baseline;
 *   - a session that ends between two walks is counted at its TCP_CLOSE (sock:inet_sock_set_state,
 *     tp_btf, else raw_tp): what its counters grew since the last walk (or since zero, as above), and
 *     its entry deleted.
 * The owner is the socket's, from the socket-owner component (bpf/sockowner.bpf.h: connect, listen,
 * close/shutdown, accept or reads, and the seeding walk at start), not the task that happens to run the
 * walk; the filters (-p, -4/-6, ports, --cgroup ...) are applied here. A socket that finds no room in
 * walk_seen (sized like the flow maps) is counted lost (lost_capacity) and not counted (its next walk
 * tries again from its record: the bytes of the intervals it had no room are missing, never doubled). */
#include "common.bpf.h"
#include "sockowner.bpf.h"
#include "flows.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";


/* A socket's payload counters at the last walk. */
struct walk_counts {
	__u64 tx;
	__u64 rx;
	__u64 retrans;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384); /* sized by user space like the flow maps (--max-flows) */
	__type(key, __u64);         /* sock_key_d() */
	__type(value, struct walk_counts);
} walk_seen SEC(".maps");

/* Adds a socket's growth to its flow (owner o, tuple t). */
static __always_inline void add_flow(const struct sk_tuple *t, const struct sock_owner *o,
				     const struct walk_counts *d)
{
	struct tcptop_key key;
	struct tcptop_val *v;
	void *inner;
	__u32 zero = 0;

	if (!d->tx && !d->rx && !d->retrans)
		return;
	if (!owner_ok(o) || (o->pid && o->pid == self_tgid))
		return;
	__builtin_memset(&key, 0, sizeof(key));
	key.pid = o->pid;
	key.family = t->family;
	key.lport = t->lport;
	key.rport = t->rport;
	__builtin_memcpy(key.laddr, t->laddr, 16);
	__builtin_memcpy(key.raddr, t->raddr, 16);

	inner = bpf_map_lookup_elem(&flows, &zero);
	if (!inner)
		return;
	v = bpf_map_lookup_elem(inner, &key);
	if (!v) {
		struct tcptop_val fresh = {};

		fresh.uid = o->uid;
		if (o->pid)
			__builtin_memcpy(fresh.comm, o->comm, sizeof(fresh.comm));
		else
			fresh.comm[0] = '?';
		if (bpf_map_update_elem(inner, &key, &fresh, BPF_NOEXIST) && !bpf_map_lookup_elem(inner, &key)) {
			count_lost_as(LOST_CAPACITY);
			return;
		}
		v = bpf_map_lookup_elem(inner, &key);
		if (!v)
			return;
	}
	__sync_fetch_and_add(&v->tx_bytes, d->tx);
	__sync_fetch_and_add(&v->rx_bytes, d->rx);
	__sync_fetch_and_add(&v->retrans_bytes, d->retrans);
}

/* cur minus last, never below zero (a counter does not go back; a FIN's adjustment could, for a moment) */
static __always_inline __u64 growth(__u64 cur, __u64 last)
{
	return cur > last ? cur - last : 0;
}

/* The socket's growth since its entry in walk_seen (then updated to cur, or deleted: `end`), or since
 * zero when it has none and began after the tool started (born). Returns false when nothing is to be
 * counted. */
static __always_inline bool take_growth(__u64 key, const struct walk_counts *cur, bool born, bool end,
					bool count, struct walk_counts *d)
{
	struct walk_counts *seen = bpf_map_lookup_elem(&walk_seen, &key);

	if (seen) {
		d->tx = growth(cur->tx, seen->tx);
		d->rx = growth(cur->rx, seen->rx);
		d->retrans = growth(cur->retrans, seen->retrans);
		if (end) {
			bpf_map_delete_elem(&walk_seen, &key);
		} else {
			if (cur->tx > seen->tx)
				seen->tx = cur->tx;
			if (cur->rx > seen->rx)
				seen->rx = cur->rx;
			if (cur->retrans > seen->retrans)
				seen->retrans = cur->retrans;
		}
		return count;
	}
	if (!end && bpf_map_update_elem(&walk_seen, &key, cur, BPF_NOEXIST) &&
	    !bpf_map_lookup_elem(&walk_seen, &key)) {
		/* no room: not counted now (it would be again from the same start next time) */
		count_lost_as(LOST_CAPACITY);
		return false;
	}
	if (!born)
		return false; /* older than the tool: these are its baseline */
	*d = *cur;
	return count;
}

/* ---- the walk ---- */

static __always_inline int walk(struct bpf_iter__tcp *ctx, bool count)
{
	struct sock_common *skc = ctx->sk_common;
	struct walk_counts cur, d;
	struct sock_owner o;
	struct sock_rec *rec;
	struct tcp_sock *tp;
	struct sk_tuple t;
	struct sock *sk;
	__u32 flags = 0;
	bool born = false;
	__u64 key;
	int state;

	if (!skc)
		return 0;
	/* full sockets only: time-wait and request socks have no counters (and their session ended) */
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	sk = (struct sock *)tp;
	state = SK_D(sk, __sk_common.skc_state);
	/* a closed one was counted at its CLOSE (the walk may meet it between its CLOSE and its unhash) */
	if (state == TCP_LISTEN || state == TCP_CLOSE)
		return 0;
	read_sk_tuple_tp(sk, tp, &t, true);
	if (!family_ok(t.family) || !ports_ok(t.lport, t.rport))
		return 0;
	key = sock_key_d(sk, true);
	rec = sock_rec_of_d(sk, key, true);
	/* the recorded owner (not the walker, which holds the socket's lock here) */
	owner_copy(&o, rec ? &rec->owner : 0);
	if (rec) {
		flags = rec->flags;
		born = rec->born_ns != 0;
	}
	payload_bytes(sk, tp, flags, &cur.tx, &cur.rx);
	cur.retrans = tp->bytes_retrans;
	if (take_growth(key, &cur, born, false, count, &d))
		add_flow(&t, &o, &d);
	return 0;
}

/* at start: every socket's counters, its baseline; nothing counted */
SEC("iter/tcp")
int tcpwalk_base(struct bpf_iter__tcp *ctx)
{
	return walk(ctx, false);
}

/* each interval: what every socket's counters grew since the last walk */
SEC("iter/tcp")
int tcpwalk_delta(struct bpf_iter__tcp *ctx)
{
	return walk(ctx, true);
}

/* ---- sessions that end between walks, and the socket-owner records ---- */

static __always_inline void walk_on_state(const struct sock *sk, int oldstate, int newstate, bool direct)
{
	struct walk_counts cur, d;
	struct sock_owner o;
	struct sock_rec *rec;
	struct tcp_sock *tp;
	struct sk_tuple t;
	__u32 flags = 0;
	bool born = false;
	__u64 key;

	if (SK_FIELD(direct, sk, sk_protocol) != IPPROTO_TCP)
		return;
	key = sock_key_d(sk, direct);
	owner_on_state_d(sk, key, oldstate, newstate, direct, false);
	if (newstate != TCP_CLOSE)
		return;
	rec = sock_rec_of_d(sk, key, direct);
	if (oldstate != TCP_LISTEN) {
		tp = sk_tcp_d(sk, direct);
		read_sk_tuple_tp(sk, tp, &t, direct);
		if (family_ok(t.family) && ports_ok(t.lport, t.rport)) {
			if (rec) {
				flags = rec->flags;
				born = rec->born_ns != 0;
			}
			payload_bytes(sk, tp, flags, &cur.tx, &cur.rx);
			cur.retrans = tp ? tp->bytes_retrans : BPF_CORE_READ(SK_TCP(sk), bytes_retrans);
			if (take_growth(key, &cur, born, true, true, &d)) {
				owner_resolve_d(sk, rec, newstate, &o, direct);
				add_flow(&t, &o, &d);
			}
		}
	}
	sock_rec_lost_at(rec, oldstate);
	owner_forget_d(sk, key, direct);
}

SET_STATE_PROGS(tcpwalk_set_state, walk_on_state)
