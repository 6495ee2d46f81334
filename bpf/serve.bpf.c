// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* sockray serve: counters for the fleet view (Prometheus), kept in the kernel and read at each scrape;
 * no ring-buffer record per event.
 *
 * A label set is (owner's name, role, service port): the socket's owner from the socket-owner component
 * (these events run in softirq or timer context), its role (client: it called connect(); server: it was
 * accepted from a listener) and the port of the service, the remote one for a client and the local one
 * for a server, so that ephemeral ports never become labels. Each set's counters are one value of the
 * hash map `series`, sized by user space from --max-series; an event of a set that finds no room is
 * counted in the `other` set (inserted by user space before attach) and in serve_stats, never lost.
 *
 * Hooks: sock:inet_sock_set_state (connections opened, failed, their latency, bytes of ended sessions),
 * tcp:tcp_retransmit_skb and tcp:tcp_retransmit_synack (retransmits), skb:kfree_skb (drops by reason);
 * tp_btf, else raw_tp. */
#include "common.bpf.h"
#include "sockowner.bpf.h"
#include "hist.bpf.h"
#include "serve.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* puts the types into BTF, so the skeleton carries them to Rust */
struct serve_key _serve_key = {};
struct serve_val _serve_val = {};
struct serve_drop_key _serve_drop_key = {};

/* set by user space before load, as for tcpretrans and tcpdrop (from the tracepoints' arguments) */
const volatile __u8 skb_has_err = 0;
const volatile __u8 has_reason = 0;
const volatile __u8 has_rx_sk = 0;

#define ECONNREFUSED 111
#define ETIMEDOUT 110
#define EHOSTUNREACH 113
#define ENETUNREACH 101
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define TCP_TIME_WAIT_STATE 6
#define TCP_NEW_SYN_RECV_STATE 12

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024); /* --max-series: set by user space before load */
	__type(key, struct serve_key);
	__type(value, struct serve_val);
} series SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024); /* as `series` */
	__type(key, struct serve_drop_key);
	__type(value, __u64);
} drops SEC(".maps");

/* drops of label sets beyond the budget, by reason (the last entry: no reason, or one beyond the array) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SERVE_DROP_REASONS + 1);
	__type(key, __u32);
	__type(value, __u64);
} other_drops SEC(".maps");

/* a zeroed value to insert from (a serve_val is too big for the stack with the rest) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct serve_val);
} zero_val SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SERVE_STATS);
	__type(key, __u32);
	__type(value, __u64);
} serve_stats SEC(".maps");

static __always_inline void stat_add(__u32 idx)
{
	__u64 *n = bpf_map_lookup_elem(&serve_stats, &idx);

	if (n)
		__sync_fetch_and_add(n, 1);
}

/* The counters of (owner, role, port): found, else made, else the `other` set's. */
static __always_inline struct serve_val *series_of(const struct sock_owner *o, __u8 role, __u16 port)
{
	struct serve_key k = {};
	struct serve_val *v, *zero;
	__u32 z = 0;

	__builtin_memcpy(k.comm, o->comm, sizeof(k.comm));
	k.role = role;
	k.port = port;
	v = bpf_map_lookup_elem(&series, &k);
	if (v)
		return v;
	zero = bpf_map_lookup_elem(&zero_val, &z);
	if (zero)
		bpf_map_update_elem(&series, &k, zero, BPF_NOEXIST);
	v = bpf_map_lookup_elem(&series, &k); /* made now, or by another CPU meanwhile */
	if (v)
		return v;
	__builtin_memset(&k, 0, sizeof(k));
	k.role = SERVE_ROLE_OTHER;
	stat_add(SERVE_FOLDED_SETS);
	return bpf_map_lookup_elem(&series, &k);
}

/* A socket's role and service port: a client's is the remote port, a server's the local one. */
static __always_inline __u8 role_of(__u32 rec_flags)
{
	return (rec_flags & SOCK_ACTIVE_OPEN) ? SERVE_ROLE_CLIENT : SERVE_ROLE_SERVER;
}

static __always_inline __u8 fail_kind(int err)
{
	switch (err) {
	case ECONNREFUSED:
		return SERVE_FAIL_REFUSED;
	case ETIMEDOUT:
		return SERVE_FAIL_TIMED_OUT;
	case EHOSTUNREACH:
	case ENETUNREACH:
		return SERVE_FAIL_UNREACHABLE;
	}
	return SERVE_FAIL_OTHER;
}

/* direct: true in the tp_btf program (plain loads from sk), false in raw_tp (helper reads) */
static __always_inline int handle_set_state(const struct sock *sk, int oldstate, int newstate, bool direct)
{
	struct serve_val *v;
	struct sock_owner o;
	struct sock_rec *rec;
	struct tcp_sock *tp;
	__u64 key, now, born_ns, tx, rx;
	__u32 flags;
	__u16 lport, rport;
	__u8 role;

	if (SK_FIELD(direct, sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	key = sock_key_d(sk, direct);
	owner_on_state_d(sk, key, oldstate, newstate, direct, true);
	if (newstate == TCP_ESTABLISHED) {
		if (oldstate != TCP_SYN_SENT && oldstate != TCP_SYN_RECV)
			return 0;
	} else if (newstate != TCP_CLOSE) {
		return 0;
	}
	rec = sock_rec_of_d(sk, key, direct);
	born_ns = rec ? rec->born_ns : 0;
	flags = rec ? rec->flags : 0;
	owner_resolve_d(sk, rec, newstate, &o, direct);
	if (newstate == TCP_CLOSE && oldstate == TCP_SYN_RECV)
		goto out; /* a passive child that never became a connection (see tcplife) */
	if (newstate == TCP_CLOSE && !born_ns)
		goto out; /* a listener, or a session older than the tool: not counted */
	lport = sk_lport_d(sk, direct);
	rport = bpf_ntohs(SK_FIELD(direct, sk, __sk_common.skc_dport));
	role = role_of(flags);
	owner_of_listener(flags, sk, lport, &o, direct);
	v = series_of(&o, role, role == SERVE_ROLE_CLIENT ? rport : lport);
	if (!v)
		goto out;
	now = bpf_ktime_get_ns();
	if (newstate == TCP_ESTABLISHED) {
		__sync_fetch_and_add(&v->opened, 1);
		if (oldstate == TCP_SYN_SENT && born_ns && now > born_ns) {
			__u64 d = now - born_ns;
			__u32 slot = log2_slot(d / 1000, SERVE_LAT_SLOTS);

			__sync_fetch_and_add(&v->lat_sum_ns, d);
			/* log2_slot() is below SERVE_LAT_SLOTS; the mask makes the bound one 5.10's verifier
			 * keeps (it lost the compare's, "unbounded memory access") */
			barrier_var(slot);
			slot &= SERVE_LAT_ARRAY - 1;
			__sync_fetch_and_add(&v->lat_slots[slot], 1);
		}
		return 0;
	}
	if (oldstate == TCP_SYN_SENT) {
		__u8 kind = fail_kind(SK_FIELD(direct, sk, sk_err));

		if (kind < SERVE_FAIL_KINDS)
			__sync_fetch_and_add(&v->failed[kind], 1);
		goto out;
	}
	tp = sk_tcp_d(sk, direct);
	payload_bytes(sk, tp, flags, &tx, &rx);
	__sync_fetch_and_add(&v->closed, 1);
	__sync_fetch_and_add(&v->tx_bytes, tx);
	__sync_fetch_and_add(&v->rx_bytes, rx);
out:
	if (newstate == TCP_CLOSE)
		owner_forget_d(sk, key, direct);
	return 0;
}

SET_STATE_PROGS(serve_set_state, handle_set_state)

static __always_inline void count_retrans(const struct sock_owner *o, __u8 role, __u16 port, __u8 kind)
{
	struct serve_val *v = series_of(o, role, port);

	if (v && kind < SERVE_RETRANS_KINDS)
		__sync_fetch_and_add(&v->retrans[kind], 1);
}

static __always_inline int on_retransmit(const struct sock *sk, bool direct)
{
	struct sock_owner o;
	struct sock_rec *rec;
	__u32 flags;
	__u8 ca, role, kind;
	__u64 key;

	if (!sk)
		return 0;
	key = sock_key_d(sk, direct);
	rec = sock_rec_of_d(sk, key, direct);
	owner_copy(&o, rec ? &rec->owner : 0);
	flags = rec ? rec->flags : 0;
	role = role_of(flags);
	ca = BPF_CORE_READ_BITFIELD_PROBED(SK_TCP(sk), inet_conn.icsk_ca_state);
	kind = ca == TCP_CA_Loss ? SERVE_RETRANS_TIMEOUT
	       : ca == TCP_CA_Recovery ? SERVE_RETRANS_FAST
				       : SERVE_RETRANS_OTHER;
	count_retrans(&o, role,
		      role == SERVE_ROLE_CLIENT ? bpf_ntohs(SK_FIELD(direct, sk, __sk_common.skc_dport))
						: SK_FIELD(direct, sk, __sk_common.skc_num),
		      kind);
	return 0;
}

static __always_inline int on_synack(const struct sock *sk, bool direct)
{
	struct sock_owner o;
	struct sock_rec *rec;
	__u64 key = sock_key_d(sk, direct);

	rec = sock_rec_of_d(sk, key, direct);
	owner_copy(&o, rec ? &rec->owner : 0);
	count_retrans(&o, SERVE_ROLE_SERVER, SK_FIELD(direct, sk, __sk_common.skc_num), SERVE_RETRANS_SYNACK);
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(serve_retrans__btf, const struct sock *sk, const struct sk_buff *skb)
{
	if (skb_has_err && (int)ctx[2])
		return 0;
	return on_retransmit(sk, true);
}

SEC("raw_tp/tcp_retransmit_skb")
int BPF_PROG(serve_retrans__raw, const struct sock *sk, const struct sk_buff *skb)
{
	if (skb_has_err && (int)ctx[2])
		return 0;
	return on_retransmit(sk, false);
}

SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(serve_synack__btf, const struct sock *sk, const struct request_sock *req)
{
	return on_synack(sk, true);
}

SEC("raw_tp/tcp_retransmit_synack")
int BPF_PROG(serve_synack__raw, const struct sock *sk, const struct request_sock *req)
{
	return on_synack(sk, false);
}

#define SKB_FIELD(direct, skb, field) ((direct) ? (skb)->field : BPF_CORE_READ(skb, field))

/* A dropped TCP packet: counted by (owner, role, service port, reason); without a socket (a segment
 * for no connection: NO_SOCKET) by reason alone, so that a scan of closed ports makes no labels. */
static __always_inline int on_drop(struct sk_buff *skb, struct sock *sk, __u32 reason, bool direct)
{
	struct serve_drop_key k = {};
	struct sock_owner o = {};
	unsigned char *head;
	__u16 proto, nh;
	__u8 l3[10], state;
	__u64 one = 1, *n;

	proto = SKB_FIELD(direct, skb, protocol);
	if (proto != bpf_htons(ETH_P_IP) && proto != bpf_htons(ETH_P_IPV6))
		return 0;
	head = (unsigned char *)SKB_FIELD(direct, skb, head);
	nh = SKB_FIELD(direct, skb, network_header);
	if (bpf_probe_read_kernel(l3, sizeof(l3), head + nh))
		return 0;
	if (proto == bpf_htons(ETH_P_IP)) {
		if ((l3[0] >> 4) != 4 || l3[9] != IPPROTO_TCP)
			return 0;
	} else if ((l3[0] >> 4) != 6 || l3[6] != IPPROTO_TCP) {
		return 0;
	}
	/* not drops: NOT_DROPPED_YET (0), CONSUMED (1), as tcpdrop */
	if (has_reason && reason <= 1)
		return 0;
	if (!sk)
		sk = SKB_FIELD(direct, skb, sk);
	if (sk) {
		__u16 num = SK_FIELD(direct, sk, __sk_common.skc_num);

		state = SK_FIELD(direct, sk, __sk_common.skc_state);
		if (state == TCP_NEW_SYN_RECV_STATE || state == TCP_LISTEN) {
			struct listen_key lk = listen_key_port(sk, num, direct);

			listener_owner(&lk, &o);
			k.role = SERVE_ROLE_SERVER;
			k.port = num;
		} else if (state != TCP_TIME_WAIT_STATE) {
			__u64 key = sock_key_d(sk, direct);
			struct sock_rec *rec = sock_rec_of_d(sk, key, direct);
			__u32 flags = rec ? rec->flags : 0;

			owner_copy(&o, rec ? &rec->owner : 0);
			k.role = role_of(flags);
			k.port = k.role == SERVE_ROLE_CLIENT ? bpf_ntohs(SK_FIELD(direct, sk, __sk_common.skc_dport))
							     : num;
		}
	}
	__builtin_memcpy(k.comm, o.comm, sizeof(k.comm));
	k.reason = has_reason ? reason : SERVE_NO_REASON;
	n = bpf_map_lookup_elem(&drops, &k);
	if (!n && bpf_map_update_elem(&drops, &k, &one, BPF_NOEXIST) == 0)
		return 0;
	if (!n)
		n = bpf_map_lookup_elem(&drops, &k);
	if (!n) {
		/* no room: the `other` set, by reason (an array: always room) */
		__u32 idx = k.reason < SERVE_DROP_REASONS ? k.reason : SERVE_DROP_REASONS;

		stat_add(SERVE_FOLDED_DROPS);
		n = bpf_map_lookup_elem(&other_drops, &idx);
		if (!n)
			return 0;
	}
	__sync_fetch_and_add(n, 1);
	return 0;
}

static __always_inline int on_kfree_skb(unsigned long long *ctx, bool direct)
{
	__u32 reason = has_reason ? (__u32)ctx[2] : SERVE_NO_REASON;
	struct sock *sk = has_rx_sk ? (struct sock *)ctx[3] : NULL;

	return on_drop((struct sk_buff *)ctx[0], sk, reason, direct);
}

SEC("tp_btf/kfree_skb")
int serve_drop__btf(unsigned long long *ctx)
{
	return on_kfree_skb(ctx, true);
}

SEC("raw_tp/kfree_skb")
int serve_drop__raw(unsigned long long *ctx)
{
	return on_kfree_skb(ctx, false);
}
