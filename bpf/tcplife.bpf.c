// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tcplife: one line per TCP session when it closes: owner, addresses, bytes each way, lifespan. */
#include "common.bpf.h"
#include "sockowner.bpf.h"
#include "tcplife.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct tcplife_event _tcplife_event = {};

/* A session's start and who opened it are in the socket-owner component's record of the socket
 * (struct sock_rec: born_ns, flags), kept by owner_on_state_d(): no map of tcplife's own. */

/* direct: true in the tp_btf program (plain loads from sk), false in raw_tp (helper reads) */
static __always_inline int handle_set_state(const struct sock *sk, int oldstate, int newstate, bool direct)
{
	struct tcplife_event *e;
	struct sk_tuple t;
	struct sock_owner o;
	struct sock_rec *rec;
	struct tcp_sock *tp;
	__u64 key, now, born_ns;
	__u32 flags;

	if (SK_FIELD(direct, sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	key = sock_key_d(sk, direct);
	/* SYN_SENT and SYN_RECV: the session is born (born_ns); FIN_WAIT1, LAST_ACK: our FIN is sent */
	owner_on_state_d(sk, key, oldstate, newstate, direct, true);

	switch (newstate) {
	case TCP_ESTABLISHED:
		/* a session whose handshake we did not see (tool started in between) is born here. A passive
		 * child enters SYN_RECV when it is created, just before this: its record is there */
		if (oldstate == TCP_SYN_RECV)
			return 0;
		rec = sock_rec_of_d(sk, key, direct);
		if (!rec) {
			struct sock_rec fresh = { .born_ns = bpf_ktime_get_ns() };

			/* once records have been lost for want of room, a missing one may be this session's:
			 * its start is not known (counted and marked at CLOSE), not "now" */
			if (records_full())
				return 0;
			sock_rec_create_d(sk, key, &fresh, direct);
		} else if (!rec->born_ns) {
			rec->born_ns = bpf_ktime_get_ns();
		}
		return 0;
	case TCP_CLOSE:
		break;
	default:
		return 0;
	}
	rec = sock_rec_of_d(sk, key, direct);
	/* What the event needs of the record, read now: past this point the program is the same whichever
	 * map the record is in (slot table, socket storage or hash map), and the verifier checks it once,
	 * not once per map (a map value pointer kept alive until the end doubled the verification of what
	 * follows). */
	born_ns = rec ? rec->born_ns : 0;
	flags = rec ? rec->flags : 0;
	owner_resolve_d(sk, rec, newstate, &o, direct);
	/* A passive child that closes from SYN_RECV never became a connection: when two CPUs handle the
	 * handshake's last ACK at once, the loser's copy of the child is dropped this way (seen on 5.10),
	 * with the same addresses as the real one. (A refused or unanswered connect, SYN_SENT -> CLOSE, is
	 * shown, as BCC does.) */
	if (oldstate == TCP_SYN_RECV)
		goto out;
	/* no start: a listener, or a session born before we started (not shown, as BCC's), unless its
	 * record was lost for want of room: then shown with its start unknown (span_ns ~0) and counted */
	if (!born_ns && !sock_rec_lost(rec != 0, born_ns, flags, oldstate))
		goto out;
	now = bpf_ktime_get_ns();
	tp = sk_tcp_d(sk, direct);
	/* zeroed here, not where declared: that would run on every state change */
	__builtin_memset(&t, 0, sizeof(t));
	read_sk_tuple_tp(sk, tp, &t, direct);
	if (!family_ok(t.family) || !ports_ok(t.lport, t.rport))
		goto out;
	owner_of_listener(flags, sk, t.lport, &o, direct);

	/* the process filters first: a record reserved and discarded costs nearly what a sent one does */
	if (!owner_ok(&o))
		goto out;
	e = event_reserve(sizeof(*e));
	if (!e)
		goto out;
	e->owner = o;
	e->skaddr = (__u64)sk;
	e->ts_ns = now;
	e->span_ns = born_ns ? now - born_ns : ~0ULL;
	payload_bytes(sk, tp, flags, &e->tx_bytes, &e->rx_bytes);
	EVENT_SET_TUPLE(e, t);
	e->pad = 0;
	event_submit(e);
out:
	owner_forget_d(sk, key, direct);
	return 0;
}

SET_STATE_PROGS(tcplife_set_state, handle_set_state)
