// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tcprtt: a log2 histogram of the smoothed round-trip time (tcp_sock.srtt_us >> 3, as BCC and the
 * kernel's TCP_INFO read it) at every segment an established socket receives, kept in the kernel; user
 * space prints it at each interval. Optionally one histogram per local address (-b), remote address (-B),
 * remote port (--by-rport) and process owning the socket (--by-process).
 *
 * BCC and libbpf-tools hook tcp_rcv_established (kprobe/fentry). Its tracepoint is tcp:tcp_probe, fired at
 * that function's entry, before the segment's ACK updates srtt: the value BCC reads. It fires in softirq
 * (or, for segments queued while the socket was held, in the holder's release_sock()): the owner comes from
 * the socket-owner component (sockowner.bpf.h), never from the task on the CPU. Only ESTABLISHED sockets
 * are counted, as tcp_rcv_established sees only those. */
#include "common.bpf.h"
#include "sockowner.bpf.h"
#include "hist.bpf.h"
#include "tcprtt.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* puts the types into BTF, so the skeleton carries them to Rust */
struct tcprtt_key _tcprtt_key = {};
struct tcprtt_hist _tcprtt_hist = {};

/* set by user space before load */
const volatile __u8 by = 0;     /* TCPRTT_BY_* */
const volatile __u8 millis = 0; /* -m: msecs */
/* -a / -A: an address, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), as two little-endian words; a socket's
 * address is put in the same form, so an IPv4 address also matches an IPv6 socket's IPv4-mapped one */
const volatile __u8 filter_laddr_on = 0;
const volatile __u64 filter_laddr[2] = {};
const volatile __u8 filter_raddr_on = 0;
const volatile __u64 filter_raddr[2] = {};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 4096);
	__type(key, struct tcprtt_key);
	__type(value, struct tcprtt_hist);
} rtt_hists SEC(".maps");

/* what a new histogram starts from (.bss: too big for the stack) */
static struct tcprtt_hist zero_hist;

/* Is the address a (16 bytes; IPv4 in its first 4) of this family the filter's? */
static __always_inline bool addr_is(const __u8 *a, __u16 family, const volatile __u64 *want)
{
	__u64 w0 = 0, w1;
	__u32 v4 = 0;

	/* copied, not loaded through a cast: the address sits at an offset of 6 in struct sk_tuple, and
	 * older verifiers (5.10) refuse misaligned stack loads */
	if (family == AF_INET) {
		__builtin_memcpy(&v4, a, 4);
		w1 = ((__u64)v4 << 32) | 0xffff0000ULL;
	} else {
		__builtin_memcpy(&w0, a, 8);
		__builtin_memcpy(&w1, a + 8, 8);
	}
	return w0 == want[0] && w1 == want[1];
}

static __always_inline int on_probe(const struct sock *sk, bool direct)
{
	const bool addrs = filter_laddr_on || filter_raddr_on || (by & (TCPRTT_BY_LADDR | TCPRTT_BY_RADDR));
	const bool ports = filter_lport_on || filter_rport_on || (by & TCPRTT_BY_RPORT);
	struct tcprtt_key k = {};
	struct sock_owner o = {};
	struct tcprtt_hist *h;
	struct tcp_sock *tp;
	__u32 srtt, slot;
	__u16 family;

	if (!sk || SK_FIELD(direct, sk, __sk_common.skc_state) != TCP_ESTABLISHED)
		return 0;
	family = SK_FIELD(direct, sk, __sk_common.skc_family);
	if (!family_ok(family))
		return 0;
	tp = sk_tcp_d(sk, direct);
	if (addrs) {
		struct sk_tuple t = {};

		read_sk_tuple_tp(sk, tp, &t, direct);
		if (!ports_ok(t.lport, t.rport))
			return 0;
		if (filter_laddr_on && !addr_is(t.laddr, family, filter_laddr))
			return 0;
		if (filter_raddr_on && !addr_is(t.raddr, family, filter_raddr))
			return 0;
		if (by & (TCPRTT_BY_LADDR | TCPRTT_BY_RADDR))
			k.family = family;
		if (by & TCPRTT_BY_LADDR)
			__builtin_memcpy(k.laddr, t.laddr, 16);
		if (by & TCPRTT_BY_RADDR)
			__builtin_memcpy(k.raddr, t.raddr, 16);
		if (by & TCPRTT_BY_RPORT)
			k.rport = t.rport;
	} else if (ports) {
		__u16 lport = sk_lport_tp(sk, tp), rport = bpf_ntohs(SK_FIELD(direct, sk, __sk_common.skc_dport));

		if (!ports_ok(lport, rport))
			return 0;
		if (by & TCPRTT_BY_RPORT)
			k.rport = rport;
	}
	if (by & TCPRTT_BY_PROCESS) {
		__u64 key = sock_key_d(sk, direct);

		owner_resolve_d(sk, sock_rec_of_d(sk, key, direct), -1, &o, direct);
		k.pid = o.pid;
	}
	if (tp)
		srtt = tp->srtt_us >> 3;
	else
		srtt = BPF_CORE_READ(SK_TCP(sk), srtt_us) >> 3;
	if (millis)
		srtt /= 1000;

	h = bpf_map_lookup_elem(&rtt_hists, &k);
	if (!h) {
		bpf_map_update_elem(&rtt_hists, &k, &zero_hist, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&rtt_hists, &k);
		if (!h) {
			count_lost_as(LOST_CAPACITY);
			return 0;
		}
	}
	if ((by & TCPRTT_BY_PROCESS) && !h->owner.pid && o.pid)
		h->owner = o;
	slot = log2_slot(srtt, TCPRTT_SLOTS);
	/* this CPU's copy: atomic only against a nested run on this CPU */
	__sync_fetch_and_add(&h->slots[slot & (TCPRTT_SLOTS - 1)], 1);
	__sync_fetch_and_add(&h->sum, srtt);
	__sync_fetch_and_add(&h->count, 1);
	return 0;
}

SEC("tp_btf/tcp_probe")
int BPF_PROG(tcprtt_probe__btf, struct sock *sk, const struct sk_buff *skb)
{
	return on_probe(sk, true);
}

SEC("raw_tp/tcp_probe")
int BPF_PROG(tcprtt_probe__raw, struct sock *sk, const struct sk_buff *skb)
{
	return on_probe(sk, false);
}

/* --by-process only (user space leaves them out otherwise): the socket-owner records, kept with the
 * sockets' state changes, and the refresh hooks of sockowner.bpf.h */
OWNER_UPKEEP_PROGS(tcprtt_set_state)
