/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef SOCKRAY_SOLISTEN_H
#define SOCKRAY_SOLISTEN_H

/* One listen() call on a TCP socket, successful or not. */
struct solisten_event {
	__u64 ts_ns;      /* bpf_ktime_get_ns() when listen() returned */
	__u32 pid;        /* tgid of the calling process */
	__u32 uid;
	__u32 netns;      /* inode number of the socket's network namespace */
	__s32 backlog;    /* as passed to listen() */
	__s32 ret;        /* listen()'s return value: 0, or -errno */
	__u16 family;
	__u16 lport;      /* after listen(): the port the kernel picked for an unbound socket */
	char comm[16];
	__u8 laddr[16];
};

#endif
