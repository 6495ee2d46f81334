// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tcpaccept: one line per TCP connection accepted by a process, in that process's own context.
 *
 * BCC hooks the return of inet_csk_accept() with a kretprobe. Here: the accept()/accept4() syscall
 * tracepoints. The exit resolves the returned fd to its socket (fd table -> file -> struct socket -> sk)
 * and the listening fd to the listener, whose accept queue gives the backlog. The listening fd is read
 * from the syscall's saved user registers (bpf_task_pt_regs, Linux 5.15+); on older kernels the entry
 * programs stash it per thread (several threads may block in accept() on one listener at once), and
 * user space loads them only there (src/tools/tcpaccept.rs): one program run per accept, not two.
 *
 * Linux 7.x runs programs on syscall tracepoints preemptibly: a run of ours preempted on a CPU makes the
 * kernel skip the next classic-tracepoint program on that CPU. Those runs are counted (recursion_misses)
 * and reported as lost at exit. */
#include "common.bpf.h"
#include "tcpaccept.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct tcpaccept_event _tcpaccept_event = {};

/* listening fd of each thread inside accept()/accept4(), by pid_tgid */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __s64);
} accept_fds SEC(".maps");

/* The first argument of the current syscall, from the user registers saved at syscall entry (they stay
 * intact until the syscall returns); -1 when this kernel cannot tell (no bpf_task_pt_regs, Linux < 5.15). */
static __always_inline long syscall_arg0(void)
{
	struct pt_regs *regs;

	if (!bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_task_pt_regs))
		return -1;
	regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	if (!regs)
		return -1;
	return (int)PT_REGS_PARM1_CORE_SYSCALL(regs);
}

/* The listener's accept queue. It must be the socket the connection came in on: same local port (not
 * its state: another thread may already have shut the listener down). */
static __always_inline void fill_listener(struct tcpaccept_event *e, long lfd, __u16 lport)
{
	struct sock *lsk = sock_of_fd(lfd);

	if (!lsk || sk_lport(lsk) != lport)
		return;
	e->backlog = SK_R(lsk, sk_ack_backlog);
	e->backlog_max = SK_R(lsk, sk_max_ack_backlog);
	e->has_listener = 1;
}

/* Emits the event for the accepted socket behind newfd (in the current task's fd table). */
static __always_inline int emit_accept(long newfd, long lfd)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tcpaccept_event *e;
	struct sk_tuple t = {};
	struct sock *sk;
	__u32 uid;

	sk = sock_of_fd(newfd);
	if (!sk || SK_R(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	read_sk_tuple(sk, &t);
	if (!family_ok(t.family) || !ports_ok(t.lport, t.rport))
		return 0;
	uid = (__u32)bpf_get_current_uid_gid();
	if (!uid_ok(uid) || !scope_ok(scope_id_current()))
		return 0;

	e = event_reserve(sizeof(*e));
	if (!e)
		return 0;
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->uid = uid;
	e->backlog = 0;
	e->backlog_max = 0;
	e->has_listener = 0;
	e->pad = 0;
	fill_listener(e, lfd, t.lport);
	e->family = t.family;
	e->lport = t.lport;
	e->rport = t.rport;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	__builtin_memcpy(e->laddr, t.laddr, 16);
	__builtin_memcpy(e->raddr, t.raddr, 16);
	event_submit(e);
	return 0;
}

static __always_inline int on_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__s64 fd = (int)ctx->args[0];

	if (!tgid_ok(id >> 32))
		return 0;
	map_update_counted(&accept_fds, &id, &fd, BPF_ANY);
	return 0;
}

static __always_inline int on_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	long ret = ctx->ret;
	__s64 *stashed;
	long lfd;

	if (!tgid_ok(id >> 32))
		return 0;
	stashed = bpf_map_lookup_elem(&accept_fds, &id);
	if (stashed) {
		lfd = *stashed;
		bpf_map_delete_elem(&accept_fds, &id);
	} else if (ret >= 0) {
		/* no entry programs (5.15+), or blocked in accept() since before the tool started */
		lfd = syscall_arg0();
	} else {
		return 0;
	}
	if (ret < 0)
		return 0;
	return emit_accept(ret, lfd);
}

SEC("tracepoint/syscalls/sys_enter_accept4")
int tcpaccept_enter_accept4(struct trace_event_raw_sys_enter *ctx)
{
	return on_enter(ctx);
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int tcpaccept_exit_accept4(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx);
}

SEC("tracepoint/syscalls/sys_enter_accept")
int tcpaccept_enter_accept(struct trace_event_raw_sys_enter *ctx)
{
	return on_enter(ctx);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int tcpaccept_exit_accept(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx);
}
