/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef SOCKRAY_TCPTRACER_H
#define SOCKRAY_TCPTRACER_H

#include "sockowner.h"

/* BCC's event types: C, A, X */
#define TCPTRACER_CONNECT 1
#define TCPTRACER_ACCEPT 2
#define TCPTRACER_CLOSE 3

/* One connect, accept or close of an established TCP connection. saddr/sport are the local end,
 * daddr/dport the remote end, whatever the type (as BCC's tcptracer). */
struct tcptracer_event {
	__u64 ts_ns;      /* bpf_ktime_get_ns() at the event */
	struct sock_owner owner; /* pid 0: not known */
	__u32 kind;       /* TCPTRACER_CONNECT, _ACCEPT or _CLOSE */
	__u32 netns;      /* inode number of the socket's network namespace */
	__u16 family;
	__u16 sport;      /* host order */
	__u16 dport;      /* host order */
	__u16 pad;
	__u8 saddr[16];
	__u8 daddr[16];
};

#endif
