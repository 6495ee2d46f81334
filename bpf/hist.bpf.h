/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Log2 histograms, shared by the histogram tools (tcpsynbl first; src/hist.rs prints them). Slot i counts
 * the values v with floor(log2(v)) == i, values 0 and 1 both in slot 0: libbpf-tools' log2()/log2l() of
 * bits.bpf.h, so that a histogram prints with the same ranges as theirs (0 -> 1, 2 -> 3, 4 -> 7, ...). */
#ifndef SOCKRAY_HIST_BPF_H
#define SOCKRAY_HIST_BPF_H

/* floor(log2(v)) for v > 0; 0 for v == 0 (branch-free: no loop for the verifier to walk) */
static __always_inline __u32 log2_u32(__u32 v)
{
	__u32 shift, r;

	r = (v > 0xFFFF) << 4;
	v >>= r;
	shift = (v > 0xFF) << 3;
	v >>= shift;
	r |= shift;
	shift = (v > 0xF) << 2;
	v >>= shift;
	r |= shift;
	shift = (v > 0x3) << 1;
	v >>= shift;
	r |= shift;
	r |= (v >> 1);
	return r;
}

static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 hi = v >> 32;

	return hi ? log2_u32(hi) + 32 : log2_u32((__u32)v);
}

/* The slot of v in a histogram of nslots slots (the last one takes everything above). */
static __always_inline __u32 log2_slot(__u64 v, __u32 nslots)
{
	__u32 s = log2_u64(v);

	return s < nslots ? s : nslots - 1;
}

#endif
