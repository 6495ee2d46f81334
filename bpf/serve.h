/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* sockray serve: the counters it keeps in the kernel, read by user space at each scrape. */
#ifndef SOCKRAY_SERVE_H
#define SOCKRAY_SERVE_H

/* role of a label set: which end of the connections its owner is */
#define SERVE_ROLE_CLIENT 0 /* connect(): port is the remote (service) port */
#define SERVE_ROLE_SERVER 1 /* accepted: port is the local (listening) port */
#define SERVE_ROLE_OTHER 2  /* the series every label set beyond the budget is folded into */

/* why a connect() failed (SYN_SENT -> CLOSE), from the socket's error */
#define SERVE_FAIL_REFUSED 0     /* ECONNREFUSED: the peer answered with a reset */
#define SERVE_FAIL_TIMED_OUT 1   /* ETIMEDOUT: no answer to the SYNs */
#define SERVE_FAIL_UNREACHABLE 2 /* EHOSTUNREACH, ENETUNREACH: an ICMP error */
#define SERVE_FAIL_OTHER 3       /* anything else (the process gave up: no error) */
#define SERVE_FAIL_KINDS 4

/* what kind of retransmit, where the kernel tells: the congestion state at the time */
#define SERVE_RETRANS_TIMEOUT 0 /* TCP_CA_Loss: the retransmit timer fired */
#define SERVE_RETRANS_FAST 1    /* TCP_CA_Recovery: fast retransmit (duplicate ACKs, SACK) */
#define SERVE_RETRANS_OTHER 2   /* Open, Disorder, CWR */
#define SERVE_RETRANS_SYNACK 3  /* a listener's SYN-ACK sent again */
#define SERVE_RETRANS_KINDS 4

/* connect latency: log2 of microseconds, slot i counts [2^i, 2^(i+1)) us (0 and 1 in slot 0) */
#define SERVE_LAT_SLOTS 27 /* the last slot takes 2^26 us (67 s) and above */
#define SERVE_LAT_ARRAY 32 /* room for an index masked with 31 (Linux 5.10's verifier needs the mask) */

struct serve_key {
	char comm[16]; /* the owner's name; empty when not known */
	__u16 port;
	__u8 role;     /* SERVE_ROLE_* */
	__u8 pad[5];
};

struct serve_val {
	__u64 opened;                        /* connections established (connect() or accepted) */
	__u64 failed[SERVE_FAIL_KINDS];      /* connect() failures by kind */
	__u64 closed;                        /* sessions that ended, whose bytes follow */
	__u64 tx_bytes;                      /* payload bytes acknowledged by the peer, of ended sessions */
	__u64 rx_bytes;                      /* payload bytes received, of ended sessions */
	__u64 retrans[SERVE_RETRANS_KINDS];  /* segments sent again, by kind */
	__u64 lat_sum_ns;                    /* connect latency: sum */
	__u64 lat_slots[SERVE_LAT_ARRAY];    /* connect latency: log2 histogram of microseconds (SERVE_LAT_SLOTS used) */
};

struct serve_drop_key {
	char comm[16]; /* the socket's owner; empty: no socket, or not known */
	__u16 port;    /* the socket's service port as in serve_key; 0: no socket */
	__u8 role;     /* SERVE_ROLE_* */
	__u8 pad;
	__u32 reason;  /* enum skb_drop_reason; SERVE_NO_REASON where the kernel gives none */
};

#define SERVE_NO_REASON 0xffffffff
#define SERVE_DROP_REASONS 512 /* reasons counted by number in other_drops */

/* index of the counters in the array map `serve_stats` */
#define SERVE_FOLDED_SETS 0  /* events counted in the `other` series: label sets beyond the budget */
#define SERVE_FOLDED_DROPS 1
#define SERVE_STATS 2

#endif
