// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* ksymrange: the text of one kernel function, [start, end), from the kernel's own symbol lookups instead
 * of a read of /proc/kallsyms, which formats every symbol (~120,000 lines) as text for user space to
 * parse: ~40-60 ms on our 6.18 host, seconds under emulation. A syscall program (Linux 5.14+), run once
 * (BPF_PROG_RUN): bpf_kallsyms_lookup_name() (Linux 5.16+; a binary search by name since 6.2) gives the
 * start, and bpf_snprintf()'s %pS of it ("name+0x0/0xSIZE") the size, to the next symbol with a higher
 * address, as /proc/kallsyms gives it (a module's symbol ends " [module]"): microseconds. A separate BPF
 * object, loaded and run on a thread while a tool's own object loads (src/ksym.rs), without CO-RE
 * relocations: libbpf does not parse vmlinux BTF for it. Where it does not load, bpf/ksymwalk.bpf.c
 * walks the symbols; where neither does, user space reads /proc/kallsyms. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define KSYMRANGE_NAME_MAX 64
#define ENOENT 2

/* the function's name, NUL-terminated (written by user space before load) */
const volatile char want[KSYMRANGE_NAME_MAX] = {};

/* what was found: the function's start, and the %pS of it, which user space reads the size from */
__u64 found_start;
char found_sym[KSYMRANGE_NAME_MAX + 64];

SEC("syscall")
int ksymrange_lookup(void *ctx)
{
	static const char fmt[] = "%pS";
	__u64 addr = 0;

	long err;

	/* the whole zero-padded buffer: the helper wants its last byte NUL */
	err = bpf_kallsyms_lookup_name((const char *)want, sizeof(want), 0, &addr);
	if (err == -ENOENT || (!err && !addr))
		return 1; /* no such symbol */
	if (err)
		return 3; /* not allowed (-EPERM: no raw kernel addresses for this caller), or other */
	found_start = addr;
	if (bpf_snprintf(found_sym, sizeof(found_sym), fmt, &addr, sizeof(addr)) < 0)
		return 2;
	return 0;
}
