// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* netqtop: packets, bytes and packet sizes per TX and RX queue of one network interface (BCC's
 * netqtop), counted in the kernel; user space prints each interval's differences.
 *
 * Hooks: net:net_dev_start_xmit (a packet handed to the driver, its TX queue in skb->queue_mapping)
 * and net:netif_receive_skb (a packet entering the stack, its RX queue recorded by the driver as
 * queue_mapping + 1, 0 when not recorded), tp_btf, else raw_tp. The interface filter comes first: its
 * ifindex and network namespace are in rodata, and a packet of another interface costs one or two
 * loads and a compare. Counting is a lookup in a per-CPU array and plain adds (no atomics, no record
 * per packet leaves the kernel). */
#include "common.bpf.h"
#include "netqtop.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* puts the type into BTF, so the skeleton carries it to Rust */
struct netqtop_queue _netqtop_queue = {};

/* set by user space before load */
const volatile __u32 filter_ifindex = 0; /* the interface (in filter_netns) */
const volatile __u32 filter_netns = 0;   /* its network namespace's inode number; 0: not checked */
const volatile __u32 nqueues = 1;        /* queue indices kept per direction; beyond: one slot */

/* sized by user space: 2 * (nqueues + 1) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct netqtop_queue);
} queues SEC(".maps");

static __always_inline void add(__u32 dir, __u32 qid, __u64 len)
{
	struct netqtop_queue *q;
	__u32 key, b;

	key = dir * (nqueues + 1) + (qid < nqueues ? qid : nqueues);
	q = bpf_map_lookup_elem(&queues, &key);
	if (!q)
		return;
	/* BCC's buckets: len / 64 == 0, len / 512 == 0, ... */
	if (len < 64)
		b = 0;
	else if (len < 512)
		b = 1;
	else if (len < 2048)
		b = 2;
	else if (len < 16384)
		b = 3;
	else if (len < 65536)
		b = 4;
	else
		b = 5;
	q->packets++;
	q->bytes += len;
	q->buckets[b]++;
}

/* the link-layer header eth_type_trans() pulled before the packet reached netif_receive_skb
 * (ip -s link counts it, as the transmit side does) */
static __always_inline __u64 pulled(__u64 data_off, __u16 mac_header)
{
	if (mac_header == (__u16)~0U || data_off < mac_header || data_off - mac_header > 256)
		return 0;
	return data_off - mac_header;
}

/* ---- tp_btf: typed arguments, read directly ---- */

SEC("tp_btf/net_dev_start_xmit")
int BPF_PROG(netqtop_xmit__btf, const struct sk_buff *skb, const struct net_device *dev)
{
	if (dev->ifindex != filter_ifindex)
		return 0;
	if (filter_netns && dev->nd_net.net->ns.inum != filter_netns)
		return 0;
	add(NETQTOP_TX, skb->queue_mapping, skb->len);
	return 0;
}

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(netqtop_recv__btf, struct sk_buff *skb)
{
	struct net_device *dev = skb->dev;
	__u32 qid = 0;
	__u16 qm;

	if (!dev || dev->ifindex != filter_ifindex)
		return 0;
	if (filter_netns && dev->nd_net.net->ns.inum != filter_netns)
		return 0;
	qm = skb->queue_mapping;
	if (qm)
		qid = qm - 1;
	add(NETQTOP_RX, qid, skb->len + pulled(skb->data - skb->head, skb->mac_header));
	return 0;
}

/* ---- raw_tp: the same, read with CO-RE probe reads ---- */

SEC("raw_tp/net_dev_start_xmit")
int BPF_PROG(netqtop_xmit__raw, const struct sk_buff *skb, const struct net_device *dev)
{
	if (BPF_CORE_READ(dev, ifindex) != filter_ifindex)
		return 0;
	if (filter_netns && BPF_CORE_READ(dev, nd_net.net, ns.inum) != filter_netns)
		return 0;
	add(NETQTOP_TX, BPF_CORE_READ(skb, queue_mapping), BPF_CORE_READ(skb, len));
	return 0;
}

SEC("raw_tp/netif_receive_skb")
int BPF_PROG(netqtop_recv__raw, struct sk_buff *skb)
{
	struct net_device *dev = BPF_CORE_READ(skb, dev);
	unsigned char *data, *head;
	__u32 qid = 0;
	__u16 qm;

	if (!dev || BPF_CORE_READ(dev, ifindex) != filter_ifindex)
		return 0;
	if (filter_netns && BPF_CORE_READ(dev, nd_net.net, ns.inum) != filter_netns)
		return 0;
	qm = BPF_CORE_READ(skb, queue_mapping);
	if (qm)
		qid = qm - 1;
	data = BPF_CORE_READ(skb, data);
	head = BPF_CORE_READ(skb, head);
	add(NETQTOP_RX, qid, BPF_CORE_READ(skb, len) + pulled(data - head, BPF_CORE_READ(skb, mac_header)));
	return 0;
}
