/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef SOCKRAY_SOFTIRQS_H
#define SOCKRAY_SOFTIRQS_H

/* softirq vectors kept (the kernel has NR_SOFTIRQS = 10: hi ... rcu; room for a few more) */
#define SOFTIRQS_VECS 16
/* log2 slots of a softirq's run time (libbpf-tools' MAX_SLOTS) */
#define SOFTIRQS_SLOTS 32

/* What is measured (user space sets `mode` from the flags). */
#define SOFTIRQS_TIME 0  /* total time per vector (and the count, at exit) */
#define SOFTIRQS_COUNT 1 /* -C: entries only, no timing (the exit hook is not attached) */
#define SOFTIRQS_DIST 2  /* -d: total time and a log2 histogram per vector */

/* One CPU's state and counters: the single entry of a per-CPU array, so that no CPU writes a cache line
 * another CPU reads or writes, and no update needs an atomic instruction. User space sums the CPUs (or
 * shows them side by side with --per-cpu); counters only grow, intervals are differences. */
struct softirqs_cpu {
	__u64 start_ns;                /* the running softirq's entry (0: none seen) */
	__u32 vec;                     /* its vector */
	__u32 _pad;
	__u64 unmatched;               /* exits whose entry was not seen: runs left out of the times */
	__u64 count[SOFTIRQS_VECS];    /* entries (-C), or completed runs (time modes) */
	__u64 time_ns[SOFTIRQS_VECS];  /* run time of the completed runs, ns */
	__u64 slots[SOFTIRQS_VECS][SOFTIRQS_SLOTS]; /* -d: run times, log2 (usecs, or nsecs with -N) */
};

#endif
