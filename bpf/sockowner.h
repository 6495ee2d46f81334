/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The process that owns a socket, as the socket-owner component records it (see sockowner.bpf.h). */
#ifndef SOCKRAY_SOCKOWNER_H
#define SOCKRAY_SOCKOWNER_H

struct sock_owner {
	__u32 pid;      /* tgid of the owning process; 0 when unknown */
	__u32 uid;
	__u64 scope;    /* for --cgroup/--cgroupmap: its cgroup v2 id; --mntnsmap: its mount namespace (scope_id_*) */
	char comm[16];
};

#endif
