// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tcpsynbl: a log2 histogram of a listener's accept-queue length (sk_ack_backlog) at each new
 * connection, one per listener and backlog_max, with the handshakes the kernel drops for a full queue
 * counted at the length it found (above backlog_max).
 *
 * BCC and libbpf-tools hook tcp_v4/v6_syn_recv_sock (kprobe/fentry): the listener, at the handshake's
 * last ACK, whether a child socket is then made or the queue is full (exit_overflow). No tracepoint sits
 * there; what this program measures instead, per hook group (user space chooses per kernel):
 *   - tcpsynbl_state: sock:inet_sock_set_state LISTEN -> SYN_RECV, fired for the child socket right
 *     after inet_csk_clone_lock() copied it from its listener: every field of the child is still the
 *     listener's (sk_ack_backlog, sk_max_ack_backlog, address, port, netns), read at the moment this
 *     connection joins the accept queue. Also keeps the listeners' owners (LISTEN, LISTEN -> CLOSE).
 *   - opt_synbl_ack: the last ACK dropped for a full accept queue (tcp_check_req -> syn_recv_sock
 *     failed): skb:kfree_skb with the reason TCP_LISTEN_OVERFLOW and rx_sk the listener (Linux 6.15+);
 *     else fentry/kprobe on tcp_v4/v6_syn_recv_sock, counted when the queue is full at entry.
 *   - opt_synbl_syn: a SYN dropped for a full accept queue (tcp_conn_request: sk_acceptq_is_full,
 *     ListenOverflows), which BCC does not see: skb:consume_skb called from tcp_rcv_state_process (the
 *     listener consumes the SYN whether it answered it or not; Linux 6.3+ for the call site), for a SYN
 *     whose listener's queue is full; else fentry/kprobe on tcp_conn_request with the queue full. */
#define __TARGET_ARCH_x86 /* BPF_KPROBE's register layout (sockray ships x86_64 only) */
#include "common.bpf.h"
#include "sockowner.bpf.h"
#include "hist.bpf.h"
#include "tcpsynbl.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* puts the types into BTF, so the skeleton carries them to Rust */
struct tcpsynbl_key _tcpsynbl_key = {};
struct tcpsynbl_hist _tcpsynbl_hist = {};

/* SKB_DROP_REASON_TCP_LISTEN_OVERFLOW's number in this kernel (read by user space from kfree_skb's
 * format in tracefs: the numbers differ between kernels); 0: the kernel has none (before 6.15), and the
 * kfree_skb programs are not loaded */
const volatile __u32 reason_listen_overflow = 0;

/* tcp_rcv_state_process's text [lo, hi), from the kernel's symbol lookup (bpf/ksymrange.bpf.c; else
 * /proc/kallsyms: src/ksym.rs), done on another thread while this object loads: written by user space
 * right after the load, before it says it is tracing */
volatile __u64 rcv_state_lo;
volatile __u64 rcv_state_hi;

#define ETH_P_IP 0x0800

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct tcpsynbl_key);
	__type(value, struct tcpsynbl_hist);
} synbl_hists SEC(".maps");

/* what a new histogram starts from (.bss: too big for the stack with the rest) */
static struct tcpsynbl_hist zero_hist;

/* One more value in the histogram of k; a histogram that finds no room is counted lost. */
static __always_inline void record(const struct tcpsynbl_key *k, __u32 backlog, bool overflow,
				   const struct sock_owner *o)
{
	struct tcpsynbl_hist *h = bpf_map_lookup_elem(&synbl_hists, k);
	__u32 slot;

	if (!h) {
		bpf_map_update_elem(&synbl_hists, k, &zero_hist, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&synbl_hists, k);
		if (!h) {
			count_lost_as(LOST_CAPACITY);
			return;
		}
	}
	if (!h->owner.pid && o->pid)
		h->owner = *o;
	slot = log2_slot(backlog, TCPSYNBL_SLOTS);
	__sync_fetch_and_add(&h->slots[slot & (TCPSYNBL_SLOTS - 1)], 1);
	if (overflow)
		__sync_fetch_and_add(&h->overflows, 1);
}

/* Counts backlog for the listener sk (or a child just cloned from it). `direct` as for SK_FIELD. */
static __always_inline void count_listener(const struct sock *sk, bool direct, __u32 backlog, bool overflow)
{
	struct tcpsynbl_key k = {};
	struct sock_owner o = {};
	struct listen_key lk;

	k.family = SK_FIELD(direct, sk, __sk_common.skc_family);
	k.lport = SK_FIELD(direct, sk, __sk_common.skc_num);
	if (!family_ok(k.family) || !ports_ok(k.lport, 0))
		return;
	lk = listen_key_port(sk, k.lport, direct);
	listener_owner(&lk, &o);
	if (!owner_ok(&o))
		return;
	k.netns = sk_netns_d(sk, direct);
	k.backlog_max = SK_FIELD(direct, sk, sk_max_ack_backlog);
	if (direct) {
		if (k.family == AF_INET6)
			__builtin_memcpy(k.laddr, SK_D(sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8), 16);
		else
			*(__u32 *)k.laddr = SK_D(sk, __sk_common.skc_rcv_saddr);
	} else if (k.family == AF_INET6) {
		SK_R_INTO(&k.laddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
	} else {
		SK_R_INTO((__u32 *)k.laddr, sk, __sk_common.skc_rcv_saddr);
	}
	record(&k, backlog, overflow, &o);
}

/* The listener sk at a handshake the kernel may drop: counted when its accept queue is full
 * (sk_acceptq_is_full: more than backlog_max queued), at the length found. */
static __always_inline void count_if_full(const struct sock *sk, bool direct)
{
	__u32 backlog = SK_FIELD(direct, sk, sk_ack_backlog);

	if (backlog > SK_FIELD(direct, sk, sk_max_ack_backlog))
		count_listener(sk, direct, backlog, true);
}

/* ---- new connections, and the listeners' owners ---- */
static __always_inline int on_set_state(const struct sock *sk, int oldstate, int newstate, bool direct)
{
	if (SK_FIELD(direct, sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	if (newstate == TCP_LISTEN) {
		/* listen(): process context, the caller owns the listener */
		struct sock_owner o = {};

		owner_from_current(&o);
		listener_record(sk, sock_key_d(sk, direct), &o, direct);
		return 0;
	}
	if (oldstate != TCP_LISTEN)
		return 0;
	if (newstate == TCP_SYN_RECV) {
		/* the child, a copy of its listener made a moment ago: the listener's queue length as
		 * this connection joins it (BCC reads the same in tcp_v4_syn_recv_sock) */
		count_listener(sk, direct, SK_FIELD(direct, sk, sk_ack_backlog), false);
	} else if (newstate == TCP_CLOSE) {
		__u64 key = sock_key_d(sk, direct);

		owner_on_state_d(sk, key, oldstate, newstate, direct, false);
		owner_forget_d(sk, key, direct);
	}
	return 0;
}

SET_STATE_PROGS(tcpsynbl_state, on_set_state)

/* ---- the last ACK of a handshake dropped for a full accept queue ---- */
static __always_inline int on_drop(const struct sock *rx_sk, __u32 reason, bool direct)
{
	if (!reason_listen_overflow || reason != reason_listen_overflow || !rx_sk)
		return 0;
	if (SK_FIELD(direct, rx_sk, __sk_common.skc_state) != TCP_LISTEN)
		return 0;
	count_listener(rx_sk, direct, SK_FIELD(direct, rx_sk, sk_ack_backlog), true);
	return 0;
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(opt_synbl_ack__btf, struct sk_buff *skb, void *location, int reason, struct sock *rx_sk)
{
	return on_drop(rx_sk, reason, true);
}

SEC("raw_tp/kfree_skb")
int BPF_PROG(opt_synbl_ack__raw, struct sk_buff *skb, void *location, int reason, struct sock *rx_sk)
{
	return on_drop(rx_sk, reason, false);
}

/* before Linux 6.15 (no drop reason there): the listener as the kernel tries to make the child */
static __always_inline int on_syn_recv_sock(const struct sock *sk, const struct sk_buff *skb, bool v6,
					    bool direct)
{
	/* an IPv4 connection to an IPv6 listener: tcp_v6_syn_recv_sock hands it to tcp_v4_syn_recv_sock,
	 * which counts it */
	if (v6 && BPF_CORE_READ(skb, protocol) == bpf_htons(ETH_P_IP))
		return 0;
	count_if_full(sk, direct);
	return 0;
}

SEC("fentry/tcp_v4_syn_recv_sock")
int BPF_PROG(opt_synbl_ack__fentry4, const struct sock *sk, const struct sk_buff *skb)
{
	return on_syn_recv_sock(sk, skb, false, true);
}

SEC("fentry/tcp_v6_syn_recv_sock")
int BPF_PROG(opt_synbl_ack__fentry6, const struct sock *sk, const struct sk_buff *skb)
{
	return on_syn_recv_sock(sk, skb, true, true);
}

SEC("kprobe/tcp_v4_syn_recv_sock")
int BPF_KPROBE(opt_synbl_ack__kprobe4, const struct sock *sk, const struct sk_buff *skb)
{
	return on_syn_recv_sock(sk, skb, false, false);
}

SEC("kprobe/tcp_v6_syn_recv_sock")
int BPF_KPROBE(opt_synbl_ack__kprobe6, const struct sock *sk, const struct sk_buff *skb)
{
	return on_syn_recv_sock(sk, skb, true, false);
}

/* ---- a SYN dropped for a full accept queue ---- */

/* The network namespace (struct net) a received packet arrived in: through its route's device (TCP has
 * cleared skb->dev by the time the listener sees the packet), else skb->dev. */
static __always_inline __u64 skb_net(const struct sk_buff *skb)
{
	unsigned long refdst = BPF_CORE_READ(skb, _skb_refdst) & ~1UL; /* SKB_DST_PTRMASK */
	struct net_device *dev;

	if (refdst)
		dev = BPF_CORE_READ((struct dst_entry *)refdst, dev);
	else
		dev = BPF_CORE_READ(skb, dev);
	return dev ? (__u64)BPF_CORE_READ(dev, nd_net.net) : 0;
}

static __always_inline int on_consume(const struct sk_buff *skb, __u64 location)
{
	struct listen_key lk = {};
	struct listen_owner *lo;
	unsigned char *head;
	__u16 thoff;
	__u8 th[14];

	/* the SYN a listener consumed (tcp_rcv_state_process, LISTEN): one comparison for every other
	 * freed packet */
	if (location < rcv_state_lo || location >= rcv_state_hi)
		return 0;
	head = BPF_CORE_READ(skb, head);
	thoff = BPF_CORE_READ(skb, transport_header);
	if (bpf_probe_read_kernel(th, sizeof(th), head + thoff))
		return 0;
	if ((th[13] & 0x12) != 0x02) /* SYN without ACK */
		return 0;
	lk.net = skb_net(skb);
	lk.port = ((__u32)th[2] << 8) | th[3];
	lo = bpf_map_lookup_elem(&listen_owners, &lk);
	if (!lo)
		return 0;
	/* answered (a request made) unless the queue is full: then tcp_conn_request dropped it */
	count_if_full((const struct sock *)lo->sk, false);
	return 0;
}

SEC("tp_btf/consume_skb")
int BPF_PROG(opt_synbl_syn__btf, struct sk_buff *skb, void *location)
{
	return on_consume(skb, (__u64)location);
}

SEC("raw_tp/consume_skb")
int BPF_PROG(opt_synbl_syn__raw, struct sk_buff *skb, void *location)
{
	return on_consume(skb, (__u64)location);
}

SEC("fentry/tcp_conn_request")
int BPF_PROG(opt_synbl_syn__fentry, void *rsk_ops, void *af_ops, const struct sock *sk)
{
	count_if_full(sk, true);
	return 0;
}

SEC("kprobe/tcp_conn_request")
int BPF_KPROBE(opt_synbl_syn__kprobe, void *rsk_ops, void *af_ops, const struct sock *sk)
{
	count_if_full(sk, false);
	return 0;
}
