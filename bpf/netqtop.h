/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef SOCKRAY_NETQTOP_H
#define SOCKRAY_NETQTOP_H

/* Packet-size buckets: BCC's five ([0, 64), [64, 512), [512, 2K), [2K, 16K), [16K, 64K)) and one more
 * for 64K and above (BIG TCP, GSO packets), which BCC leaves out of every bucket. */
#define NETQTOP_BUCKETS 6

#define NETQTOP_TX 0
#define NETQTOP_RX 1

/* One queue's counters on one CPU: an entry of a per-CPU array whose index is
 * direction * (queues + 1) + queue; index `queues` of each direction counts the packets of queue
 * indices beyond the ones the tool made room for (none are dropped). Counters only grow; user space
 * sums the CPUs every interval and prints differences. */
struct netqtop_queue {
	__u64 packets;
	__u64 bytes;                      /* frame lengths, link-layer header included */
	__u64 buckets[NETQTOP_BUCKETS];
};

#endif
