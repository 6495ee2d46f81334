/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef SOCKRAY_TCPDROP_H
#define SOCKRAY_TCPDROP_H

#include "sockowner.h"

/* reason of a drop on a kernel whose skb:kfree_skb has no reason argument (before Linux 5.17) */
#define TCPDROP_NO_REASON 0xffffffff
/* drop reasons the in-kernel filter keeps a bit for (reason_bits); the numbers above it (the kernel's
 * subsystem drop reasons, SKB_DROP_REASON_SUBSYS_MASK) pass when reason_high_ok is set */
#define TCPDROP_REASON_BITS 512

/* One TCP packet the kernel dropped (skb:kfree_skb). Addresses and ports are the packet's own, as
 * BCC prints them: source > destination. */
struct tcpdrop_event {
	__u64 ts_ns;      /* bpf_ktime_get_ns() */
	__u64 skaddr;     /* the socket the packet belonged to (rx_sk, else skb->sk); 0: none */
	__u64 location;   /* where the kernel freed it (kfree_skb's caller) */
	struct sock_owner owner; /* the socket's owner; pid 0: none or not known */
	__s32 stack_id;   /* in `stacks`; negative: not taken (--no-stack) or lost (the map had no room) */
	__u32 reason;     /* enum skb_drop_reason of this kernel; TCPDROP_NO_REASON: none on this kernel */
	__u16 family;
	__u16 sport;      /* host order */
	__u16 dport;
	__u8 state;       /* the socket's TCP state; 0: no socket */
	__u8 tcpflags;    /* the TCP header's flags byte */
	__u8 saddr[16];
	__u8 daddr[16];
};

#endif
