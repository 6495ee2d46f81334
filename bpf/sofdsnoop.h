/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef SOCKRAY_SOFDSNOOP_H
#define SOCKRAY_SOFDSNOOP_H

#define SOFD_SEND 0
#define SOFD_RECV 1

/* path components kept per fd (the last one first; a mount crossed takes an empty one), and bytes of
 * each (NUL included) */
#define SOFD_PATH_DEPTH 16
#define SOFD_NAME_LEN 64

/* flags */
#define SOFD_PATH_FULL 1 /* comps[] reach the root: the path is whole */
#define SOFD_DELETED 2   /* the file was unlinked (as /proc's " (deleted)") */

/* One path component, SOFD_NAME_LEN bytes read as one string: two halves only because the generated
 * Rust type derives Default, which Rust arrays have up to 32 elements. */
struct sofd_comp {
	char head[SOFD_NAME_LEN / 2];
	char tail[SOFD_NAME_LEN / 2];
};

/* One file descriptor passed in an SCM_RIGHTS control message, sent or received. */
struct sofdsnoop_event {
	__u64 ts_ns;     /* bpf_ktime_get_ns() when the sendmsg()/recvmsg() returned */
	__u64 sock_ino;  /* inode number of the Unix socket it went through (socket:[ino]) */
	__u64 ino;       /* inode number of what the fd refers to */
	__u32 pid;       /* tgid */
	__u32 tid;
	__u32 uid;
	__s32 sock_fd;   /* the socket's fd in this process */
	__s32 fd;        /* the passed fd, as the process sees it: the sender's on SEND, the new one on RECV */
	__u32 magic;     /* superblock magic of the fd's file system; 0: no open file at that fd */
	__u16 mode;      /* the inode's i_mode */
	__u8 action;     /* SOFD_SEND or SOFD_RECV */
	__u8 flags;      /* SOFD_PATH_FULL, SOFD_DELETED */
	__u16 index;     /* this fd's place among the fds of its control message (0-based) */
	__u16 count;     /* fds in that control message */
	__u16 depth;     /* path components in comps[] */
	__u16 pad;
	char comm[16];
	struct sofd_comp comps[SOFD_PATH_DEPTH]; /* the path, last component first */
};

#endif
