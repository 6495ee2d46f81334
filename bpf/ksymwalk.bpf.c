// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* ksymwalk: the text of one kernel function, [start, end), from a walk of the kernel's symbols in the
 * kernel (iter/ksym, Linux 6.0+): the fallback of bpf/ksymrange.bpf.c where its lookup does not load.
 * Still a walk of every symbol up to the function (~100,000 before tcp_rcv_state_process on our 6.18
 * host: ~10-30 ms), but without formatting them as text for user space to parse (/proc/kallsyms, the last
 * fallback). A separate BPF object (src/ksym.rs): its CO-RE relocation makes libbpf parse vmlinux BTF. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define KSYMRANGE_NAME_MAX 64

/* The iterator's context (its layout is the iterator's ABI), declared without CO-RE relocation: one type
 * fewer for libbpf to look up in vmlinux BTF. struct kallsym_iter is relocated (its fields and the length
 * of its name changed between kernels). */
struct sockray_iter_ksym {
	struct bpf_iter_meta *meta;
	struct kallsym_iter *ksym;
};

/* the function's name, NUL-terminated (written by user space before load) */
const volatile char want[KSYMRANGE_NAME_MAX] = {};

/* what the walk found: the function's start (0: not found) and end (0: no symbol after it) */
__u64 found_start;
__u64 found_end;

/* The walk: the kernel's own symbols come first, in address order (modules', BPF programs' and others'
 * after); the function's end is the next symbol with a higher address, as for /proc/kallsyms. The walk
 * stops there (the program returns non-zero: the read ends with EAGAIN), or at the first module symbol
 * when the function was not found: a module's function of that name does not count. */
SEC("iter/ksym")
int ksymwalk(struct sockray_iter_ksym *ctx)
{
	struct kallsym_iter *it = ctx->ksym;
	__u64 value;
	int i;

	if (!it)
		return 0;
	value = it->value;
	if (found_start) {
		if (value <= found_start)
			return 0; /* another name at the function's address */
		found_end = value;
		return 1; /* done: stop the walk */
	}
	if (it->module_name[0])
		return 1; /* past the kernel's own symbols without finding it */
	for (i = 0; i < KSYMRANGE_NAME_MAX; i++) {
		char c = want[i];

		if (it->name[i] != c)
			return 0;
		if (!c)
			break;
	}
	found_start = value;
	return 0;
}
