/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef SOCKRAY_TCPCONNECT_H
#define SOCKRAY_TCPCONNECT_H

#include "sockowner.h"

/* Records in the ring buffer start with their kind. */
#define TCPCONNECT_KIND_CONNECT 1
#define TCPCONNECT_KIND_DNS 2

/* ret_known: 1 when ret is connect(2)'s return value; 0 when the event was taken at SYN_SENT (no
 * syscall tracepoints, or the SYN was sent outside connect(2): TCP Fast Open sendmsg, io_uring, kernel
 * sockets); lport is then 0 (the kernel picks the port right after that transition). */
struct tcpconnect_event {
	__u32 kind;       /* TCPCONNECT_KIND_CONNECT */
	__s32 ret;        /* connect(2) return value: 0, -EINPROGRESS, -ECONNREFUSED, ... */
	__u64 ts_ns;      /* bpf_ktime_get_ns() at CLOSE -> SYN_SENT */
	struct sock_owner owner;
	__u16 family;
	__u16 lport;
	__u16 dport;
	__u8 ret_known;
	__u8 pad;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* -c: connects counted in the kernel per (source address, destination address, destination port). */
struct tcpconnect_count_key {
	__u16 family;
	__u16 dport;
	__u32 pad;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* -d: a UDP payload received from port 53 (a DNS answer, parsed in user space). */
#define TCPCONNECT_DNS_MAX 512
struct tcpconnect_dns_event {
	__u32 kind;       /* TCPCONNECT_KIND_DNS */
	__u32 len;        /* bytes in data */
	__u64 ts_ns;
	__u8 data[TCPCONNECT_DNS_MAX];
};

#endif
