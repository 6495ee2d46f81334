/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef SOCKRAY_TCPRTT_H
#define SOCKRAY_TCPRTT_H

#include "sockowner.h"

/* log2 slots of the smoothed RTT (libbpf-tools' MAX_SLOTS) */
#define TCPRTT_SLOTS 32

/* What a histogram is kept per (user space sets `by` from the flags; unset parts of the key stay 0). */
#define TCPRTT_BY_LADDR 1   /* -b: the socket's local address */
#define TCPRTT_BY_RADDR 2   /* -B: the socket's remote address */
#define TCPRTT_BY_RPORT 4   /* --by-rport: the remote port */
#define TCPRTT_BY_PROCESS 8 /* --by-process: the socket's owner (socket-owner component) */

struct tcprtt_key {
	__u32 pid;      /* --by-process: the owner's tgid; 0: not known */
	__u16 family;   /* with -b/-B: the socket's address family */
	__u16 rport;    /* --by-rport */
	__u8 laddr[16]; /* -b */
	__u8 raddr[16]; /* -B */
};

/* One histogram: per CPU in the kernel, summed by user space. */
struct tcprtt_hist {
	__u64 slots[TCPRTT_SLOTS]; /* srtt at each received segment, log2 (usecs, or msecs with -m) */
	__u64 sum;                 /* the same values summed (-e: the average) */
	__u64 count;
	struct sock_owner owner;   /* --by-process: the owner's name; pid 0: not known */
};

#endif
