// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tcpcong: per connection, the time spent in each congestion state (open, disorder, cwr, recovery, loss)
 * and the number of changes (BCC's tcpcong), kept in the kernel; user space reads it every interval.
 *
 * Each connection has a record in `conns` (keyed by the socket's address) from the moment the tool sees
 * it: at ESTABLISHED (sock:inet_sock_set_state), or, for a connection older than the tool, at its first
 * congestion state change (accounted from then on). A change ends the period of the state it leaves:
 * its time is added to that state (and, with -d, to that state's histogram). User space adds the time
 * of the state a connection is still in, up to the tick, itself (since_ns). At TCP_CLOSE the last period
 * ends, the record goes to user space through the ring buffer (so a connection that closes within an
 * interval is still in that interval) and is deleted.
 *
 * Hooks for the changes, alternatives for the attach layer (src/attach.rs):
 *  - tcp:tcp_cong_state_set (Linux 5.19+; tp_btf, else raw_tp), fired in tcp_set_ca_state() before it
 *    assigns icsk_ca_state: the new state is the argument, the old one still in the socket;
 *  - older kernels (tcp_set_ca_state() is an inline function there): fexit on the functions BCC's
 *    tcpcong hooks when the tracepoint is missing, which make every change but a few (tcp_fastretrans_alert,
 *    tcp_enter_cwr, tcp_enter_loss, tcp_enter_recovery, tcp_process_tlp_ack): the socket's state after
 *    the call against the one recorded; several changes within one call count as one, as in BCC.
 *    At CLOSE the socket's state is compared too, for a change made elsewhere.
 * Owner: from the socket-owner component (sockowner.bpf.h): changes run in softirq or timer context. */
#include "common.bpf.h"
#include "sockowner.bpf.h"
#include "hist.bpf.h"
#include "tcpcong.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* puts the types into BTF, so the skeleton carries them to Rust */
struct tcpcong_conn _tcpcong_conn = {};
struct tcpcong_hist _tcpcong_hist = {};

/* set by user space before load */
const volatile __u8 dist = 0;   /* -d: histograms of the periods */
const volatile __u8 micros = 0; /* -u: usecs, else msecs */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, SOCK_MAP_ENTRIES);
	__type(key, __u64);
	__type(value, struct tcpcong_conn);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tcpcong_hist);
} hists SEC(".maps");

/* a new record is built here (.bss: too big for the stack next to the owner component's) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tcpcong_conn);
} scratch SEC(".maps");

/* The socket's congestion state now (icsk_ca_state, a bit field). */
static __always_inline __u32 ca_state_of(const struct sock *sk)
{
	const struct inet_connection_sock *icsk = (const struct inet_connection_sock *)sk;

	return BPF_CORE_READ_BITFIELD_PROBED(icsk, icsk_ca_state);
}

static __always_inline void hist_add(__u32 state, __u64 ns)
{
	struct tcpcong_hist *h;
	__u32 zero = 0, idx;

	if (!dist || state >= TCPCONG_STATES)
		return;
	h = bpf_map_lookup_elem(&hists, &zero);
	if (!h)
		return;
	idx = state * TCPCONG_SLOTS + log2_slot(micros ? ns / 1000 : ns / 1000000, TCPCONG_SLOTS);
	if (idx < TCPCONG_STATES * TCPCONG_SLOTS)
		h->slots[idx] += 1; /* this CPU's copy */
}

/* Ends the period of the state c is in, at now. (Within seq_begin/seq_end.) */
static __always_inline void period_end(struct tcpcong_conn *c, __u64 now)
{
	__u32 st = c->state;
	__u64 d = now > c->since_ns ? now - c->since_ns : 0;

	if (st < TCPCONG_STATES) {
		c->dur_ns[st] += d;
		hist_add(st, d);
	}
	c->since_ns = now;
}

/* A record is changed only between these (one writer per socket: its changes run under the socket's
 * lock); user space reads seq before and after and tries again when it moved or is odd. */
static __always_inline void seq_begin(struct tcpcong_conn *c)
{
	__sync_fetch_and_add(&c->seq, 1);
}

static __always_inline void seq_end(struct tcpcong_conn *c)
{
	__sync_fetch_and_add(&c->seq, 1);
}

static __always_inline void owner_of(const struct sock *sk, __u64 key, struct sock_owner *o, bool direct)
{
	owner_resolve_d(sk, sock_rec_of_d(sk, key, direct), -1, o, direct);
}

/* A record for sk, seen for the first time now (in state `state`), when it passes the filters: NULL
 * when filtered out, or when the map had no room (counted). replace: a new connection at an address a
 * record may still name (a socket freed without a CLOSE the tool saw). */
static __always_inline struct tcpcong_conn *conn_new(const struct sock *sk, __u64 key, __u32 state, __u64 now,
						    bool replace, bool direct)
{
	struct tcpcong_conn *c;
	struct sk_tuple t = {};
	__u32 zero = 0;

	read_sk_tuple_d(sk, &t, direct);
	if (!family_ok(t.family) || !ports_ok(t.lport, t.rport))
		return NULL;
	c = bpf_map_lookup_elem(&scratch, &zero);
	if (!c)
		return NULL;
	__builtin_memset(c, 0, sizeof(*c));
	c->sk = key;
	c->first_ns = now;
	c->since_ns = now;
	c->state = state;
	EVENT_SET_TUPLE(c, t);
	owner_of(sk, key, &c->owner, direct);
	if (bpf_map_update_elem(&conns, &key, c, replace ? BPF_ANY : BPF_NOEXIST)) {
		/* -EEXIST: another CPU made it first; else the map is full */
		c = bpf_map_lookup_elem(&conns, &key);
		if (!c)
			count_lost_as(LOST_CAPACITY);
		return c;
	}
	return bpf_map_lookup_elem(&conns, &key);
}

/* c's state is now `state` (a change when it differs). */
static __always_inline void conn_change(const struct sock *sk, __u64 key, struct tcpcong_conn *c, __u32 state,
					__u64 now, bool direct)
{
	struct sock_owner o = {};

	if (state == c->state || state >= TCPCONG_STATES)
		return;
	if (!c->owner.pid)
		owner_of(sk, key, &o, direct);
	seq_begin(c);
	period_end(c, now);
	c->state = state;
	c->changes += 1;
	if (o.pid)
		c->owner = o;
	seq_end(c);
}

static __always_inline bool sk_tracked(const struct sock *sk, bool direct)
{
	int st = SK_FIELD(direct, sk, __sk_common.skc_state);

	/* not before the handshake's end nor after the close (tcp_disconnect() resets the state of a socket
	 * already CLOSE): a record is deleted only at a CLOSE */
	return st != TCP_CLOSE && st != TCP_LISTEN && st != TCP_SYN_SENT && st != TCP_SYN_RECV &&
	       st != TCP_NEW_SYN_RECV;
}

/* The tracepoint: sk is about to enter `newstate`; its current state is still in the socket. */
static __always_inline void on_cong_state_set(const struct sock *sk, __u32 newstate, bool direct)
{
	struct tcpcong_conn *c;
	__u64 key, now;

	if (!sk)
		return;
	key = sock_key_d(sk, direct);
	now = bpf_ktime_get_ns();
	c = bpf_map_lookup_elem(&conns, &key);
	if (!c) {
		if (!sk_tracked(sk, direct))
			return;
		c = conn_new(sk, key, ca_state_of(sk), now, false, direct);
		if (!c)
			return;
	}
	conn_change(sk, key, c, newstate, now, direct);
}

/* The fallback: after a function that may have changed sk's state. */
static __always_inline void on_after(const struct sock *sk)
{
	struct tcpcong_conn *c;
	__u64 key, now;
	__u32 state;

	if (!sk)
		return;
	key = sock_key_d(sk, true);
	now = bpf_ktime_get_ns();
	state = ca_state_of(sk);
	c = bpf_map_lookup_elem(&conns, &key);
	if (!c) {
		/* first seen: accounted from now, in the state it is in now */
		if (sk_tracked(sk, true))
			conn_new(sk, key, state, now, false, true);
		return;
	}
	conn_change(sk, key, c, state, now, true);
}

/* sock:inet_sock_set_state: the socket-owner upkeep, a new connection's record at ESTABLISHED, the
 * last period and the record sent to user space at CLOSE. */
static __always_inline void on_set_state(const struct sock *sk, int oldstate, int newstate, bool direct)
{
	struct tcpcong_conn *c, *e;
	struct sock_rec *rec;
	__u64 key, now;

	if (SK_FIELD(direct, sk, sk_protocol) != IPPROTO_TCP)
		return;
	key = sock_key_d(sk, direct);
	owner_on_state_d(sk, key, oldstate, newstate, direct, false);
	if (newstate == TCP_ESTABLISHED) {
		conn_new(sk, key, ca_state_of(sk), bpf_ktime_get_ns(), true, direct);
		return;
	}
	if (newstate != TCP_CLOSE)
		return;
	c = bpf_map_lookup_elem(&conns, &key);
	if (c) {
		struct sock_owner o = {};

		now = bpf_ktime_get_ns();
		/* a change no hook saw (the fallback's functions make most, not all) */
		conn_change(sk, key, c, ca_state_of(sk), now, direct);
		owner_of(sk, key, &o, direct);
		seq_begin(c);
		period_end(c, now);
		if (o.pid)
			c->owner = o;
		seq_end(c);
		e = event_reserve(sizeof(*e));
		if (e) {
			__builtin_memcpy(e, c, sizeof(*e));
			e->closed = 1;
			e->since_ns = now;
			event_submit(e);
		}
		bpf_map_delete_elem(&conns, &key);
	}
	rec = sock_rec_of_d(sk, key, direct);
	sock_rec_lost_at(rec, oldstate);
	owner_forget_d(sk, key, direct);
}

SEC("tp_btf/tcp_cong_state_set")
int BPF_PROG(tcpcong_change__btf, struct sock *sk, __u8 ca_state)
{
	on_cong_state_set(sk, ca_state, true);
	return 0;
}

SEC("raw_tp/tcp_cong_state_set")
int BPF_PROG(tcpcong_change__raw, struct sock *sk, __u8 ca_state)
{
	on_cong_state_set(sk, ca_state, false);
	return 0;
}

/* The fallback, one group: taken only when the kernel has all five (BCC's list). */
SEC("fexit/tcp_fastretrans_alert")
int BPF_PROG(tcpcong_change__fexit_alert, struct sock *sk)
{
	on_after(sk);
	return 0;
}

SEC("fexit/tcp_enter_cwr")
int BPF_PROG(tcpcong_change__fexit_cwr, struct sock *sk)
{
	on_after(sk);
	return 0;
}

SEC("fexit/tcp_enter_loss")
int BPF_PROG(tcpcong_change__fexit_loss, struct sock *sk)
{
	on_after(sk);
	return 0;
}

SEC("fexit/tcp_enter_recovery")
int BPF_PROG(tcpcong_change__fexit_recovery, struct sock *sk)
{
	on_after(sk);
	return 0;
}

SEC("fexit/tcp_process_tlp_ack")
int BPF_PROG(tcpcong_change__fexit_tlp, struct sock *sk)
{
	on_after(sk);
	return 0;
}

SET_STATE_PROGS(tcpcong_set_state, on_set_state)
