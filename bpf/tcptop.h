/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef SOCKRAY_TCPTOP_H
#define SOCKRAY_TCPTOP_H

/* One flow as tcptop (and tcpsubnet) count it: the process moving the bytes and the connection. */
struct tcptop_key {
	__u32 pid;        /* tgid of the task that sent or received */
	__u16 family;
	__u16 lport;      /* host order */
	__u16 rport;      /* host order */
	__u16 pad;
	__u8 laddr[16];
	__u8 raddr[16];
};

/* What one flow moved since its map was last read (payload bytes the calls returned; with --walk,
 * bpf/tcpwalk.bpf.c: bytes acked by the peer and received by TCP, no calls counted). */
struct tcptop_val {
	__u64 tx_bytes;
	__u64 rx_bytes;
	__u64 tx_calls;
	__u64 rx_calls;
	__u64 retrans_bytes; /* --walk: bytes the socket sent again (tcp_sock.bytes_retrans); 0 otherwise */
	__u32 uid;
	__u32 pad;
	char comm[16];   /* the thread that first moved bytes on the flow in the interval */
};

#endif
