/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The flow maps tcptop and tcpsubnet count into, in both their objects (bpf/tcptop.bpf.c: the data-path
 * hooks; bpf/tcpwalk.bpf.c: --walk); src/flows.rs reads and swaps them alike. User space sets both inner
 * maps' size before load (--max-flows); they must match (map-in-map). */
#ifndef SOCKRAY_FLOWS_BPF_H
#define SOCKRAY_FLOWS_BPF_H

#include "tcptop.h"

struct tcptop_key _tcptop_key = {};
struct tcptop_val _tcptop_val = {};

struct tcptop_flows {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tcptop_key);
	__type(value, struct tcptop_val);
} flows_a SEC(".maps"), flows_b SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct tcptop_flows);
} flows SEC(".maps") = {
	.values = { [0] = &flows_a },
};

#endif
