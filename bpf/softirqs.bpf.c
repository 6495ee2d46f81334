// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* softirqs: time spent in each softirq vector (net_rx, timer, ...), counted in the kernel; user space
 * prints totals, event counts (-C) or log2 histograms (-d) every interval (BCC's and libbpf-tools'
 * softirqs).
 *
 * Hooks: irq:softirq_entry and irq:softirq_exit (tp_btf, else raw_tp), fired by handle_softirqs()
 * around each vector's handler, on the CPU that runs it (softirqs do not nest on a CPU, and a run does
 * not move to another CPU). The entry also is where the kernel counts the softirq for /proc/softirqs.
 * All state lives in one per-CPU array entry: a program run is one map lookup and a few plain adds to
 * this CPU's memory; no record per event leaves the kernel. */
#include "common.bpf.h"
#include "hist.bpf.h"
#include "softirqs.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* puts the type into BTF, so the skeleton carries it to Rust */
struct softirqs_cpu _softirqs_cpu = {};

/* set by user space before load */
const volatile __u8 mode = SOFTIRQS_TIME;
const volatile __u8 nanos = 0;         /* -N: histograms in nsecs (else usecs) */
const volatile __s32 filter_cpu = -1;  /* -c CPU: only this CPU; -1: every CPU */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct softirqs_cpu);
} stats SEC(".maps");

static __always_inline struct softirqs_cpu *this_cpu(void)
{
	__u32 zero = 0;

	if (filter_cpu >= 0 && bpf_get_smp_processor_id() != (__u32)filter_cpu)
		return NULL;
	return bpf_map_lookup_elem(&stats, &zero);
}

static __always_inline int on_entry(unsigned int vec)
{
	struct softirqs_cpu *c;

	if (vec >= SOFTIRQS_VECS)
		return 0;
	c = this_cpu();
	if (!c)
		return 0;
	if (mode == SOFTIRQS_COUNT) {
		/* as /proc/softirqs counts: every entry */
		c->count[vec & (SOFTIRQS_VECS - 1)]++;
		return 0;
	}
	c->vec = vec;
	c->start_ns = bpf_ktime_get_ns();
	return 0;
}

static __always_inline int on_exit(unsigned int vec)
{
	struct softirqs_cpu *c;
	__u64 delta, v;
	__u32 i, idx;

	c = this_cpu();
	if (!c)
		return 0;
	/* a run whose entry was not seen (it began before the hooks were attached, or the kernel did not
	 * run the entry program) is left out, and counted */
	if (!c->start_ns || c->vec != vec) {
		c->unmatched++;
		c->start_ns = 0;
		return 0;
	}
	delta = bpf_ktime_get_ns() - c->start_ns;
	c->start_ns = 0;
	i = vec & (SOFTIRQS_VECS - 1);
	c->count[i]++;
	c->time_ns[i] += delta;
	if (mode == SOFTIRQS_DIST) {
		v = nanos ? delta : delta / 1000;
		/* one flat index, masked after an empty asm: older verifiers (5.10) lose the bounds of the
		 * two-dimensional index clang builds otherwise */
		idx = (i << 5) | log2_slot(v, SOFTIRQS_SLOTS);
		asm volatile("" : "+r"(idx));
		idx &= SOFTIRQS_VECS * SOFTIRQS_SLOTS - 1;
		(&c->slots[0][0])[idx]++;
	}
	return 0;
}

SEC("tp_btf/softirq_entry")
int BPF_PROG(softirqs_entry__btf, unsigned int vec_nr)
{
	return on_entry(vec_nr);
}

SEC("raw_tp/softirq_entry")
int BPF_PROG(softirqs_entry__raw, unsigned int vec_nr)
{
	return on_entry(vec_nr);
}

SEC("tp_btf/softirq_exit")
int BPF_PROG(softirqs_exit__btf, unsigned int vec_nr)
{
	return on_exit(vec_nr);
}

SEC("raw_tp/softirq_exit")
int BPF_PROG(softirqs_exit__raw, unsigned int vec_nr)
{
	return on_exit(vec_nr);
}
