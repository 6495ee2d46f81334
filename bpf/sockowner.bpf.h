/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Socket-owner attribution, shared by every tool whose events fire outside the owning process
 * (state changes, drops, retransmits and tcp_probe run in softirq or timer context, where
 * bpf_get_current_pid_tgid() names whichever task happened to be on the CPU).
 *
 * sock_owners maps a struct sock * to its record (struct sock_rec): the process that owns it, and what
 * was seen of the connection's life (when it began, who opened it, whether it sent its FIN), which is
 * what tcplife and tcpstates need as well: one map operation serves the owner and the tool. The owner is
 * written only where the kernel is known to run in the owner's own context:
 *   - connect():  CLOSE -> SYN_SENT (tcp_v4/v6_connect, process context);
 *   - listen():   CLOSE -> LISTEN (inet_listen); also recorded by (netns, port) in listen_owners;
 *   - close()/shutdown(): ESTABLISHED/SYN_RECV -> FIN_WAIT1 and CLOSE_WAIT -> LAST_ACK (tcp_close,
 *     tcp_shutdown: always the calling process);
 *   - socket reads (sock:sock_recv_length, Linux 6.3+), or else accept()
 *     (syscalls sys_exit_accept/accept4, the returned fd resolved to its socket);
 * and is seeded at start by an iter/task_file walk over every process's socket fds (so sockets opened
 * before the tool started are attributed too). A passively opened socket (LISTEN -> SYN_RECV, created in
 * softirq) inherits its listener's owner until its process reads it (or accept() returns it, on older
 * kernels) or closes it.
 *
 * A tool includes this header, takes the socket's key (sock_key_d()), calls owner_on_state_d() first in
 * its inet_sock_set_state handler, reads the record (sock_rec_of_d(), owner_resolve_d()), asks at TCP_CLOSE
 * whether a missing record was lost for want of room (sock_rec_lost()) and deletes it with
 * owner_forget_d(). */
#ifndef SOCKRAY_SOCKOWNER_BPF_H
#define SOCKRAY_SOCKOWNER_BPF_H

#include "common.bpf.h"
#include "sockowner.h"

/* Flags of a socket's record: what the component saw of its life. */
#define SOCK_ACTIVE_OPEN 1 /* it sent the SYN (CLOSE -> SYN_SENT) */
#define SOCK_FIN_SENT 2    /* it queued its FIN (-> FIN_WAIT1 or CLOSE_WAIT -> LAST_ACK) */
#define SOCK_OF_LISTENER 4 /* a passive child not yet given an owner: its listener's (lazy_listener) */
#define SOCK_SEEDED 8      /* recorded by the seeding walk: a socket that existed when the tool started */

/* What the component keeps per socket: one record, so that a tool's per-socket state costs no map
 * operations of its own (each hash map update allocates an element and each delete frees one; under a
 * loopback connection flood the map operations were ~half of the BPF time). */
struct sock_rec {
	struct sock_owner owner; /* pid 0: not known */
	__u64 born_ns;           /* bpf_ktime_get_ns() at SYN_SENT or SYN_RECV (tcplife: at ESTABLISHED when
				  * it missed the handshake); 0: began before the tool */
	__u64 tool_ns;           /* the tool's own (tcpstates: its last state change); 0 when created */
	__u32 flags;             /* SOCK_ACTIVE_OPEN, SOCK_FIN_SENT */
	__u32 pad;
};

/* Where records live: a direct-mapped table of slots in front of socket-local storage or a hash map.
 *  - sock_slots[slot_of(key)], when that slot holds the socket's key (the common case): an array
 *    lookup, which the verifier inlines; the record is written in place, never allocated or freed;
 *  - else, for a socket whose slot another socket holds: in typed (tp_btf) programs, when user space
 *    set sock_storage_on, the socket's own storage (sock_store: allocated with the record, freed with
 *    the socket, no ceiling: a server's hundreds of thousands of sockets all keep theirs); otherwise
 *    sock_owners, a hash map sized by user space from the machine (src/runtime.rs), whose records
 *    the seeding walk also writes (an iterator's sockets are not typed here). A record that finds no
 *    room is counted (`full`, then `lost` at the socket's end), never dropped silently.
 * Under a loopback connection flood (tcplife, 6.18 VM) the hash map alone cost 5.9 us of BPF per
 * connection, with the table 3.9: each hash insert allocates an element and each delete frees one.
 * 2^14 slots (1 MiB, zeroed at start-up: ~0.4 ms; 2^16 took 1.6) hold most sockets of a machine with
 * a few thousand; beyond that more records go to the hash map, as fast as before the table.
 *
 * A slot is claimed and released with atomic adds only (BPF_XADD, which Linux 5.10 has; compare-and-
 * exchange came in 5.12): a free slot's key is 0; a claim adds the socket's key and keeps the slot only
 * if the word then holds exactly that key, else it subtracts it again and uses the hash map; a release
 * subtracts it. The word is the sum of the claims present, and no sum of two or more kernel addresses
 * equals one of them, so a slot belongs to one socket at a time and a record is never shared. Two
 * claims racing for one free slot both fall back to the hash map at worst; for the few nanoseconds a
 * losing claim is in flight, the holder's record reads as absent.
 * Slot 0 is not a socket's but the table's header (struct sock_slots_hdr). */
struct sock_slot {
	__u64 key; /* sock_key_d() of the socket holding the slot; 0: free */
	struct sock_rec rec;
};

struct sock_slots_hdr {
	__u64 overflow; /* records that may be in the hash map (added on insert, subtracted on delete): with
			 * none, a slot miss costs no hash lookup */
	__u64 anchor;   /* the header's own address, once a tp_btf program has run: see sock_key_d() */
	__u64 full;     /* non-zero once a record could not be kept (the hash map full, or no memory) */
	__u64 lost;     /* sockets that ended without the record they should have had, while `full`: read by
			 * user space at exit as lost_capacity (sock_rec_lost()) */
};

#define SOCK_SLOT_BITS 14

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, (1 << SOCK_SLOT_BITS) + 1);
	__type(key, __u32);
	__type(value, struct sock_slot);
} sock_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, SOCK_MAP_ENTRIES); /* sized by user space before load */
	__type(key, __u64); /* sock_key_d() */
	__type(value, struct sock_rec);
} sock_owners SEC(".maps");

#ifndef SOCKOWNER_NO_HOOKS
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_rec);
} sock_store SEC(".maps");
#define SOCK_STORE (&sock_store)
#else
#define SOCK_STORE ((void *)0) /* the seeding walk writes no socket-local storage (see above) */
#endif

/* Socket-local storage in this program? `direct` is a constant (true in tp_btf programs only), so the
 * others never contain the helper calls; sock_storage_on is frozen read-only data, so where it is off
 * the verifier does not even look at them (Linux 5.10 allows them in no tracing program). */
#define STORE_ON(direct) ((direct) && sock_storage_on)

/* sk's record in its own storage; create: make one (zeroed) when it has none. NULL: none, or (create)
 * no memory. */
static __always_inline struct sock_rec *sock_store_get(const struct sock *sk, bool create)
{
	return bpf_sk_storage_get(SOCK_STORE, (void *)sk, 0, create ? BPF_SK_STORAGE_GET_F_CREATE : 0);
}

static __always_inline struct sock_slots_hdr *slots_hdr(void)
{
	/* the key is the low 4 bytes: an 8-byte zero is a constant to the verifier, where a 4-byte one
	 * leaves bytes it knows are zero in a stack slot other variables share later, and states that
	 * differ only there are walked again (tcplife 2,831 -> 2,576 instructions walked on 6.18) */
	__u64 zero = 0;

	return bpf_map_lookup_elem(&sock_slots, &zero);
}

/* The key of sk's record: its address, as a number. `direct` as for SK_FIELD: in a tp_btf program sk is
 * a typed pointer, and the verifier allows no arithmetic on it (the slot index is a hash of the address)
 * except the difference of two pointers; so the address is rebuilt as (sk - header) + the header's
 * address, which the header holds as a number (a pointer written to memory reads back as one).
 * Everywhere else (raw_tp arguments, sockets found through BPF_CORE_READ) sk is already a number. */
static __always_inline __u64 sock_key_d(const struct sock *sk, bool direct)
{
	struct sock_slots_hdr *h;
	volatile __u64 *anchor;
	__u64 base, off;

	if (!direct)
		return (__u64)sk;
	h = slots_hdr();
	if (!h)
		return ~0ULL; /* not reached: index 0 of an array map always exists */
	anchor = &h->anchor;
	base = *anchor;
	if (!base) {
		*anchor = (__u64)h;
		base = *anchor;
	}
	off = (__u64)sk - (__u64)h;
	barrier_var(off); /* keeps clang from adding base to the pointer first */
	return off + base;
}

static __always_inline struct sock_slot *slot_of(__u64 key)
{
	/* Fibonacci hashing of the address above its 64-byte alignment */
	__u32 idx = (((__u32)(key >> 6) * 0x9E3779B1u >> (32 - SOCK_SLOT_BITS)) & sock_slot_mask) + 1;

	return bpf_map_lookup_elem(&sock_slots, &idx);
}

/* The count of records that may be in the hash map. */
static __always_inline __u64 *overflow_count(void)
{
	struct sock_slots_hdr *h = slots_hdr();

	return h ? &h->overflow : NULL;
}

static __always_inline bool slot_claim(struct sock_slot *sl, __u64 key)
{
	volatile __u64 *word = &sl->key;

	if (*word)
		return false;
	__sync_fetch_and_add(&sl->key, key); /* result unused: BPF_XADD */
	if (*word == key)
		return true;
	__sync_fetch_and_add(&sl->key, -key);
	return false;
}

/* Has a record not been kept for want of room, since the tool started? */
static __always_inline bool records_full(void)
{
	struct sock_slots_hdr *h = slots_hdr();

	return h && *(volatile __u64 *)&h->full;
}

/* A record could not be kept: from now on, a socket that ends without its record is counted lost. */
static __always_inline void capacity_full(void)
{
	struct sock_slots_hdr *h = slots_hdr();

	if (h && !*(volatile __u64 *)&h->full)
		h->full = 1;
}

static __always_inline void overflow_insert(__u64 key, const struct sock_rec *r, __u64 flags)
{
	__u64 *n = overflow_count();

	if (bpf_map_update_elem(&sock_owners, &key, r, flags) == 0) {
		if (n)
			__sync_fetch_and_add(n, 1);
	} else {
		capacity_full();
	}
}

/* Deletes key's record from the hash map, if the hash map may have any. */
static __always_inline void overflow_delete(__u64 key)
{
	__u64 *n = overflow_count();

	if (n && *(volatile __u64 *)n && bpf_map_delete_elem(&sock_owners, &key) == 0)
		__sync_fetch_and_add(n, -1);
}

/* key's record in the hash map, if the hash map may have any. */
static __always_inline struct sock_rec *sock_rec_in_overflow(__u64 key)
{
	__u64 *n = overflow_count();

	if (!n || !*(volatile __u64 *)n)
		return NULL;
	return bpf_map_lookup_elem(&sock_owners, &key);
}

/* The record of sk (whose key is key), or NULL when the component has none. `direct` as for SK_FIELD. */
static __always_inline struct sock_rec *sock_rec_of_d(const struct sock *sk, __u64 key, bool direct)
{
	struct sock_slot *sl = slot_of(key);

	if (sl && sl->key == key)
		return &sl->rec;
	if (STORE_ON(direct)) {
		struct sock_rec *r = sock_store_get(sk, false);

		if (r)
			return r;
	}
	return sock_rec_in_overflow(key);
}

/* key's record in the slot table or the hash map (programs without typed sockets). */
static __always_inline struct sock_rec *sock_rec_of(__u64 key)
{
	return sock_rec_of_d(0, key, false);
}

/* A new record for key, replacing any. Where an existing record is to be kept, callers rewrite it in
 * place instead. Inlined, though each call site adds to the verifier's work (tcplife's state handler:
 * 843 -> ~2,000 instructions, ~3 ms more start-up): a global function is verified once, but Linux 5.10
 * takes no pointer arguments in global functions, and a variant with scalar arguments (the slot found
 * or claimed, then the record written by the caller) saved ~1.5 ms of start-up for ~0.3 us more per
 * connection. */
static __always_inline void sock_rec_create_d(const struct sock *sk, __u64 key, const struct sock_rec *r,
					       bool direct)
{
	struct sock_slot *sl = slot_of(key);
	struct sock_rec *cur;

	if (sl && sl->key == key) {
		sl->rec = *r;
		return;
	}
	if (sl && slot_claim(sl, key)) {
		sl->rec = *r;
		/* a record of this key from when the slot was taken would now be hidden; drop it */
		overflow_delete(key);
		return;
	}
	if (STORE_ON(direct)) {
		/* a seeded record of this socket in the hash map is shadowed from now on, and deleted with
		 * the socket's end (owner_forget_d) */
		cur = sock_store_get(sk, true);
		if (cur)
			*cur = *r;
		else
			capacity_full();
		return;
	}
	/* in the hash map: rewritten in place if there (an insert that replaces would count twice) */
	cur = sock_rec_in_overflow(key);
	if (cur) {
		*cur = *r;
		return;
	}
	overflow_insert(key, r, BPF_NOEXIST);
}

/* A record for key unless it has one (seeding, which races with the tool's own programs). */
static __always_inline void sock_rec_create_new(__u64 key, const struct sock_rec *r)
{
	struct sock_slot *sl = slot_of(key);

	if (!sl || sl->key == key || sock_rec_in_overflow(key))
		return;
	if (slot_claim(sl, key)) {
		sl->rec = *r;
		return;
	}
	overflow_insert(key, r, BPF_NOEXIST);
}

/* sk's record is no longer needed (the socket closed). */
static __always_inline void owner_forget_d(const struct sock *sk, __u64 key, bool direct)
{
	struct sock_slot *sl = slot_of(key);

	if (sl && sl->key == key) {
		__sync_fetch_and_add(&sl->key, -key);
		return;
	}
	if (STORE_ON(direct))
		bpf_sk_storage_delete(SOCK_STORE, (void *)sk);
	overflow_delete(key);
}

/* At a socket's CLOSE: is its record one that could not be kept? True, and counted (once per socket:
 * a socket closes once), when records have been lost for want of room (`full`) and this one is missing
 * or has no start (born_ns 0) though the seeding walk did not make it (SOCK_SEEDED) and it is no
 * listener: a session whose start the component would have seen. (Once `full`, a session that began
 * before the tool and was not seeded, such as one still in its listener's accept queue at start, is
 * counted too: it may be one of those lost, and is not shown as if its start were known.) */
static __always_inline bool sock_rec_lost(bool found, __u64 born_ns, __u32 flags, int oldstate)
{
	struct sock_slots_hdr *h;

	if (found && (born_ns || (flags & SOCK_SEEDED)))
		return false;
	if (oldstate == TCP_LISTEN || !records_full())
		return false;
	h = slots_hdr();
	if (h)
		__sync_fetch_and_add(&h->lost, 1);
	return true;
}

/* sock_rec_lost() for a record pointer (NULL: none). */
static __always_inline bool sock_rec_lost_at(const struct sock_rec *r, int oldstate)
{
	return sock_rec_lost(r != 0, r ? r->born_ns : 0, r ? r->flags : 0, oldstate);
}

/* A listener: its network namespace (the struct net's address, which identifies it as well as the inode
 * number and spares a CO-RE relocation against struct net at start-up) and port. */
struct listen_key {
	__u64 net;
	__u32 port;
	__u32 pad;
};

static __always_inline __u64 sk_net_ptr(const struct sock *sk, bool direct)
{
	/* Always the helper, also in tp_btf programs: a plain load of a pointer field from a BTF pointer
	 * makes the verifier (6.x) look up "<type>__safe_trusted" by name in vmlinux BTF, a linear scan
	 * (~1-2 ms of start-up per load site); this runs once per passive open only. */
	return (__u64)SK_R(sk, __sk_common.skc_net.net);
}

struct listen_owner {
	__u64 sk;
	struct sock_owner owner;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 4096);
	__type(key, struct listen_key);
	__type(value, struct listen_owner);
} listen_owners SEC(".maps");

/* The owner of a socket found in task's fd table. The uid is the socket's (sk_uid: its creator's), which
 * spares a CO-RE relocation against struct cred; the scope (cgroup or mount namespace) only when asked (sockseed_cg in bpf/sockseed.bpf.c). */
static __always_inline void owner_from_task(struct sock_owner *o, struct task_struct *task,
					    const struct sock *sk, bool with_scope)
{
	o->pid = BPF_CORE_READ(task, tgid);
	o->uid = SK_R(sk, sk_uid.val);
	if (with_scope)
		o->scope = scope_id_task(task);
	BPF_CORE_READ_STR_INTO(&o->comm, task, comm);
}

/* The current task as owner: pid is the tgid; comm is the thread's name (as BCC prints it); the scope
 * only for --cgroup/--cgroupmap/--mntnsmap (nothing prints it; the verifier drops the reads when off). */
static __always_inline void owner_from_current_id(struct sock_owner *o, __u64 pid_tgid)
{
	o->pid = pid_tgid >> 32;
	o->uid = (__u32)bpf_get_current_uid_gid();
	o->scope = scope_id_current();
	bpf_get_current_comm(&o->comm, sizeof(o->comm));
}

static __always_inline void owner_from_current(struct sock_owner *o)
{
	owner_from_current_id(o, bpf_get_current_pid_tgid());
}

/* The socket of key is owned by o: rewrite its record's owner in place, or create the record. */
static __always_inline void owner_store_d(const struct sock *sk, __u64 key, const struct sock_owner *o,
					   bool direct)
{
	struct sock_rec *cur = sock_rec_of_d(sk, key, direct);
	struct sock_rec r = {};

	if (cur) {
		cur->owner = *o;
		return;
	}
	r.owner = *o;
	sock_rec_create_d(sk, key, &r, direct);
}

/* The current task owns the socket of key. `begin`: the connection begins here (CLOSE -> SYN_SENT): a
 * fresh record, born now, with these flags; else `flags` are added to the record. Returns the record
 * when it existed already, NULL when it was created here (a caller that needs it looks it up). */
static __always_inline struct sock_rec *owner_set_current_life(const struct sock *sk, __u64 key, bool begin,
								__u32 flags, bool direct)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	bool self = pid_tgid >> 32 == self_tgid;
	struct sock_rec r = {}, *cur;

	if (begin) {
		/* written without looking: whatever was there (the seeded record of a socket not yet
		 * connected) belongs to no connection; the update's own lookup is the only one */
		r.born_ns = bpf_ktime_get_ns();
		r.flags = flags;
		if (!self)
			owner_from_current_id(&r.owner, pid_tgid);
		sock_rec_create_d(sk, key, &r, direct);
		return NULL;
	}
	cur = sock_rec_of_d(sk, key, direct);
	if (cur) {
		/* the common case on close() and I/O: the owner is already this process, nothing to write */
		if (cur->owner.pid != pid_tgid >> 32 && !self)
			owner_from_current_id(&cur->owner, pid_tgid);
		if (flags)
			cur->flags |= flags;
		return cur;
	}
	if (self)
		return NULL;
	owner_from_current_id(&r.owner, pid_tgid);
	r.flags = flags;
	sock_rec_create_d(sk, key, &r, direct);
	return NULL;
}

static __always_inline void owner_set_current_d(const struct sock *sk, __u64 key, bool direct)
{
	owner_set_current_life(sk, key, false, 0, direct);
}

/* A listener's key: its netns and port. Where the port comes from matters: tcp_set_state() fires the
 * tracepoint for CLOSE only after inet_put_port() has zeroed skc_num, while inet_sport keeps the port;
 * but skc_num is a plain load in tp_btf programs (inet_sport is past struct sock: a helper call), and
 * it is right at LISTEN and as a child is cloned from its listener (LISTEN -> SYN_RECV, before
 * inet_csk_clone_lock() sets the child's own fields; the port is the listener's anyway). */
static __always_inline struct listen_key listen_key_port(const struct sock *sk, __u16 port, bool direct)
{
	struct listen_key k = { .net = sk_net_ptr(sk, direct), .port = port };

	return k;
}

/* The key at LISTEN and at a child's LISTEN -> SYN_RECV (not at CLOSE: see above). */
static __always_inline struct listen_key listen_key_of(const struct sock *sk, bool direct)
{
	return listen_key_port(sk, SK_FIELD(direct, sk, __sk_common.skc_num), direct);
}

/* The owner recorded for the listener of key k, copied to out; out is left as it was when there is none. */
static __always_inline void listener_owner(const struct listen_key *k, struct sock_owner *out)
{
	struct listen_owner *lo = bpf_map_lookup_elem(&listen_owners, k);

	if (lo)
		*out = lo->owner;
}

static __always_inline void listener_record(const struct sock *sk, __u64 key, const struct sock_owner *o,
					    bool direct)
{
	struct listen_key k = listen_key_of(sk, direct);
	struct listen_owner lo = { .sk = key, .owner = *o };

	/* a listener not kept: its connections' owners are unknown ("?") until their processes name them */
	if (map_update_counted(&listen_owners, &k, &lo, BPF_ANY))
		capacity_full();
}

/* Keep the socket's record in step with a state change. Call first in every inet_sock_set_state
 * handler, with key = sock_key_d(sk, direct); `direct` as for SK_FIELD (true in tp_btf programs).
 * Returns sk's record when this change looked it up and it existed (FIN_WAIT1, LAST_ACK), else NULL: a
 * tool that needs the record in another case (SYN_SENT and SYN_RECV write theirs without looking) looks
 * it up with sock_rec_of(). The tool deletes the record at CLOSE (owner_forget). lazy_listener: see
 * TCP_SYN_RECV below (a tool that passes true completes owners with owner_of_listener()). */
static __always_inline struct sock_rec *owner_on_state_d(const struct sock *sk, __u64 key, int oldstate,
							 int newstate, bool direct, bool lazy_listener)
{
	switch (newstate) {
	case TCP_SYN_SENT:
		return owner_set_current_life(sk, key, true, SOCK_ACTIVE_OPEN, direct);
	case TCP_FIN_WAIT1:
	case TCP_LAST_ACK:
		return owner_set_current_life(sk, key, false, SOCK_FIN_SENT, direct);
	case TCP_LISTEN: {
		struct sock_owner o = {};
		owner_from_current(&o);
		owner_store_d(sk, key, &o, direct);
		listener_record(sk, key, &o, direct);
		return NULL;
	}
	case TCP_SYN_RECV:
		if (oldstate == TCP_LISTEN) {
			/* a child socket cloned from its listener, in softirq: a new connection, owned by its
			 * listener's owner until a read (or accept()) names the process that took it (replacing any
			 * stale record: a socket freed without a state change leaves its record behind).
			 * lazy_listener: a tool that needs the owner only at the end (tcplife) looks the
			 * listener up then (owner_of_listener), if nothing named the owner by then; most
			 * connections are read or closed by their process first: no lookup at all */
			struct sock_rec r = { .born_ns = bpf_ktime_get_ns() };

			if (lazy_listener) {
				r.flags = SOCK_OF_LISTENER;
			} else {
				struct listen_key k = listen_key_of(sk, direct);

				listener_owner(&k, &r.owner);
			}
			sock_rec_create_d(sk, key, &r, direct);
		}
		return NULL;
	case TCP_CLOSE:
		if (oldstate == TCP_LISTEN) {
			struct listen_key k = listen_key_port(sk, sk_lport_d(sk, direct), direct);
			struct listen_owner *lo = bpf_map_lookup_elem(&listen_owners, &k);
			if (lo && lo->sk == key)
				bpf_map_delete_elem(&listen_owners, &k);
		}
		return NULL;
	}
	return NULL;
}

/* Is sk held (lock_sock()) by the task on this CPU? Then this event runs in that task's own context:
 * a syscall on the socket (connect, listen, close, shutdown, read, write...), or at its end the packets
 * and timers the kernel deferred while the socket was held (release_sock(): the backlog, the deferred
 * timers), which run in the holder's context too. Softirq and timer handlers never change the state of
 * a held socket (they queue the packet to the backlog, or defer), so there `owned` is 0, and so it is
 * in the few places where process context changes the state of a socket it does not hold (the
 * orphan's end in tcp_close() after release_sock(), the children of a closed listener): those keep
 * the record's owner. One load of socket_lock_t.owned, the same on every kernel and architecture. */
static __always_inline bool sock_held_by_current(const struct sock *sk, bool direct)
{
	return SK_FIELD(direct, sk, sk_lock.owned);
}

/* A record's owner copied out of the record (from NULL: none, pid 0), so that the record's pointer (a
 * map value of one of three maps, a state of its own for the verifier each) need not live on. */
static __always_inline void owner_copy(struct sock_owner *dst, const struct sock_owner *src)
{
	if (src)
		*dst = *src;
	else
		__builtin_memset(dst, 0, sizeof(*dst));
}

/* The owner to print for an event on sk, whose record's owner is rec_owner (pid 0: none; see
 * owner_copy): the task holding the socket (see above: a worker that accepted from its parent's
 * listener and resets the connection in its own close(), without reading it, is that worker, whatever
 * the record says), else the recorded owner, else (only in a transition known to run in process
 * context) the current task; else pid 0 ("unknown"), never the task that merely happens to be on the
 * CPU. */
static __always_inline void owner_resolve_from_d(const struct sock *sk, const struct sock_owner *rec_owner,
						 int newstate, struct sock_owner *out, bool direct)
{
	/* not the tool itself: its seeding walk holds a reference to every socket's file for a moment,
	 * and a close() that drops its last reference then ends the socket in the walker's context */
	if (sock_held_by_current(sk, direct) && bpf_get_current_pid_tgid() >> 32 != self_tgid) {
		owner_from_current(out);
		return;
	}
	if (rec_owner->pid) {
		*out = *rec_owner;
		return;
	}
	if (newstate == TCP_SYN_SENT || newstate == TCP_LISTEN || newstate == TCP_FIN_WAIT1 ||
	    newstate == TCP_LAST_ACK) {
		owner_from_current(out);
		return;
	}
	__builtin_memset(out, 0, sizeof(*out));
}

/* owner_resolve_from_d() for the socket's record r (NULL: none). */
static __always_inline void owner_resolve_d(const struct sock *sk, const struct sock_rec *r, int newstate,
					    struct sock_owner *out, bool direct)
{
	struct sock_owner rec_owner;

	owner_copy(&rec_owner, r ? &r->owner : 0);
	owner_resolve_from_d(sk, &rec_owner, newstate, out, direct);
}

/* At CLOSE, for a tool that defers a passive child's listener lookup (lazy_listener): when o (from
 * owner_resolve_d()) names no one and the record's flags say nothing named the owner since the socket was
 * created, its listener's owner. lport: the socket's local port from inet_sport (skc_num is already zero
 * at CLOSE). */
static __always_inline void owner_of_listener(__u32 rec_flags, const struct sock *sk, __u16 lport,
					      struct sock_owner *o, bool direct)
{
	struct listen_key k;

	if (o->pid || !(rec_flags & SOCK_OF_LISTENER))
		return;
	k = listen_key_port(sk, lport, direct);
	listener_owner(&k, o);
}

/* The kernel's counters count sequence numbers: bytes_acked includes our SYN (active open) and our FIN
 * once acked; bytes_received includes the peer's FIN. Take those out so TX/RX are payload bytes
 * (tcplife; tcptop --walk). flags: the socket's record's (SOCK_ACTIVE_OPEN, SOCK_FIN_SENT).
 * btp: sk_tcp_d(sk, direct) (NULL: helper reads). */
static __always_inline void payload_bytes(const struct sock *sk, const struct tcp_sock *btp, __u32 flags,
					  __u64 *tx, __u64 *rx)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;
	__u64 acked, received;
	__u32 snd_una, write_seq;
	unsigned long sk_flags;

	if (btp) {
		/* typed pointer: plain loads */
		acked = btp->bytes_acked;
		received = btp->bytes_received;
		snd_una = btp->snd_una;
		write_seq = btp->write_seq;
		sk_flags = btp->inet_conn.icsk_inet.sk.__sk_common.skc_flags;
	} else {
		acked = BPF_CORE_READ(tp, bytes_acked);
		received = BPF_CORE_READ(tp, bytes_received);
		snd_una = BPF_CORE_READ(tp, snd_una);
		write_seq = BPF_CORE_READ(tp, write_seq);
		sk_flags = SK_R(sk, __sk_common.skc_flags);
	}
	if ((flags & SOCK_ACTIVE_OPEN) && acked)
		acked--;
	if ((flags & SOCK_FIN_SENT) && acked && snd_una == write_seq)
		acked--;
	/* tcp_fin() sets SOCK_DONE when the peer's FIN arrives (enum sock_flags: SOCK_DEAD, SOCK_DONE, ...;
	 * unchanged since Linux 2.6, so a constant rather than a CO-RE enum relocation) */
	if ((sk_flags & (1UL << 1)) && received)
		received--;
	*tx = acked;
	*rx = received;
}

/* Does an owner pass the process filters (-p, -u, --cgroup, --cgroupmap, --mntnsmap)? */
static __always_inline bool owner_ok(const struct sock_owner *o)
{
	return tgid_ok(o->pid) && uid_ok(o->uid) && scope_ok(o->scope);
}

/* ---- accept(): the returned fd names the socket the calling process now owns ---- */
static __always_inline int owner_on_accept(long ret)
{
	struct sock *sk;

	if (ret < 0)
		return 0;
	sk = sock_of_fd(ret);
	if (sk)
		owner_set_current_d(sk, sock_key_d(sk, false), false);
	return 0;
}

/* The classic syscall-exit tracepoint record: 8-byte common header, syscall number, return value. Its
 * layout is ABI (see the tracepoint's format file) and has not changed since syscall tracepoints exist,
 * so it is declared here rather than relocated against vmlinux's trace_event_raw_sys_exit. */
struct syscall_exit_record {
	__u64 common;
	long nr;
	long ret;
};

/* Keeping the owner right after accept() (a pre-forked worker accepts from its parent's listener; a
 * socket passed to another process): two ways, alternatives for the attach layer (src/attach.rs).
 *  - Linux 6.3+: sock:sock_recv_length, which runs in the process doing the I/O, for socket reads only.
 *    Reads, not writes too: the hook runs on every recv of every socket on the machine, a tax per I/O
 *    (~0.2-0.3 us in our 6.18 guest) that BCC's tools do not have; a server reads what it accepted (banner
 *    protocols such as SSH's read right after their first write), and until the owner reads or closes
 *    (close() and shutdown() name it in any case, see owner_on_state_d) the socket is its listener's
 *    owner's: only a connection reset or timed out before the new owner's first read is shown with the
 *    process that listened. (Tracing sends too cost 0.2-0.3% of a loopback connection flood.)
 *  - older kernels: syscalls:sys_exit_accept4 and sys_exit_accept, together. Enabling any syscall
 *    tracepoint puts every syscall of every task on the tracing slow path, a cost the whole machine pays
 *    (measured: several percent of loopback connection rate), hence the preference above. */
static __always_inline int owner_on_io(const struct sock *sk)
{
	if (SK_D(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	if (SK_D(sk, __sk_common.skc_family) != AF_INET && SK_D(sk, __sk_common.skc_family) != AF_INET6)
		return 0;
	/* a read of a closed socket (after a reset, before connect) must not make a record: its CLOSE,
	 * which deletes records, has passed or is not due */
	if (SK_D(sk, __sk_common.skc_state) == TCP_CLOSE)
		return 0;
	owner_set_current_d(sk, sock_key_d(sk, true), true);
	return 0;
}

#ifndef SOCKOWNER_NO_HOOKS
/* For a tool whose state changes only keep the socket-owner records (its events come from other hooks):
 * created, kept and deleted with the sockets' state changes. */
static __always_inline void owner_upkeep_on_state(const struct sock *sk, int oldstate, int newstate, bool direct)
{
	struct sock_rec *rec;
	__u64 key;

	if (SK_FIELD(direct, sk, sk_protocol) != IPPROTO_TCP)
		return;
	key = sock_key_d(sk, direct);
	owner_on_state_d(sk, key, oldstate, newstate, direct, false);
	if (newstate == TCP_CLOSE) {
		rec = sock_rec_of_d(sk, key, direct);
		sock_rec_lost_at(rec, oldstate);
		owner_forget_d(sk, key, direct);
	}
}

/* That tool's inet_sock_set_state programs. */
#define OWNER_UPKEEP_PROGS(stem) SET_STATE_PROGS(stem, owner_upkeep_on_state)

SEC("tp_btf/sock_recv_length")
int BPF_PROG(sockowner_refresh__recv, struct sock *sk, int ret, int flags)
{
	return owner_on_io(sk);
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int sockowner_refresh__accept4(struct syscall_exit_record *ctx)
{
	return owner_on_accept(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int sockowner_refresh__accept(struct syscall_exit_record *ctx)
{
	return owner_on_accept(ctx->ret);
}

/* Seeding (every TCP socket held by a process when the tool starts) is a BPF object of its own,
 * bpf/sockseed.bpf.c, loaded in parallel with the tool's (src/runtime.rs), sharing these maps. */

#endif /* SOCKOWNER_NO_HOOKS */

#endif
