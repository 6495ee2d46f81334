/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef SOCKRAY_TCPACCEPT_H
#define SOCKRAY_TCPACCEPT_H

/* One TCP connection a process took from a listening socket's accept queue. */
struct tcpaccept_event {
	__u64 ts_ns;        /* bpf_ktime_get_ns() when accept returned */
	__u32 pid;          /* tgid of the accepting process */
	__u32 tid;
	__u32 uid;
	__u32 backlog;      /* listener's accept queue length (sk_ack_backlog) after this accept */
	__u32 backlog_max;  /* listener's queue limit (sk_max_ack_backlog: listen()'s backlog, capped) */
	__u16 family;
	__u16 lport;
	__u16 rport;
	__u8 has_listener;  /* 0: the listening socket could not be found (backlog fields are 0) */
	__u8 pad;
	char comm[16];
	__u8 laddr[16];
	__u8 raddr[16];
};

#endif
