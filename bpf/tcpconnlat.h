/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef SOCKRAY_TCPCONNLAT_H
#define SOCKRAY_TCPCONNLAT_H

#include "sockowner.h"

/* One active TCP open that completed its handshake: SYN_SENT -> ESTABLISHED. */
struct tcpconnlat_event {
	__u64 ts_ns;      /* bpf_ktime_get_ns() at ESTABLISHED */
	__u64 lat_ns;     /* CLOSE -> SYN_SENT until SYN_SENT -> ESTABLISHED */
	struct sock_owner owner; /* the process that called connect(), recorded at SYN_SENT */
	__u16 family;
	__u16 lport;
	__u16 dport;
	__u16 pad;
	__u8 saddr[16];
	__u8 daddr[16];
};

#endif
