/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shared BPF pieces of every sockray tool: in-kernel filters (set by user space through .rodata before
 * load), the lost-event counter, and the ring-buffer reserve that counts what it could not take. */
#ifndef SOCKRAY_COMMON_BPF_H
#define SOCKRAY_COMMON_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define TASK_COMM_LEN 16

/* ---- filters, written by user space before load (see src/filter.rs) ---- */
const volatile __u32 filter_tgid = 0;         /* 0: any process */
const volatile __u8 filter_uid_on = 0;
const volatile __u32 filter_uid = 0;
const volatile __u16 filter_family = 0;       /* 0: any, AF_INET or AF_INET6 */
const volatile __u8 filter_lport_on = 0;      /* local ports: bit per port */
const volatile __u8 filter_lports[8192] = {};
const volatile __u8 filter_rport_on = 0;      /* remote ports: bit per port */
const volatile __u8 filter_rports[8192] = {};
const volatile __u64 filter_cgroup_id = 0;    /* SCOPE_CGROUP: this cgroup (v2 id) */
/* Which processes a tool watches by where they run: SCOPE_ANY; SCOPE_CGROUP (--cgroup PATH: one
 * cgroup, filter_cgroup_id); SCOPE_CGROUP_SET (--cgroupmap: the cgroup ids that are keys of BCC's pinned
 * map, cgroup_set); SCOPE_MNTNS_SET (--mntnsmap: the mount namespace ids that are keys of mntns_set).
 * The maps are the user's own pinned ones (user space reuses them before load), read live as BCC does. */
#define SCOPE_ANY 0
#define SCOPE_CGROUP 1
#define SCOPE_CGROUP_SET 2
#define SCOPE_MNTNS_SET 3
const volatile __u8 filter_scope = SCOPE_ANY;
/* sockray's own process: its socket-owner seeding walk holds file references for a moment, so a
 * close() racing with it can end in sockray; never record sockray as a socket's owner. */
const volatile __u32 self_tgid = 0;
/* The socket-owner component's slot table (bpf/sockowner.bpf.h): a mask on the slot index, all ones (every
 * slot) but in tests (SOCKRAY_SOCK_SLOTS, src/runtime.rs), which make sockets share a few slots. */
const volatile __u32 sock_slot_mask = 0xffffffff;
/* The socket-owner component keeps the records of sockets whose slot is taken in socket-local storage
 * (no ceiling, freed with the socket) instead of its hash map: set by user space when every program
 * that touches records is a typed (tp_btf) one (tracing programs may use socket-local storage since
 * Linux 5.11); see sock_store in bpf/sockowner.bpf.h. */
const volatile __u8 sock_storage_on = 0;

static __always_inline bool port_in(const volatile __u8 *bits, __u16 port)
{
	__u32 idx = port >> 3;

	/* Older verifiers (5.10) lose the bounds of a byte-swapped value, so the index is masked explicitly;
	 * the empty asm keeps clang from dropping the mask as redundant for a 16-bit port. */
	asm volatile("" : "+r"(idx));
	idx &= 8191;
	return bits[idx] & (1 << (port & 7));
}

static __always_inline bool family_ok(__u16 family)
{
	if (family != AF_INET && family != AF_INET6)
		return false;
	return !filter_family || filter_family == family;
}

static __always_inline bool ports_ok(__u16 lport, __u16 rport)
{
	if (filter_lport_on && !port_in(filter_lports, lport))
		return false;
	if (filter_rport_on && !port_in(filter_rports, rport))
		return false;
	return true;
}

static __always_inline bool tgid_ok(__u32 tgid)
{
	return !filter_tgid || filter_tgid == tgid;
}

static __always_inline bool uid_ok(__u32 uid)
{
	return !filter_uid_on || filter_uid == uid;
}

/* --cgroupmap/--mntnsmap: the user's pinned hash map (BCC's: keys u64 ids, values of any size) goes in
 * slot 0 after load; user space makes the template like it (src/filter.rs). A map of maps rather than
 * the user's map in place of one of ours: a libbpf skeleton knows its maps by name. */
struct scope_ids {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, __u64);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct scope_ids);
} scope_sets SEC(".maps");

/* The scope id of the current task (0 when no scope filter is set: the verifier drops the reads). */
static __always_inline __u64 scope_id_current(void)
{
	if (filter_scope == SCOPE_MNTNS_SET) {
		struct task_struct *t = (struct task_struct *)bpf_get_current_task();

		return BPF_CORE_READ(t, nsproxy, mnt_ns, ns.inum);
	}
	if (filter_scope != SCOPE_ANY)
		return bpf_get_current_cgroup_id();
	return 0;
}

/* The same of another task (the seeding walk's). */
static __always_inline __u64 scope_id_task(struct task_struct *t)
{
	if (filter_scope == SCOPE_MNTNS_SET)
		return BPF_CORE_READ(t, nsproxy, mnt_ns, ns.inum);
	if (filter_scope != SCOPE_ANY)
		return BPF_CORE_READ(t, cgroups, dfl_cgrp, kn, id);
	return 0;
}

/* Does a scope id (scope_id_current(), scope_id_task()) pass --cgroup, --cgroupmap or --mntnsmap? */
static __always_inline bool scope_ok(__u64 id)
{
	__u32 zero = 0;
	void *set;

	if (filter_scope == SCOPE_ANY)
		return true;
	if (filter_scope == SCOPE_CGROUP)
		return filter_cgroup_id == id;
	set = bpf_map_lookup_elem(&scope_sets, &zero);
	return set && bpf_map_lookup_elem(set, &id);
}

/* Per-socket state maps: entries are allocated when used (memory follows the number of live sockets) and
 * removed when the socket closes; room for this many live sockets. (The kernel allocates the bucket array
 * for max_entries at start: 262144 costs ~3 ms of start-up per map, 65536 under 1 ms.) */
#define SOCK_MAP_ENTRIES 65536

/* ---- events out, lost events counted ---- */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1024 * 1024);
} events SEC(".maps");

/* What could not be kept, per CPU; user space sums each slot at exit (src/runtime.rs):
 * LOST_RINGBUF, events the ring buffer could not take; LOST_CAPACITY, records a full map could not take
 * (a tool's own per-socket or per-thread maps; the socket-owner table counts its own, sockowner.bpf.h). */
#define LOST_RINGBUF 0
#define LOST_CAPACITY 1
/* Not a loss: runs of a tool's state program (SET_STATE_PROG), which user space sets against the
 * tracepoint's own count of state changes (a perf counter, src/runtime.rs UnseenCount): the changes no
 * program of ours ran for, nor the kernel counted as skipped. */
#define STATE_RUNS 2
/* Not a loss: runs the kernel skipped that a nested twin made in their place (see nest_rescue). */
#define LOST_RESCUED 3

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} lost_events SEC(".maps");

static __always_inline void count_lost_as(__u32 cause)
{
	__u64 key = cause; /* 8 bytes: its low 4 are the index (see slots_hdr() in sockowner.bpf.h) */
	__u64 *n = bpf_map_lookup_elem(&lost_events, &key);
	if (n)
		*n += 1;
}

static __always_inline void count_lost(void)
{
	count_lost_as(LOST_RINGBUF);
}

/* ---- nested runs: a twin makes the runs the kernel skips ----
 * The kernel runs a program at most once at a time per CPU: when a tracepoint fires in a softirq that
 * interrupted the same program (a state change in softirq while one in process context is being
 * handled, ~0.5% of the changes when 50,000 connections close at once), that run is skipped and only
 * counted (the program's recursion_misses). A twin, a second program on the same tracepoint with the
 * same handler, is not running then: it acts only while its primary is busy on its CPU (nest_busy, set
 * by the primary for the length of its run), which is exactly when the primary is being skipped, and
 * counts each such run in LOST_RESCUED; user space reports lost_skipped as the primary's misses less
 * the runs rescued (src/runtime.rs). Outside a nested run the twin only reads the flag and returns.
 * The twin carries its own copy of the handler, so its own stack: a tail call into the primary instead
 * (tried) ran the primary's code on the primary's per-CPU private stack (6.13+) under the interrupted
 * primary's run, and rows came out with another socket's fields. User space loads the twins in an
 * object of their own on a thread once the tool is attached (sharing every map), as they double the
 * verifier's work for the state handler (~5 ms of tcplife's start-up). Tracepoint programs run with
 * preemption off (inet_sock_set_state is not a faultable tracepoint): between a primary's entry and
 * exit only interrupts run on its CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} nest_busy SEC(".maps");

static __always_inline __u32 *nest_enter(void)
{
	__u32 zero = 0, *busy = bpf_map_lookup_elem(&nest_busy, &zero);

	if (busy)
		*busy = 1;
	return busy;
}

static __always_inline void nest_leave(__u32 *busy)
{
	if (busy)
		*busy = 0;
}

/* In a twin: is its primary busy on this CPU (so skipped for this run)? Counts the run rescued. */
static __always_inline bool nest_rescue(void)
{
	__u32 zero = 0, *busy = bpf_map_lookup_elem(&nest_busy, &zero);

	if (!busy || !*busy)
		return false;
	count_lost_as(LOST_RESCUED);
	return true;
}

/* A tool's inet_sock_set_state programs, for handler(sk, oldstate, newstate, direct) (direct: true in
 * tp_btf, plain loads; false in raw_tp, helper reads): `stem__btf` and `stem__raw`, one attach group,
 * each with its twin `stem_nested__btf`/`stem_nested__raw` (a group of its own, which takes the kind
 * its primary got). The primary counts its runs (STATE_RUNS) for the state changes that reach no
 * program at all (UnseenCount in src/runtime.rs). */
#define SET_STATE_PROG(sec, name, handler, direct, twin)                                                  \
	SEC(sec)                                                                                         \
	int BPF_PROG(name, const struct sock *sk, int oldstate, int newstate)                            \
	{                                                                                                \
		__u32 *busy;                                                                             \
                                                                                                         \
		if (twin) {                                                                              \
			if (nest_rescue())                                                               \
				handler(sk, oldstate, newstate, direct);                                 \
			return 0;                                                                        \
		}                                                                                        \
		count_lost_as(STATE_RUNS);                                                               \
		busy = nest_enter();                                                                     \
		handler(sk, oldstate, newstate, direct);                                                 \
		nest_leave(busy);                                                                        \
		return 0;                                                                                \
	}

#define SET_STATE_PROGS(stem, handler)                                                                    \
	SET_STATE_PROG("tp_btf/inet_sock_set_state", stem##__btf, handler, true, false)                  \
	SET_STATE_PROG("tp_btf/inet_sock_set_state", stem##_nested__btf, handler, true, true)            \
	SET_STATE_PROG("raw_tp/inet_sock_set_state", stem##__raw, handler, false, false)                 \
	SET_STATE_PROG("raw_tp/inet_sock_set_state", stem##_nested__raw, handler, false, true)

/* One more for key in a hash map of __u64 counters (-c tables); a key that finds no room is counted. */
static __always_inline void count_key(void *map, const void *key)
{
	__u64 one = 1, *n = bpf_map_lookup_elem(map, key);

	if (!n && !bpf_map_update_elem(map, key, &one, BPF_NOEXIST))
		return;
	if (!n) /* another CPU inserted the key first, or the table is full */
		n = bpf_map_lookup_elem(map, key);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		count_lost_as(LOST_CAPACITY);
}

/* A map update that must not fail silently: a record the map had no room for (-E2BIG, -ENOMEM) is
 * counted. For BPF_ANY updates (with BPF_NOEXIST, an existing key would count too). */
static __always_inline long map_update_counted(void *map, const void *key, const void *value, __u64 flags)
{
	long err = bpf_map_update_elem(map, key, value, flags);

	if (err)
		count_lost_as(LOST_CAPACITY);
	return err;
}

static __always_inline void *event_reserve(__u64 size)
{
	void *e = bpf_ringbuf_reserve(&events, size, 0);
	if (!e)
		count_lost();
	return e;
}

/* Submits without waking the reader, except once per EVENT_WAKEUP_BYTES of records: a wake-up per event
 * costs an irq_work and a cross-CPU IPI on the traced CPU (measured: ~20% fewer loopback connections
 * per second), and each forced wake-up queues an irq_work, a self-IPI (a VM exit in a guest, ~24 us on
 * our VMs). Under load the reader is woken ~15 times a second at 8,000 tcplife connections a second;
 * below a mark nothing wakes it, and it reads the ring on every poll timeout instead: each record reaches
 * the output within MAX_EVENT_DELAY (50 ms, src/runtime.rs) at any rate, a trickle included.
 * The record that wakes is the one that covers a 128 KiB boundary of the ring's address space: exactly
 * one record per boundary, whichever CPUs reserve them, with no helper call (a ring query is a call,
 * and with the kernel's return-thunk mitigations every call costs); the ring is a whole number of
 * such spans, so its wrap keeps the rhythm. The record's place is its address less the ring map's (a
 * difference of two pointers is the one arithmetic on them the verifier allows). */
#define EVENT_WAKEUP_BYTES (128 * 1024)

static __always_inline bool event_covers_mark(__u64 start, __u64 footprint)
{
	/* a multiple of EVENT_WAKEUP_BYTES in [start, start + footprint - 1]: the bits above the span's
	 * differ between start - 1 and the record's last byte */
	return ((start - 1) ^ (start + footprint - 1)) >= EVENT_WAKEUP_BYTES;
}

static __always_inline void event_submit_sized(void *e, __u64 size)
{
	/* what the record occupies in the ring: an 8-byte header, rounded up to 8 bytes */
	__u64 footprint = (size + 8 + 7) & ~7ULL;
	__u64 start = (__u64)((char *)e - (char *)&events) - 8;

	bpf_ringbuf_submit(e, event_covers_mark(start, footprint) ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

#define event_submit(e) event_submit_sized((e), sizeof(*(e)))

/* Drops a reserved record. Without BPF_RB_NO_WAKEUP a discard wakes the reader like a submit does (an
 * irq_work and a wake-up for a record it never sees): a filter that drops most events after reserving
 * cost 4x the BPF time of no filter at all (tcplife -p under a loopback connection flood). Filters are
 * better checked before reserving. */
static __always_inline void event_discard(void *e)
{
	bpf_ringbuf_discard(e, BPF_RB_NO_WAKEUP);
}

/* ---- socket addresses, read with CO-RE from struct sock ---- */
struct sk_tuple {
	__u16 family;
	__u16 lport; /* host order */
	__u16 rport; /* host order */
	__u8 laddr[16];
	__u8 raddr[16];
};

/* Local port, host order. From inet_sport, not skc_num: at TCP_CLOSE inet_put_port() has already
 * zeroed inet_num when inet_sock_set_state fires. tp: sk as a typed struct tcp_sock (sk_tcp_d(), tp_btf
 * programs: bpf_skc_to_tcp_sock(), Linux 5.9+; tp_btf programs need 5.5+ anyway and fall back to raw_tp
 * on kernels that refuse it), so the read is a plain load; NULL: a helper read. */
static __always_inline __u16 sk_lport_tp(const struct sock *sk, const struct tcp_sock *tp)
{
	if (tp)
		return bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport);
	/* through struct tcp_sock, the type the direct path relocates against anyway: one CO-RE type
	 * fewer to look up in vmlinux BTF at start-up (~1 ms) */
	return bpf_ntohs(BPF_CORE_READ((const struct tcp_sock *)sk, inet_conn.icsk_inet.inet_sport));
}

/* sk as a typed struct tcp_sock for plain loads of its fields when `direct`, else NULL (helper reads).
 * A helper call (and, with the kernel's return-thunk mitigations, a costly return): a program that needs
 * tcp_sock fields in several places takes it once and passes it on (the *_tp functions). */
static __always_inline struct tcp_sock *sk_tcp_d(const struct sock *sk, bool direct)
{
	return direct ? bpf_skc_to_tcp_sock((void *)sk) : NULL;
}

static __always_inline __u16 sk_lport_d(const struct sock *sk, bool direct)
{
	return sk_lport_tp(sk, sk_tcp_d(sk, direct));
}

static __always_inline __u16 sk_lport(const struct sock *sk)
{
	return sk_lport_d(sk, false);
}

/* Every field of struct sock is read through struct tcp_sock, which begins with it (same offset, same
 * instruction; also for a socket that is not TCP): libbpf then relocates all socket fields against one
 * vmlinux type, tcp_sock, instead of two, and each type relocated against costs it a walk over all of
 * vmlinux BTF's types (~1-2 ms of start-up). SK_D: a plain load (direct), SK_R: with the helper,
 * SK_R_INTO: BPF_CORE_READ_INTO. */
#define SK_TCP(s) ((struct tcp_sock *)(s))
#define SK_D(s, field) (SK_TCP(s)->inet_conn.icsk_inet.sk.field)
#define SK_R(s, field) BPF_CORE_READ(SK_TCP(s), inet_conn.icsk_inet.sk.field)
#define SK_R_INTO(dst, s, field) BPF_CORE_READ_INTO(dst, SK_TCP(s), inet_conn.icsk_inet.sk.field)

/* A field of struct sock: a plain load when `direct` (tp_btf/fentry programs, where the verifier knows
 * sk's BTF type and makes the load fault-safe: several times cheaper than a helper call), else
 * bpf_probe_read_kernel (raw_tp/kprobe/iterators). Every caller passes a constant, so only one branch is
 * compiled into each program. Fields of struct inet_sock/tcp_sock are always read with the helper: the
 * verifier types the pointer as struct sock and refuses loads past its end. */
#define SK_FIELD(direct, sk, field) ((direct) ? SK_D(sk, field) : SK_R(sk, field))

/* tp: sk_tcp_d(sk, direct) */
static __always_inline void read_sk_tuple_tp(const struct sock *sk, const struct tcp_sock *tp,
					     struct sk_tuple *t, bool direct)
{
	t->family = SK_FIELD(direct, sk, __sk_common.skc_family);
	t->lport = sk_lport_tp(sk, tp);
	t->rport = bpf_ntohs(SK_FIELD(direct, sk, __sk_common.skc_dport));
	if (direct) {
		if (t->family == AF_INET6) {
			__builtin_memcpy(t->laddr, SK_D(sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8), 16);
			__builtin_memcpy(t->raddr, SK_D(sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8), 16);
		} else {
			*(__u32 *)t->laddr = SK_D(sk, __sk_common.skc_rcv_saddr);
			*(__u32 *)t->raddr = SK_D(sk, __sk_common.skc_daddr);
		}
	} else if (t->family == AF_INET6) {
		SK_R_INTO(&t->laddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		SK_R_INTO(&t->raddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	} else {
		SK_R_INTO((__u32 *)t->laddr, sk, __sk_common.skc_rcv_saddr);
		SK_R_INTO((__u32 *)t->raddr, sk, __sk_common.skc_daddr);
	}
}

static __always_inline void read_sk_tuple_d(const struct sock *sk, struct sk_tuple *t, bool direct)
{
	read_sk_tuple_tp(sk, sk_tcp_d(sk, direct), t, direct);
}

/* Copies a tuple into an event struct with the usual family/lport/rport/laddr/raddr fields. */
#define EVENT_SET_TUPLE(e, t)                                      \
	do {                                                       \
		(e)->family = (t).family;                          \
		(e)->lport = (t).lport;                            \
		(e)->rport = (t).rport;                            \
		__builtin_memcpy((e)->laddr, (t).laddr, 16);       \
		__builtin_memcpy((e)->raddr, (t).raddr, 16);       \
	} while (0)

static __always_inline void read_sk_tuple(const struct sock *sk, struct sk_tuple *t)
{
	read_sk_tuple_d(sk, t, false);
}

static __always_inline __u32 sk_netns_d(const struct sock *sk, bool direct)
{
	/* the helper also when direct: see sk_net_ptr() in sockowner.bpf.h (pointer loads cost start-up) */
	return BPF_CORE_READ(SK_TCP(sk), inet_conn.icsk_inet.sk.__sk_common.skc_net.net, ns.inum);
}

static __always_inline __u32 sk_netns(const struct sock *sk)
{
	return sk_netns_d(sk, false);
}

/* The struct sock behind fd in the current task's fd table; NULL when fd is not an open socket.
 * Checked, so any fd a syscall was given may be passed: the file's private_data must be a struct socket
 * whose ->file points back to that file (true only for socket files). */
static __always_inline struct sock *sock_of_fd(long fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct file **fds = BPF_CORE_READ(task, files, fdt, fd);
	unsigned int max = BPF_CORE_READ(task, files, fdt, max_fds);
	struct file *file = NULL;
	struct socket *sock;

	if (fd < 0 || fd >= (long)max)
		return NULL;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	if (!file)
		return NULL;
	sock = BPF_CORE_READ(file, private_data);
	if (!sock || BPF_CORE_READ(sock, file) != file)
		return NULL;
	return BPF_CORE_READ(sock, sk);
}

#endif
