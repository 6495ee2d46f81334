// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* ksymrange: the text of one kernel function, [start, end), found by a walk of the kernel's symbols in
 * the kernel (iter/ksym, Linux 6.0+) instead of a read of /proc/kallsyms, which formats every symbol
 * (~120,000 lines) as text for user space to parse: ~40 ms on our 6.18 host, seconds under emulation.
 * A separate BPF object: user space loads and runs it on a thread while a tool's own object loads
 * (src/attach.rs, function_range), and reads /proc/kallsyms where this iterator is missing.
 *
 * The kernel's own symbols come first, in address order (modules', BPF programs' and others' after):
 * the function's end is the next symbol with a higher address, as for /proc/kallsyms. The walk stops
 * there (the program returns non-zero: the read ends with EAGAIN), or at the first module symbol when the
 * function was not found: a module's function of that name does not count. */
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

SEC("iter/ksym")
int ksymrange(struct sockray_iter_ksym *ctx)
{
	struct kallsym_iter *it = ctx->ksym;
	__u64 value;
	int i;

	if (!it)
		return 0;
	value = it->value;
	if (found_start) {
		if (value <= found_start)
			return 0; /* an alias of the function, or its __cfi_/__pfx_ neighbours at one address */
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
