// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tcpconnect: one line per active TCP open (every connect that reached SYN_SENT), with the connecting
 * process, the addresses, the local port and connect(2)'s result.
 *
 * sock:inet_sock_set_state CLOSE -> SYN_SENT runs inside tcp_v4/v6_connect(), in the connecting task,
 * but before the kernel picks the local port. So the socket is stashed per thread at SYN_SENT and the
 * event is sent from syscalls:sys_exit_connect (same thread, port assigned, result known). The tuple is
 * read at SYN_SENT: a blocking connect that fails has been disconnected (addresses zeroed) by the time
 * it returns; the local port (inet_sport) survives that. A SYN_SENT outside connect(2) (TCP Fast Open
 * sendmsg, io_uring, kernel sockets) or without syscall tracepoints is sent at once, with local port 0. */
#include "common.bpf.h"
#include "sockowner.h"
#include "tcpconnect.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* put the record types into BTF, so the skeleton carries them to Rust */
struct tcpconnect_event _tcpconnect_event = {};
struct tcpconnect_count_key _tcpconnect_count_key = {};
struct tcpconnect_dns_event _tcpconnect_dns_event = {};

#define IPPROTO_UDP 17
#define EADDRNOTAVAIL 99
#define PF_IO_WORKER 0x00000010
#define PF_KTHREAD 0x00200000

/* set by user space before load */
const volatile __u8 emit_at_syn_sent = 0; /* 1: no syscall tracepoints, send at SYN_SENT */
const volatile __u8 count_mode = 0;       /* 1: -c, count in conn_counts instead of sending */
const volatile __u8 dns_on = 0;           /* 1: -d, send DNS answers too */

/* A connect(2) in progress in this thread (key: pid_tgid); sk 0 until its socket reached SYN_SENT. */
struct pending {
	__u64 sk;
	__u64 ts_ns;
	struct sock_owner owner;
	struct sk_tuple t;
};

/* Threads inside connect() at once. A plain hash, not an LRU: an LRU would make room by evicting the
 * connect() in progress longest, whose row would then vanish at its exit; when this one is full, a
 * connect() that found no room is shown at its SYN_SENT (the one thing missing: connect()'s return). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct pending);
} connecting SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tcpconnect_count_key);
	__type(value, __u64);
} conn_counts SEC(".maps");

static __always_inline void owner_current(struct sock_owner *o)
{
	o->pid = bpf_get_current_pid_tgid() >> 32;
	o->uid = (__u32)bpf_get_current_uid_gid();
	o->scope = scope_id_current();
	bpf_get_current_comm(&o->comm, sizeof(o->comm));
}

static __always_inline void emit(__u64 ts, const struct sock_owner *o, const struct sk_tuple *t, __u16 lport,
				 long ret, __u8 ret_known)
{
	struct tcpconnect_event *e;

	if (count_mode) {
		struct tcpconnect_count_key k = {};

		k.family = t->family;
		k.dport = t->rport;
		__builtin_memcpy(k.saddr, t->laddr, 16);
		__builtin_memcpy(k.daddr, t->raddr, 16);
		count_key(&conn_counts, &k);
		return;
	}
	e = event_reserve(sizeof(*e));
	if (!e)
		return;
	e->kind = TCPCONNECT_KIND_CONNECT;
	e->ret = ret;
	e->ts_ns = ts;
	e->owner = *o;
	e->family = t->family;
	e->lport = lport;
	e->dport = t->rport;
	e->ret_known = ret_known;
	e->pad = 0;
	__builtin_memcpy(e->saddr, t->laddr, 16);
	__builtin_memcpy(e->daddr, t->raddr, 16);
	event_submit(e);
}

static __always_inline int handle_set_state(const struct sock *sk, int oldstate, int newstate)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct sock_owner o = {};
	struct sk_tuple t = {};
	struct pending *p;

	if (oldstate != TCP_CLOSE || newstate != TCP_SYN_SENT)
		return 0;
	if (SK_R(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	read_sk_tuple(sk, &t);
	if (!family_ok(t.family) || !ports_ok(t.lport, t.rport))
		return 0;
	owner_current(&o);
	if (!tgid_ok(o.pid) || !uid_ok(o.uid) || !scope_ok(o.scope))
		return 0;

	p = emit_at_syn_sent ? NULL : bpf_map_lookup_elem(&connecting, &id);
	if (p && !p->sk) {
		p->sk = (__u64)sk;
		p->ts_ns = bpf_ktime_get_ns();
		p->owner = o;
		p->t = t;
		return 0;
	}
	emit(bpf_ktime_get_ns(), &o, &t, t.lport, 0, 0);
	return 0;
}

/* the handler reads with BPF_CORE_READ in both kinds of program */
#define handle_set_state_d(sk, oldstate, newstate, direct) handle_set_state(sk, oldstate, newstate)
SET_STATE_PROGS(tcpconnect_set_state, handle_set_state_d)

/* Marks "this thread is in connect(2)": a SYN_SENT while the mark is there waits for the exit. */
SEC("tracepoint/syscalls/sys_enter_connect")
int opt_enter_connect(struct trace_event_raw_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct pending p = {};

	if (emit_at_syn_sent)
		return 0;
	bpf_map_update_elem(&connecting, &id, &p, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int opt_exit_connect(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct pending *p;
	long ret = ctx->ret;
	__u16 lport;

	if (emit_at_syn_sent)
		return 0;
	p = bpf_map_lookup_elem(&connecting, &id);
	if (!p)
		return 0;
	if (p->sk) {
		lport = sk_lport((const struct sock *)p->sk);
		/* no local port, or none free: the kernel gave up before sending the SYN */
		if (lport && ret != -EADDRNOTAVAIL)
			emit(p->ts_ns, &p->owner, &p->t, lport, ret, 1);
	}
	bpf_map_delete_elem(&connecting, &id);
	return 0;
}

/* ---- -d: DNS answers, received over UDP from port 53 on a connected socket (as glibc's stub resolver
 * does, also towards systemd-resolved's 127.0.0.53), copied from the receiving syscall's user buffer.
 * Two ways, chosen by user space (src/tools/tcpconnect.rs):
 *  - sock_recv_length (Linux 6.3+) fires in sock_recvmsg() after the copy, in the receiving task; the
 *    buffer comes from that task's syscall registers (x86_64: read, recvfrom, recvmsg);
 *  - older kernels: syscalls sys_enter/sys_exit of recvfrom and recvmsg; the entry notes the buffer when
 *    the fd is a UDP socket connected to port 53, the exit copies what was received. */
/* Sends the first bytes of a DNS answer: `ret` bytes were received into the user buffer buf (room: cap). */
static __always_inline int dns_emit(__u64 buf, __u64 cap, long ret)
{
	struct tcpconnect_dns_event *e;
	__u64 n = ret;

	if (cap < n)
		n = cap;
	if (n > TCPCONNECT_DNS_MAX)
		n = TCPCONNECT_DNS_MAX;
	if (!buf || n < 12) /* shorter than a DNS header */
		return 0;
	e = event_reserve(sizeof(*e));
	if (!e)
		return 0;
	e->kind = TCPCONNECT_KIND_DNS;
	e->ts_ns = bpf_ktime_get_ns();
	if (bpf_probe_read_user(e->data, n, (void *)buf)) {
		event_discard(e);
		return 0;
	}
	e->len = n;
	event_submit(e);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(opt_dns_recv, struct sock *sk, int ret, int flags)
{
	struct task_struct *task;
	struct pt_regs *regs;
	__u64 buf = 0, cap = 0;
	long nr;

	if (!dns_on || ret <= 0)
		return 0;
	if (SK_R(sk, sk_protocol) != IPPROTO_UDP)
		return 0;
	if (SK_R(sk, __sk_common.skc_dport) != bpf_htons(53))
		return 0;
	task = bpf_get_current_task_btf();
	if (task->flags & (PF_KTHREAD | PF_IO_WORKER))
		return 0;
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if (!regs)
		return 0;
	nr = BPF_CORE_READ(regs, orig_ax);
	if (nr == 0 /* read */ || nr == 45 /* recvfrom */) {
		buf = BPF_CORE_READ(regs, si);
		cap = BPF_CORE_READ(regs, dx);
	} else if (nr == 47 /* recvmsg */) {
		struct user_msghdr m = {};
		struct iovec iov = {};

		if (bpf_probe_read_user(&m, sizeof(m), (void *)BPF_CORE_READ(regs, si)) || !m.msg_iov ||
		    !m.msg_iovlen)
			return 0;
		if (bpf_probe_read_user(&iov, sizeof(iov), m.msg_iov))
			return 0;
		buf = (__u64)iov.iov_base;
		cap = iov.iov_len;
	} else {
		return 0;
	}
	return dns_emit(buf, cap, ret);
}

/* A recvfrom/recvmsg in progress on a DNS socket, per thread (the fallback below). */
struct dns_recv {
	__u64 buf;
	__u64 cap;
};

/* (a plain hash: an answer that finds no room is counted, where an LRU would drop another silently) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct dns_recv);
} dns_recvs SEC(".maps");

static __always_inline bool fd_is_dns_socket(long fd)
{
	struct sock *sk = sock_of_fd(fd);

	return sk && SK_R(sk, sk_protocol) == IPPROTO_UDP &&
	       SK_R(sk, __sk_common.skc_dport) == bpf_htons(53);
}

static __always_inline int dns_enter(long fd, __u64 buf, __u64 cap)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct dns_recv r = { .buf = buf, .cap = cap };

	if (!dns_on || !buf || !fd_is_dns_socket(fd))
		return 0;
	map_update_counted(&dns_recvs, &id, &r, BPF_ANY);
	return 0;
}

static __always_inline int dns_exit(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct dns_recv *r = bpf_map_lookup_elem(&dns_recvs, &id);
	struct dns_recv copy;

	if (!r)
		return 0;
	copy = *r;
	bpf_map_delete_elem(&dns_recvs, &id);
	if (ret <= 0)
		return 0;
	return dns_emit(copy.buf, copy.cap, ret);
}

/* recvfrom(fd, buf, len, flags, addr, addrlen) */
SEC("tracepoint/syscalls/sys_enter_recvfrom")
int opt_dnssys_enter_recvfrom(struct trace_event_raw_sys_enter *ctx)
{
	return dns_enter(ctx->args[0], ctx->args[1], ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_exit_recvfrom")
int opt_dnssys_exit_recvfrom(struct trace_event_raw_sys_exit *ctx)
{
	return dns_exit(ctx->ret);
}

/* recvmsg(fd, msg, flags): the first iovec holds the answer */
SEC("tracepoint/syscalls/sys_enter_recvmsg")
int opt_dnssys_enter_recvmsg(struct trace_event_raw_sys_enter *ctx)
{
	struct user_msghdr m = {};
	struct iovec iov = {};

	if (!dns_on)
		return 0;
	if (bpf_probe_read_user(&m, sizeof(m), (void *)ctx->args[1]) || !m.msg_iov || !m.msg_iovlen)
		return 0;
	if (bpf_probe_read_user(&iov, sizeof(iov), m.msg_iov))
		return 0;
	return dns_enter(ctx->args[0], (__u64)iov.iov_base, iov.iov_len);
}

SEC("tracepoint/syscalls/sys_exit_recvmsg")
int opt_dnssys_exit_recvmsg(struct trace_event_raw_sys_exit *ctx)
{
	return dns_exit(ctx->ret);
}
