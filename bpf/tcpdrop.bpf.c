// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tcpdrop: TCP packets the kernel dropped, with the socket's owner, the drop reason and the kernel stack.
 *
 * Hook: skb:kfree_skb (tp_btf, else raw_tp), which fires for every packet of every protocol the kernel
 * frees as dropped: the program looks at the packet's protocol before anything else (one load of
 * skb->protocol, one read of the IP header) and returns for all that is not TCP over IPv4/IPv6.
 * Its arguments grew with the kernel: (skb, location) before Linux 5.17, then the drop reason, then
 * (6.12+) rx_sk, the socket the packet was received for. User space reads which of them this kernel has
 * from the tracepoint's format in tracefs and sets has_reason / has_rx_sk before load; the arguments a
 * kernel lacks are then never read (the verifier does not walk code behind a frozen constant).
 *
 * Owner: the socket's (rx_sk, else skb->sk) from the socket-owner component (kept by this tool's
 * state-change program and the refresh hooks of sockowner.bpf.h); a drop runs in softirq, where the task
 * on the CPU is unrelated. No socket (a SYN to a closed port: NO_SOCKET), or one with no record: pid 0.
 * A request socket (NEW_SYN_RECV) is its listener's. */
#define __TARGET_ARCH_x86 /* BPF_KPROBE's register layout (sockray ships x86_64 only) */
#include "common.bpf.h"
#include "sockowner.bpf.h"
#include "tcpdrop.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* puts the event type into BTF, so the skeleton carries it to Rust */
struct tcpdrop_event _tcpdrop_event = {};

/* set by user space before load */
const volatile __u8 has_reason = 0;   /* kfree_skb has its reason argument (Linux 5.17+) */
const volatile __u8 has_rx_sk = 0;    /* ... and rx_sk (Linux 6.12+) */
const volatile __u8 want_stack = 1;   /* --no-stack: 0 */
/* drop reasons shown: a bit per reason number (by default all but the kernel's not-a-drop reasons:
 * NOT_DROPPED_YET, CONSUMED, and NOT_SPECIFIED as BCC; --reason: those named) */
const volatile __u8 reason_bits[TCPDROP_REASON_BITS / 8] = {};
const volatile __u8 reason_high_ok = 0; /* reasons >= TCPDROP_REASON_BITS (subsystem reasons) */

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define TCP_TIME_WAIT_STATE 6
#define TCP_NEW_SYN_RECV_STATE 12

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	/* as BCC's: ~1 MiB, preallocated; ids are never deleted (user space caches each stack it named), so a
	 * stack that hashes to a taken bucket is not kept: counted lost (lost_capacity) */
	__uint(max_entries, 1024);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 127 * sizeof(__u64)); /* PERF_MAX_STACK_DEPTH */
} stacks SEC(".maps");

#define SKB_FIELD(direct, skb, field) ((direct) ? (skb)->field : BPF_CORE_READ(skb, field))

static __always_inline bool reason_ok(__u32 reason)
{
	__u32 idx = reason >> 3;

	if (reason >= TCPDROP_REASON_BITS)
		return reason_high_ok;
	asm volatile("" : "+r"(idx)); /* keep the bound on the index for older verifiers */
	idx &= TCPDROP_REASON_BITS / 8 - 1;
	return reason_bits[idx] & (1 << (reason & 7));
}

/* A dropped packet skb, for the socket sk (NULL: take skb->sk), with reason (TCPDROP_NO_REASON: none)
 * freed at location (0: unknown); ctx is the program's context (for the stack). `direct` as for SK_FIELD
 * (true in the tp_btf and fentry programs, where skb and the sockets are typed pointers). */
static __always_inline int on_drop(void *ctx, struct sk_buff *skb, struct sock *sk, __u32 reason, __u64 location,
				   bool direct)
{
	struct tcpdrop_event *e;
	struct sock_owner o = {};
	unsigned char *head;
	__u16 proto, nh, sport, dport, lport, rport, family;
	__u8 l3[40], th[14], state = 0;
	__u64 thaddr;

	/* TCP only, first: every dropped packet of the machine comes here */
	proto = SKB_FIELD(direct, skb, protocol);
	if (proto != bpf_htons(ETH_P_IP) && proto != bpf_htons(ETH_P_IPV6))
		return 0;
	head = (unsigned char *)SKB_FIELD(direct, skb, head);
	nh = SKB_FIELD(direct, skb, network_header);
	if (proto == bpf_htons(ETH_P_IP)) {
		if (bpf_probe_read_kernel(l3, 20, head + nh))
			return 0;
		if ((l3[0] >> 4) != 4 || l3[9] != IPPROTO_TCP)
			return 0;
		family = AF_INET;
		thaddr = (__u64)(head + nh) + (l3[0] & 0xf) * 4;
	} else {
		if (bpf_probe_read_kernel(l3, 40, head + nh))
			return 0;
		if ((l3[0] >> 4) != 6 || l3[6] != IPPROTO_TCP) /* no extension headers */
			return 0;
		family = AF_INET6;
		thaddr = (__u64)(head + nh) + 40;
	}
	if (reason != TCPDROP_NO_REASON && !reason_ok(reason))
		return 0;
	if (!family_ok(family))
		return 0;
	if (bpf_probe_read_kernel(th, sizeof(th), (void *)thaddr))
		return 0;
	sport = ((__u16)th[0] << 8) | th[1];
	dport = ((__u16)th[2] << 8) | th[3];

	if (!sk)
		sk = SKB_FIELD(direct, skb, sk);
	lport = dport; /* received: the destination is local */
	rport = sport;
	if (sk) {
		__u16 num = SK_FIELD(direct, sk, __sk_common.skc_num);

		state = SK_FIELD(direct, sk, __sk_common.skc_state);
		if (num == sport && num != dport) { /* sent by the socket */
			lport = sport;
			rport = dport;
		}
		if (state == TCP_NEW_SYN_RECV_STATE) {
			/* a request socket: its listener's owner */
			struct listen_key k = listen_key_port(sk, num, direct);

			listener_owner(&k, &o);
		} else if (state != TCP_TIME_WAIT_STATE) {
			__u64 key = sock_key_d(sk, direct);
			struct sock_rec *rec = sock_rec_of_d(sk, key, direct);

			owner_copy(&o, rec ? &rec->owner : 0);
		}
	}
	if (!ports_ok(lport, rport) || !owner_ok(&o))
		return 0;

	e = event_reserve(sizeof(*e));
	if (!e)
		return 0;
	e->ts_ns = bpf_ktime_get_ns();
	e->skaddr = (__u64)sk;
	e->location = location;
	e->owner = o;
	e->stack_id = -1;
	if (want_stack) {
		long id = bpf_get_stackid(ctx, &stacks, 0);

		if (id < 0)
			count_lost_as(LOST_CAPACITY); /* no room in the stack map (or a hash collision) */
		e->stack_id = id;
	}
	e->reason = reason;
	e->family = family;
	e->sport = sport;
	e->dport = dport;
	e->state = state;
	e->tcpflags = th[13];
	if (family == AF_INET6) {
		__builtin_memcpy(e->saddr, &l3[8], 16);
		__builtin_memcpy(e->daddr, &l3[24], 16);
	} else {
		__builtin_memset(e->saddr, 0, 16);
		__builtin_memset(e->daddr, 0, 16);
		__builtin_memcpy(e->saddr, &l3[12], 4);
		__builtin_memcpy(e->daddr, &l3[16], 4);
	}
	event_submit(e);
	return 0;
}

/* ctx: the tracepoint's arguments (skb, location[, reason[, rx_sk]]) */
static __always_inline int on_kfree_skb(unsigned long long *ctx, bool direct)
{
	__u32 reason = has_reason ? (__u32)ctx[2] : TCPDROP_NO_REASON;
	struct sock *sk = has_rx_sk ? (struct sock *)ctx[3] : NULL;

	return on_drop(ctx, (struct sk_buff *)ctx[0], sk, reason, ctx[1], direct);
}

SEC("tp_btf/kfree_skb")
int tcpdrop_drop__btf(unsigned long long *ctx)
{
	return on_kfree_skb(ctx, true);
}

SEC("raw_tp/kfree_skb")
int tcpdrop_drop__raw(unsigned long long *ctx)
{
	return on_kfree_skb(ctx, false);
}

/* Before Linux 5.17 (kfree_skb without a reason), TCP dropped what it received through tcp_drop(), which
 * frees with __kfree_skb: no tracepoint. There (and only there: user space leaves these out when kfree_skb
 * has its reason, since tcp_drop then frees through it) the function itself, by fentry or a kprobe. */
SEC("fentry/tcp_drop")
int BPF_PROG(opt_tcpdrop_tcp_drop__fentry, struct sock *sk, struct sk_buff *skb)
{
	return on_drop(ctx, skb, sk, TCPDROP_NO_REASON, 0, true);
}

SEC("kprobe/tcp_drop")
int BPF_KPROBE(opt_tcpdrop_tcp_drop__kprobe, struct sock *sk, struct sk_buff *skb)
{
	return on_drop(ctx, skb, sk, TCPDROP_NO_REASON, 0, false);
}

/* the socket-owner records kept with the sockets' state changes */
OWNER_UPKEEP_PROGS(tcpdrop_set_state)
