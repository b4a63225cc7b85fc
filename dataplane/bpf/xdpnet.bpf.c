// SPDX-License-Identifier: (Apache-2.0 OR BSD-2-Clause)
//
// xdpnet's XDP program: hands frames to the dataplane's AF_XDP sockets.
//
// One object per daemon, attached (as a bpf_link, so it goes away with the daemon) to every
// port. `ports` says, per (ifindex, rx queue), which XSKMAP slot owns that queue and how to
// steer:
//   - MODE_ALL (pod and host ports): every frame goes to the socket.
//   - MODE_UPLINK (the NIC): only what the dataplane owns goes to the socket: VXLAN to this
//     node's VTEP address and our UDP port, and Service traffic listed in `steer` (NodePorts on
//     node addresses, LoadBalancer and external IPs). Everything else is XDP_PASS, so the
//     node's own traffic (SSH, kubelet, API server) works whether the daemon runs or not.
// A redirect to an empty XSKMAP slot (daemon gone, socket closed) falls back to XDP_PASS.
// Admission control: while the worker owning a slot is behind (it says so in `congested`,
// which it writes through a shared mapping), frames for that slot are dropped here, before
// the socket copies them into the UMEM, and counted (STAT_EARLY_DROP). Frames the uplink
// passes to the kernel are never dropped for it.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MODE_ALL 0
#define MODE_UPLINK 1

struct port_key {
	__u32 ifindex;
	__u32 queue;
};

struct port_val {
	__u32 slot;
	__u32 mode;
};

// Service frontends steered from the uplink: destination address (network order), destination
// port (network order; 0 for ICMP), IP protocol.
struct steer_key {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

// This node's VTEP address and VXLAN port (both network order).
struct vtep {
	__u32 addr;
	__u16 port;
	__u16 pad;
};

enum stat {
	STAT_TO_SOCKET = 0,
	STAT_PASS = 1,
	STAT_UNKNOWN_PORT = 2,
	STAT_EARLY_DROP = 3,
	STAT_MAX = 4,
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct port_key);
	__type(value, struct port_val);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct steer_key);
	__type(value, __u8);
} steer SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vtep);
} vteps SEC(".maps");

// Per XSKMAP slot: nonzero while the socket's worker is behind (set and cleared by the worker
// with hysteresis). 8-byte values: the array's layout in the shared mapping is one per 8 bytes.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} congested SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&stats, &which);
	if (c)
		*c += 1;
}

// True when the dataplane owns this uplink frame.
static __always_inline int owned(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl < 5)
		return 0;
	struct steer_key k = { .addr = ip->daddr, .port = 0, .proto = ip->protocol, .pad = 0 };
	// Later fragments carry no ports: never ours on the uplink.
	if (ip->frag_off & bpf_htons(0x1fff))
		return 0;
	if (ip->protocol == IPPROTO_UDP || ip->protocol == IPPROTO_TCP) {
		// Both headers start with the source and destination ports.
		__u16 *l4 = (void *)ip + ip->ihl * 4;
		if ((void *)(l4 + 2) > end)
			return 0;
		k.port = l4[1];
		if (ip->protocol == IPPROTO_UDP) {
			__u32 zero = 0;
			struct vtep *v = bpf_map_lookup_elem(&vteps, &zero);
			if (v && v->addr == ip->daddr && v->port == k.port)
				return 1;
		}
	} else if (ip->protocol != IPPROTO_ICMP) {
		return 0;
	}
	return bpf_map_lookup_elem(&steer, &k) != 0;
}

SEC("xdp.frags")
int xdpnet_steer(struct xdp_md *ctx)
{
	struct port_key pk = { .ifindex = ctx->ingress_ifindex, .queue = ctx->rx_queue_index };
	struct port_val *pv = bpf_map_lookup_elem(&ports, &pk);
	if (!pv) {
		count(STAT_UNKNOWN_PORT);
		return XDP_PASS;
	}
	if (pv->mode == MODE_UPLINK && !owned(ctx)) {
		count(STAT_PASS);
		return XDP_PASS;
	}
	__u32 slot = pv->slot;
	__u64 *busy = bpf_map_lookup_elem(&congested, &slot);
	if (busy && *busy) {
		count(STAT_EARLY_DROP);
		return XDP_DROP;
	}
	count(STAT_TO_SOCKET);
	return bpf_redirect_map(&xsks, slot, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
