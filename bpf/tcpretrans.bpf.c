// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tcpretrans: TCP retransmits (tcp:tcp_retransmit_skb), a listener's SYN-ACK retransmits
 * (tcp:tcp_retransmit_synack) and, with -l, tail loss probes (tcp_send_loss_probe: no tracepoint, so
 * fentry or a kprobe where the kernel allows one). They run in timer or softirq context: the process
 * shown is the socket's owner, from the socket-owner component (kept by this tool's state-change
 * program and the refresh hooks of sockowner.bpf.h), never the task that happens to be on the CPU.
 * -c counts per flow in a map instead of sending a record per retransmit. */
#define __TARGET_ARCH_x86 /* BPF_KPROBE's register layout (sockray ships x86_64 only) */
#include "common.bpf.h"
#include "sockowner.bpf.h"
#include "tcpretrans.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* puts the event types into BTF, so the skeleton carries them to Rust */
struct tcpretrans_event _tcpretrans_event = {};
struct tcpretrans_count_key _tcpretrans_count_key = {};

/* set by user space before load */
const volatile __u8 count_mode = 0;     /* -c: count in retrans_counts, no ring-buffer records */
/* tcp_retransmit_skb has a third argument, err (newer kernels, 6.18 among them: the tracepoint then fires for attempts
 * that sent nothing too, e.g. -EBUSY while the original is still in a host queue; before, it fired for
 * sent retransmits only). Read from the tracepoint's format in tracefs by user space. */
const volatile __u8 skb_has_err = 0;

#define RETRANS_FLOWS 16384

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RETRANS_FLOWS);
	__type(key, struct tcpretrans_count_key);
	__type(value, __u64);
} retrans_counts SEC(".maps");

/* -c: one more retransmit of a flow; a flow that finds no room in the table is counted lost */
static __always_inline void count_flow(const struct sk_tuple *t)
{
	struct tcpretrans_count_key k = {};

	k.family = t->family;
	k.lport = t->lport;
	k.rport = t->rport;
	__builtin_memcpy(k.laddr, t->laddr, 16);
	__builtin_memcpy(k.raddr, t->raddr, 16);
	count_key(&retrans_counts, &k);
}

static __always_inline void send(const struct sock_rec *rec, const struct sk_tuple *t, __u64 skaddr, __u8 type,
				 __u8 state, __u8 ca_state, __u32 seq)
{
	struct tcpretrans_event *e;
	struct sock_owner o;

	/* the recorded owner, or unknown: a retransmit never runs in its owner's context for sure */
	owner_copy(&o, rec ? &rec->owner : 0);
	if (!owner_ok(&o))
		return;
	if (count_mode) {
		count_flow(t);
		return;
	}
	e = event_reserve(sizeof(*e));
	if (!e)
		return;
	e->skaddr = skaddr;
	e->ts_ns = bpf_ktime_get_ns();
	e->owner = o;
	e->seq = seq;
	EVENT_SET_TUPLE(e, *t);
	e->rtype = type;
	e->state = state;
	e->ca_state = ca_state;
	__builtin_memset(e->pad, 0, sizeof(e->pad));
	event_submit(e);
}

/* A segment sent again (skb; NULL for a loss probe). direct: sk is a typed pointer (tp_btf, fentry). */
static __always_inline int on_retransmit(const struct sock *sk, const struct sk_buff *skb, __u8 type, bool direct)
{
	struct sk_tuple t = {};
	struct sock_rec *rec;
	__u32 seq = 0;
	__u64 key;
	__u8 ca;

	if (!sk)
		return 0;
	read_sk_tuple_d(sk, &t, direct);
	if (!family_ok(t.family) || !ports_ok(t.lport, t.rport))
		return 0;
	key = sock_key_d(sk, direct);
	rec = sock_rec_of_d(sk, key, direct);
	if (skb) /* TCP_SKB_CB(skb)->seq: the first field of the control block */
		bpf_probe_read_kernel(&seq, sizeof(seq), (const char *)skb + bpf_core_field_offset(struct sk_buff, cb));
	ca = BPF_CORE_READ_BITFIELD_PROBED(SK_TCP(sk), inet_conn.icsk_ca_state);
	send(rec, &t, (__u64)sk, type, SK_FIELD(direct, sk, __sk_common.skc_state), ca, seq);
	return 0;
}

/* A listener's SYN-ACK sent again for the request req: the addresses are the request's, the owner the
 * listener's. */
static __always_inline int on_synack(const struct sock *sk, const struct request_sock *req, bool direct)
{
	struct sk_tuple t = {};
	struct sock_rec *rec;
	__u32 seq;
	__u64 key;

	t.family = BPF_CORE_READ(req, __req_common.skc_family);
	t.lport = BPF_CORE_READ(req, __req_common.skc_num);
	t.rport = bpf_ntohs(BPF_CORE_READ(req, __req_common.skc_dport));
	if (!family_ok(t.family) || !ports_ok(t.lport, t.rport))
		return 0;
	if (t.family == AF_INET6) {
		BPF_CORE_READ_INTO(&t.laddr, req, __req_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&t.raddr, req, __req_common.skc_v6_daddr.in6_u.u6_addr8);
	} else {
		BPF_CORE_READ_INTO((__u32 *)t.laddr, req, __req_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)t.raddr, req, __req_common.skc_daddr);
	}
	key = sock_key_d(sk, direct);
	rec = sock_rec_of_d(sk, key, direct);
	seq = BPF_CORE_READ((const struct tcp_request_sock *)req, snt_isn);
	send(rec, &t, (__u64)req, TCPRETRANS_SYNACK, BPF_CORE_READ(req, __req_common.skc_state), 0xff, seq);
	return 0;
}

/* the socket-owner records kept with the sockets' state changes */
OWNER_UPKEEP_PROGS(tcpretrans_set_state)

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(tcpretrans_skb__btf, const struct sock *sk, const struct sk_buff *skb)
{
	/* an attempt that sent nothing is no retransmit (and not in the kernel's RetransSegs) */
	if (skb_has_err && (int)ctx[2])
		return 0;
	return on_retransmit(sk, skb, TCPRETRANS_RETRANSMIT, true);
}

SEC("raw_tp/tcp_retransmit_skb")
int BPF_PROG(tcpretrans_skb__raw, const struct sock *sk, const struct sk_buff *skb)
{
	if (skb_has_err && (int)ctx[2])
		return 0;
	return on_retransmit(sk, skb, TCPRETRANS_RETRANSMIT, false);
}

SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(tcpretrans_synack__btf, const struct sock *sk, const struct request_sock *req)
{
	return on_synack(sk, req, true);
}

SEC("raw_tp/tcp_retransmit_synack")
int BPF_PROG(tcpretrans_synack__raw, const struct sock *sk, const struct request_sock *req)
{
	return on_synack(sk, req, false);
}

/* -l only (user space leaves them out otherwise): tail loss probes have no tracepoint. */
SEC("fentry/tcp_send_loss_probe")
int BPF_PROG(tcpretrans_tlp__fentry, struct sock *sk)
{
	return on_retransmit(sk, NULL, TCPRETRANS_TLP, true);
}

SEC("kprobe/tcp_send_loss_probe")
int BPF_KPROBE(tcpretrans_tlp__kprobe, struct sock *sk)
{
	return on_retransmit(sk, NULL, TCPRETRANS_TLP, false);
}
