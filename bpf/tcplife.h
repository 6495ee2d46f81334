/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef SOCKRAY_TCPLIFE_H
#define SOCKRAY_TCPLIFE_H

#include "sockowner.h"

/* One TCP session that ended (state CLOSE), with its lifespan and byte counts. */
struct tcplife_event {
	__u64 skaddr;
	__u64 ts_ns;      /* bpf_ktime_get_ns() at close */
	__u64 span_ns;    /* from the first SYN_SENT/SYN_RECV/ESTABLISHED to CLOSE */
	__u64 tx_bytes;   /* payload bytes acked by the peer (tcp_sock.bytes_acked less SYN/FIN) */
	__u64 rx_bytes;   /* payload bytes received (tcp_sock.bytes_received less FIN) */
	struct sock_owner owner;
	__u16 family;
	__u16 lport;
	__u16 rport;
	__u16 pad;
	__u8 laddr[16];
	__u8 raddr[16];
};

#endif
