/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef SOCKRAY_TCPRETRANS_H
#define SOCKRAY_TCPRETRANS_H

#include "sockowner.h"

/* What was sent again (BCC's T column: R, L; S is sockray's). */
#define TCPRETRANS_RETRANSMIT 1 /* tcp:tcp_retransmit_skb: a segment (data, SYN or FIN) sent again */
#define TCPRETRANS_TLP 2        /* a tail loss probe (tcp_send_loss_probe, -l: fentry/kprobe only) */
#define TCPRETRANS_SYNACK 3     /* tcp:tcp_retransmit_synack: a listener's SYN-ACK sent again */

/* One retransmit. */
struct tcpretrans_event {
	__u64 skaddr;     /* the socket (for a SYN-ACK: the request socket) */
	__u64 ts_ns;      /* bpf_ktime_get_ns() */
	struct sock_owner owner;
	__u32 seq;        /* the segment's first sequence number (SYN-ACK: our ISN; TLP: 0, as BCC) */
	__u16 family;
	__u16 lport;
	__u16 rport;
	__u8 rtype;       /* TCPRETRANS_* */
	__u8 state;       /* the socket's TCP state (SYN-ACK: the request's, NEW_SYN_RECV) */
	__u8 ca_state;    /* the sender's congestion state (icsk_ca_state): 4 = Loss (after a timeout),
			   * 3 = Recovery (fast retransmit); 0xff: none (SYN-ACK) */
	__u8 pad[7];
	__u8 laddr[16];
	__u8 raddr[16];
};

/* -c: retransmits counted in the kernel per flow. */
struct tcpretrans_count_key {
	__u16 family;
	__u16 lport;
	__u16 rport;
	__u16 pad;
	__u8 laddr[16];
	__u8 raddr[16];
};

#endif
