/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef SOCKRAY_TCPCONG_H
#define SOCKRAY_TCPCONG_H

#include "sockowner.h"

/* The congestion states of a TCP socket (enum tcp_ca_state: TCP_CA_Open .. TCP_CA_Loss) */
#define TCPCONG_STATES 5
/* log2 slots of each state's histogram (-d) */
#define TCPCONG_SLOTS 32

/* One connection as the kernel keeps it (map `conns`, keyed by the socket's address) and, once it has
 * closed, as it is sent to user space (ring buffer, closed = 1). Times are bpf_ktime_get_ns(). */
struct tcpcong_conn {
	__u64 seq;                     /* odd while a program writes the record: user space reads again */
	__u64 sk;                      /* the socket's key (its address) */
	__u64 first_ns;                /* when the tool first saw the connection (established, or mid-life) */
	__u64 since_ns;                /* when its current state began (or was first seen); closed: its end */
	__u64 dur_ns[TCPCONG_STATES];  /* time spent in each state: periods that ended */
	__u64 changes;                 /* state changes seen */
	struct sock_owner owner;       /* pid 0: not known */
	__u32 state;                   /* the state it is in (TCP_CA_*) */
	__u32 closed;                  /* 1: the connection ended at since_ns */
	__u16 family;
	__u16 lport;                   /* host order */
	__u16 rport;                   /* host order */
	__u16 pad;
	__u8 laddr[16];
	__u8 raddr[16];
};

/* -d: log2 histograms of the periods each state lasted (msecs, or usecs with -u), per CPU */
struct tcpcong_hist {
	__u64 slots[TCPCONG_STATES * TCPCONG_SLOTS];
};

#endif
