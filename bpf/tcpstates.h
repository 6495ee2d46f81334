/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef SOCKRAY_TCPSTATES_H
#define SOCKRAY_TCPSTATES_H

#include "sockowner.h"

/* One TCP state change (sock:inet_sock_set_state). */
struct tcpstates_event {
	__u64 skaddr;
	__u64 ts_ns;      /* bpf_ktime_get_ns() */
	__u64 delta_ns;   /* time spent in oldstate; 0 when the previous change was not seen */
	struct sock_owner owner;
	__u32 ctx_pid;    /* task on the CPU when the state changed (BCC's C-PID) */
	__u16 family;
	__u16 lport;
	__u16 rport;
	__u16 pad;
	__s32 oldstate;
	__s32 newstate;
	__u8 laddr[16];
	__u8 raddr[16];
};

#endif
