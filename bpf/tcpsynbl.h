/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef SOCKRAY_TCPSYNBL_H
#define SOCKRAY_TCPSYNBL_H

#include "sockowner.h"

/* log2 slots of the accept-queue length (libbpf-tools' MAX_SLOTS) */
#define TCPSYNBL_SLOTS 32

/* One histogram per listener and backlog_max (BCC and libbpf-tools key on backlog_max alone). */
struct tcpsynbl_key {
	__u32 netns;       /* the listener's network namespace (inode number) */
	__u32 backlog_max; /* sk_max_ack_backlog: listen()'s backlog, capped by net.core.somaxconn */
	__u16 family;
	__u16 lport;
	__u32 pad;
	__u8 laddr[16];    /* the address the listener is bound to (0.0.0.0 / ::: any) */
};

struct tcpsynbl_hist {
	__u64 slots[TCPSYNBL_SLOTS]; /* sk_ack_backlog at each new connection or dropped handshake, log2 */
	__u64 overflows;             /* of those, handshakes the kernel dropped for a full accept queue */
	struct sock_owner owner;     /* the listener's (the process that called listen()); pid 0: unknown */
};

#endif
