/* Connection lifecycle tracing: who opens TCP connections, to where, how long they
 * live, which side closes first, resets, and failed connect()s by errno. Read by
 * src/collect/trace/.
 *
 * Counting happens here, in per-CPU maps, so that 20,000 connections per second cost
 * a few map updates each and no message to user space:
 *
 *   trace_socks     LRU hash, sock pointer -> owner and lifecycle of one connection
 *   trace_listeners hash, (netns, port) -> owner of a listening socket
 *   trace_flows     per-CPU hash, (process, netns, peer or listening port, direction)
 *                   -> cumulative counts; user space reads and diffs them
 *   trace_counters  per-CPU array of losses (full maps, rate-limited events)
 *   trace_events    ring buffer of raw events, only with --events, rate-limited here
 *
 * The fexit programs are optional: some kernels refuse trampolines (BPF_PROG_LOAD fails
 * with EPERM). The loader then tells the tracepoint programs through trace_config, and
 * they fall back: an accepted connection belongs to its listener's process, and a
 * connect() that failed before its SYN is EADDRNOTAVAIL when no local port was found
 * (inet_sport still 0), "other" otherwise.
 *
 * Attribution: a transition in softirq context (handshake completion, the peer's FIN or
 * RST) runs on whatever task the CPU was running, so the current task is read only
 * where the kernel runs in the owner's own system call: connect() (CLOSE -> SYN_SENT,
 * and fexit of tcp_v4_connect/tcp_v6_connect), listen() (CLOSE -> LISTEN), accept()
 * (fexit of inet_csk_accept) and close()/shutdown() (ESTABLISHED -> FIN_WAIT1,
 * CLOSE_WAIT -> LAST_ACK, used only for sockets whose owner is not known yet).
 * Everything else is looked up by the sock pointer.
 *
 * Built by build.rs with `clang -target bpf -mcpu=v3 -O2 -g`: v3 for the atomic
 * fetch-or that decides which of two CPUs counts a passive open (see count_open).
 */
#include "kernel.h"

/* bpf_probe_read_kernel and the ring buffer are GPL-only. */
char LICENSE[] SEC("license") = "GPL";

/* Set by the loader before the programs are loaded (.rodata, constant to the
 * verifier, so the disabled paths cost nothing). Keep in sync with load() in
 * src/collect/trace/mod.rs. */
volatile const __u32 cfg_events = 0;           /* 1: send raw events */
volatile const __u32 cfg_events_per_cpu_s = 0; /* event budget per CPU per second */
volatile const __u32 cfg_tgid = 0;             /* events: only this process (0: any) */
volatile const __u32 cfg_netns = 0;            /* events: only this netns inode (0: any) */
volatile const __u32 cfg_port = 0;             /* events: local or remote port (0: any) */
volatile const __u32 cfg_leaks = 0;            /* 1: record who opened each socket */

/* ---- Records shared with user space: keep in sync with records.rs ---- */

#define DIR_UNKNOWN 0
#define DIR_ACTIVE 1  /* this host connected */
#define DIR_PASSIVE 2 /* this host accepted */

/* Failed connect() slots, by errno. */
enum {
	FAIL_EADDRNOTAVAIL, /* 99: no free local port for this destination */
	FAIL_ECONNREFUSED,  /* 111: RST in answer to the SYN */
	FAIL_ETIMEDOUT,     /* 110: no answer to the SYN retries */
	FAIL_ENETUNREACH,   /* 101 */
	FAIL_EHOSTUNREACH,  /* 113 */
	FAIL_EADDRINUSE,    /* 98: explicit bind() and a 4-tuple in use */
	FAIL_EPERM,         /* 1 or 13: refused by a firewall hook or LSM */
	FAIL_ABORTED,       /* closed while connecting, no error */
	FAIL_OTHER,
	FAIL_SLOTS,
};

/* Lifetimes in log2 buckets of microseconds: bucket 0 is < 1 us, bucket b >= 1 holds
 * [2^(b-1), 2^b) us, the last bucket everything from 2^30 us (~18 min) on. */
#define LIFETIME_BUCKETS 32

struct flow_key {
	__u32 tgid;   /* process (initial pid namespace); 0: not known */
	__u32 netns;  /* inode of the network namespace */
	__u8 addr[16]; /* remote address (active; IPv4 in the first 4 bytes); 0 for passive */
	__u16 port;   /* remote port (active) or local listening port (passive) */
	__u8 family;  /* AF_INET or AF_INET6 */
	__u8 direction;
};

struct flow_stats {
	__u64 opened;          /* completed handshakes */
	__u64 closed_local;    /* this host sent the first FIN or RST */
	__u64 closed_peer;     /* the peer did */
	__u64 closed_unknown;  /* ended, first closer not seen */
	__u64 resets_sent;
	__u64 resets_received; /* on connections past the handshake */
	__u64 failed[FAIL_SLOTS];
	__u64 lifetime_count;  /* closes whose start was seen */
	__u64 lifetime_sum_us;
	__u64 lifetime[LIFETIME_BUCKETS];
	char comm[16]; /* set on the CPU that created the entry */
};

/* Per-connection record. */
#define SF_ESTABLISHED 0x01 /* handshake completed */
#define SF_COUNTED 0x02     /* counted in `opened` */
#define SF_LOCAL_FIRST 0x04
#define SF_PEER_FIRST 0x08
#define SF_ADOPTED 0x10  /* first seen mid-life: no start time */
#define SF_ACCEPTED 0x20 /* passive: accept() returned it */
#define SF_CLOSED 0x40   /* counted as closed; kept for the reset that follows */

struct sock_entry {
	__u64 start_ns;
	__u32 tgid;
	__u32 netns;
	char comm[16];
	__u8 addr[16];
	__u16 port;
	__u8 family;
	__u8 direction;
	__u32 flags; /* SF_*, changed with atomic or */
	__u16 lport; /* local port: the socket's own is 0 once it is closed */
	__u16 reserved;
};

struct listener_key {
	__u32 netns;
	__u32 port;
};

struct listener_owner {
	__u64 sk; /* the listening socket; 0 when user space seeded the entry */
	__u32 tgid;
	__u32 reserved;
	char comm[16];
};

/* Losses, one slot each in trace_counters. */
enum {
	CNT_FLOWS_FULL,      /* a count had no room in trace_flows */
	CNT_LISTENERS_FULL,  /* a listener had no room in trace_listeners */
	CNT_SOCKS_UNTRACKED, /* a connection seen mid-life (started before tracing, or
			      * pushed out of trace_socks by newer ones) */
	CNT_EVENTS_SENT,
	CNT_EVENTS_RATE_LIMITED,
	CNT_EVENTS_RING_FULL,
	CNT_ORIGINS_ADDED,   /* origins recorded (cfg_leaks) */
	CNT_ORIGINS_REMOVED, /* origins removed at a normal close */
	CNT_ORIGINS_FAILED,  /* an origin could not be stored */
	CNT_STACKS_LOST,     /* an origin without its stack (stack map full or busy, no
			      * user stack) */
	CNT_ACCEPT_NO_COOKIE, /* accepted before recording began: no cookie to key it */
	CNT_SLOTS,
};

#define EV_STATE 1
#define EV_RESET_SENT 2
#define EV_RESET_RECEIVED 3
#define EV_CONNECT_FAILED 4
#define EV_ACCEPTED 5

struct flow_event {
	__u64 ts_ns; /* CLOCK_MONOTONIC */
	__u64 lifetime_ns; /* at a close whose start was seen; else 0 */
	__u32 tgid;
	__u32 netns;
	char comm[16];
	__u8 saddr[16]; /* local */
	__u8 daddr[16]; /* remote */
	__u16 sport;    /* local port */
	__u16 dport;    /* remote port */
	__u8 family;
	__u8 kind;      /* EV_* */
	__u8 oldstate;
	__u8 newstate;
	__s32 error;    /* errno of a failed connect; 0 otherwise */
	__u8 direction;
	__u8 reserved[3];
};

/* Who opened a socket, and from where (cfg_leaks): keyed by the socket cookie, the
 * identity sock_diag reports, so user space joins a CLOSE_WAIT socket of a dump to it. */
#define VIA_CONNECT 1
#define VIA_ACCEPT 2

struct origin {
	__u64 at_ns;   /* CLOCK_BOOTTIME */
	__u64 inode;   /* the socket's inode (its descriptor's target); 0: not known */
	__u32 tgid;
	__u32 tid;
	__u32 netns;
	__s32 stack_id; /* in trace_stacks; negative: no stack (-errno) */
	char thread[16]; /* the calling thread's own name */
	__u8 addr[16];   /* remote address (IPv4 in the first 4 bytes) */
	__u16 port;      /* remote port */
	__u8 family;
	__u8 via;        /* VIA_* */
	__u32 closed_held; /* 1: the kernel closed it while a descriptor held it */
};

/* Sizes pinned on both sides (records.rs asserts the same numbers). */
_Static_assert(sizeof(struct origin) == 72, "origin layout");
_Static_assert(sizeof(struct flow_key) == 28, "flow_key layout");
_Static_assert(sizeof(struct flow_stats) == 408, "flow_stats layout");
_Static_assert(sizeof(struct listener_key) == 8, "listener_key layout");
_Static_assert(sizeof(struct listener_owner) == 32, "listener_owner layout");
_Static_assert(sizeof(struct flow_event) == 88, "flow_event layout");

/* Written by the loader once it knows which optional programs are attached. */
struct trace_config {
	__u32 accept_hook;  /* fexit/inet_csk_accept attached */
	__u32 connect_hook; /* fexit/tcp_v4_connect (and v6) attached */
};

struct rate_window {
	__u64 start_ns;
	__u64 used;
};

/* ---- Maps (sizes may be changed by the loader) ---- */

/* LRU maps are preallocated: 65536 entries are about 7 MB of kernel memory. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sock_entry);
} trace_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct listener_key);
	__type(value, struct listener_owner);
} trace_listeners SEC(".maps");

/* Not preallocated: a per-CPU hash would otherwise hold max_entries values for every
 * possible CPU from the start (16384 x 408 bytes x 64 CPUs is 428 MB); this way memory
 * follows the flows that exist. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct flow_key);
	__type(value, struct flow_stats);
} trace_flows SEC(".maps");

/* One all-zero flow_stats to create entries from: too big for the 512-byte stack. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_stats);
} trace_zero SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct trace_config);
} trace_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} trace_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rate_window);
} trace_event_rate SEC(".maps");


struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} trace_events SEC(".maps");

/* Origins of live sockets (cfg_leaks only; the loader shrinks both maps to one entry
 * otherwise). Records of sockets closed normally are removed at the close, so the map
 * holds live sockets; when it is full the least recently used go first: the oldest,
 * unless this program touched them since (lookups from user space do not count). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct origin);
} trace_origins SEC(".maps");

/* User stacks, each stored once, by id (the origins' stack_id): 64 frames a stack. */
#define STACK_DEPTH 64
struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 8192);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, STACK_DEPTH * sizeof(__u64));
} trace_stacks SEC(".maps");

/* Written by the loader of a recording tracer, never by the programs: how another
 * tcpdoctor (`check`) finds the two maps above (src/collect/trace/origins.rs). */
struct leak_meta {
	__u32 magic;
	__u32 pid;
	__u32 origins_id;
	__u32 stacks_id;
	__u64 since_unix_ms;
};
_Static_assert(sizeof(struct leak_meta) == 24, "leak_meta layout");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct leak_meta);
} trace_leak_meta SEC(".maps");

/* ---- Small helpers ---- */

static __always_inline void count_loss(__u32 slot)
{
	__u64 *c = bpf_map_lookup_elem(&trace_counters, &slot);
	if (c)
		*c += 1; /* per-CPU slot */
}

static __always_inline struct trace_config *config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&trace_config, &zero);
}

static __always_inline __u16 be16(__u16 v)
{
	return (__u16)((v >> 8) | (v << 8));
}

static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r, shift;
	r = (v > 0xFFFFFFFFULL) << 5;
	v >>= r;
	shift = (v > 0xFFFF) << 4;
	v >>= shift;
	r |= shift;
	shift = (v > 0xFF) << 3;
	v >>= shift;
	r |= shift;
	shift = (v > 0xF) << 2;
	v >>= shift;
	r |= shift;
	shift = (v > 0x3) << 1;
	v >>= shift;
	r |= shift;
	r |= (__u32)(v >> 1);
	return r;
}

static __always_inline __u32 fail_slot(int err)
{
	if (err < 0)
		err = -err;
	switch (err) {
	case 99:
		return FAIL_EADDRNOTAVAIL;
	case 111:
		return FAIL_ECONNREFUSED;
	case 110:
		return FAIL_ETIMEDOUT;
	case 101:
		return FAIL_ENETUNREACH;
	case 113:
		return FAIL_EHOSTUNREACH;
	case 98:
		return FAIL_EADDRINUSE;
	case 1:
	case 13:
		return FAIL_EPERM;
	case 0:
		return FAIL_ABORTED;
	default:
		return FAIL_OTHER;
	}
}

static __always_inline __u32 netns_of(const struct sock *sk)
{
	return sk->__sk_common.skc_net.net->ns.inum;
}

/* The calling process: tgid and the group leader's name (what /proc/PID/comm shows;
 * a thread's own name may differ). */
static __always_inline __u32 current_owner(char comm[16])
{
	struct task_struct *task = bpf_get_current_task_btf();
	bpf_probe_read_kernel(comm, 16, task->group_leader->comm);
	return (__u32)(bpf_get_current_pid_tgid() >> 32);
}

static __always_inline int current_is_kthread(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	return (task->flags & PF_KTHREAD) != 0;
}

/* Remote address and port of a socket. */
static __always_inline void remote_of(const struct sock *sk, __u8 family, __u8 addr[16],
				      __u16 *port)
{
	if (family == AF_INET6) {
		bpf_probe_read_kernel(addr, 16, &sk->__sk_common.skc_v6_daddr);
	} else {
		__u32 a = sk->__sk_common.skc_daddr;
		__builtin_memcpy(addr, &a, 4);
	}
	*port = be16(sk->__sk_common.skc_dport);
}

static __always_inline void local_of(const struct sock *sk, __u8 family, __u8 addr[16])
{
	if (family == AF_INET6) {
		bpf_probe_read_kernel(addr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
	} else {
		__u32 a = sk->__sk_common.skc_rcv_saddr;
		__builtin_memcpy(addr, &a, 4);
	}
}

static __always_inline struct listener_owner *listener_of(__u32 netns, __u16 port)
{
	struct listener_key k = { .netns = netns, .port = port };
	return bpf_map_lookup_elem(&trace_listeners, &k);
}

/* ---- Provenance (cfg_leaks) ---- */

/* Whether a descriptor still holds the socket: inet_release() clears sock->sk before
 * the protocol's close() runs, and sock_orphan() clears sk->sk_socket after it. */
static __always_inline int still_held(const struct sock *sk)
{
	const struct socket *so = sk->sk_socket;
	if (!so)
		return 0;
	return so->sk == sk;
}

/* Stores who opens `cookie` now, with the calling thread's user stack. Called in the
 * process context of connect() or accept(). */
static __always_inline void record_origin(void *ctx, __u64 cookie, __u8 via, __u64 inode,
					  __u32 netns, __u8 family, const __u8 addr[16],
					  __u16 port)
{
	struct origin o;
	__builtin_memset(&o, 0, sizeof(o));
	__u64 id = bpf_get_current_pid_tgid();
	o.at_ns = bpf_ktime_get_boot_ns();
	o.inode = inode;
	o.tgid = (__u32)(id >> 32);
	o.tid = (__u32)id;
	o.netns = netns;
	bpf_get_current_comm(o.thread, sizeof(o.thread));
	__builtin_memcpy(o.addr, addr, 16);
	o.port = port;
	o.family = family;
	o.via = via;
	long sid = bpf_get_stackid(ctx, &trace_stacks, BPF_F_USER_STACK);
	if (sid < 0)
		count_loss(CNT_STACKS_LOST);
	o.stack_id = (__s32)sid;
	if (bpf_map_update_elem(&trace_origins, &cookie, &o, BPF_ANY))
		count_loss(CNT_ORIGINS_FAILED);
	else
		count_loss(CNT_ORIGINS_ADDED);
}

/* A socket reached CLOSE: its origin goes unless a descriptor still holds it (reset or
 * aborted under an application that has not closed it: a leak `ss` no longer shows;
 * marked so). Such a record stays until the table needs room; user space checks that
 * the descriptor is still there.
 * A connect() that failed is forgotten either way. */
static __always_inline void forget_origin(const struct sock *sk, int old)
{
	__u64 cookie = (__u64)sk->__sk_common.skc_cookie.counter;
	if (!cookie)
		return;
	if (old != TCP_SYN_SENT && still_held(sk)) {
		/* Out of every socket table from now on: user space finds it by inode. */
		struct origin *o = bpf_map_lookup_elem(&trace_origins, &cookie);
		if (o)
			o->closed_held = 1;
		return;
	}
	if (bpf_map_delete_elem(&trace_origins, &cookie) == 0)
		count_loss(CNT_ORIGINS_REMOVED);
}

/* ---- Counting ---- */

static __always_inline struct flow_stats *flow_stats_of(const struct sock_entry *e)
{
	struct flow_key k;
	__builtin_memset(&k, 0, sizeof(k));
	k.tgid = e->tgid;
	k.netns = e->netns;
	k.port = e->port;
	k.family = e->family;
	k.direction = e->direction;
	if (e->direction != DIR_PASSIVE)
		__builtin_memcpy(k.addr, e->addr, 16);

	struct flow_stats *s = bpf_map_lookup_elem(&trace_flows, &k);
	if (s)
		return s;
	__u32 zero = 0;
	struct flow_stats *init = bpf_map_lookup_elem(&trace_zero, &zero);
	if (!init)
		return 0;
	/* NOEXIST: another CPU may have created it meanwhile; then use that one. */
	long err = bpf_map_update_elem(&trace_flows, &k, init, BPF_NOEXIST);
	s = bpf_map_lookup_elem(&trace_flows, &k);
	if (!s) {
		count_loss(CNT_FLOWS_FULL);
		return 0;
	}
	if (!err)
		__builtin_memcpy(s->comm, e->comm, 16);
	return s;
}

static __always_inline void count_open(const struct sock_entry *e)
{
	struct flow_stats *s = flow_stats_of(e);
	if (s)
		__sync_fetch_and_add(&s->opened, 1);
}

/* Counts the open once, whichever of two racing paths gets here second. */
static __always_inline void count_open_once(struct sock_entry *e)
{
	if (__sync_fetch_and_or(&e->flags, SF_COUNTED) & SF_COUNTED)
		return;
	count_open(e);
}

/* ---- Events ---- */

static __always_inline int event_wanted(__u32 tgid, __u32 netns, __u16 sport, __u16 dport)
{
	if (!cfg_events)
		return 0;
	if (cfg_tgid && cfg_tgid != tgid)
		return 0;
	if (cfg_netns && cfg_netns != netns)
		return 0;
	if (cfg_port && cfg_port != sport && cfg_port != dport)
		return 0;
	/* The hard limit: at most cfg_events_per_cpu_s per CPU in each second. */
	__u32 zero = 0;
	struct rate_window *w = bpf_map_lookup_elem(&trace_event_rate, &zero);
	if (!w)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	if (now - w->start_ns >= 1000000000ULL) {
		w->start_ns = now;
		w->used = 0;
	}
	if (w->used >= cfg_events_per_cpu_s) {
		count_loss(CNT_EVENTS_RATE_LIMITED);
		return 0;
	}
	w->used += 1;
	return 1;
}

static __always_inline struct flow_event *event_start(void)
{
	struct flow_event *ev = bpf_ringbuf_reserve(&trace_events, sizeof(*ev), 0);
	if (!ev) {
		count_loss(CNT_EVENTS_RING_FULL);
		return 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ts_ns = bpf_ktime_get_ns();
	return ev;
}

static __always_inline void event_send(struct flow_event *ev)
{
	bpf_ringbuf_submit(ev, 0);
	count_loss(CNT_EVENTS_SENT);
}

/* Event kind and the two states, in one argument (a subprogram takes five). */
#define WHAT(kind, old, new) ((__u32)(kind) | ((__u32)(__u8)(old) << 8) | ((__u32)(__u8)(new) << 16))

/* An event about a full socket, attributed to its entry's owner. Not inlined (here and
 * below): callers pass either a map value or a stack copy, and clang would otherwise
 * hoist field offsets above the map lookup's NULL check, which the verifier refuses. */
static __noinline void sock_event(const struct sock *sk, const struct sock_entry *e,
				  __u32 what, int error, __u64 lifetime_ns)
{
	if (!cfg_events)
		return;
	__u8 kind = what & 0xff, old = (what >> 8) & 0xff, new = (what >> 16) & 0xff;
	/* A closed socket has given its port back (inet_put_port()). */
	__u16 sport = sk->__sk_common.skc_num;
	if (!sport)
		sport = e->lport;
	__u16 dport = be16(sk->__sk_common.skc_dport);
	if (!event_wanted(e->tgid, e->netns, sport, dport))
		return;
	struct flow_event *ev = event_start();
	if (!ev)
		return;
	ev->lifetime_ns = lifetime_ns;
	ev->tgid = e->tgid;
	ev->netns = e->netns;
	__builtin_memcpy(ev->comm, e->comm, 16);
	ev->family = (__u8)sk->__sk_common.skc_family;
	local_of(sk, ev->family, ev->saddr);
	remote_of(sk, ev->family, ev->daddr, &ev->dport);
	ev->sport = sport;
	ev->kind = kind;
	ev->oldstate = old;
	ev->newstate = new;
	ev->error = error;
	ev->direction = e->direction;
	event_send(ev);
}

/* ---- Entries ---- */

/* A connection first seen mid-life. Direction: SYN_SENT is ours; otherwise a local port
 * that is a listening port of its namespace, or the listen() backlog an accepted
 * socket inherits from its listener, makes it an accepted one. Without the second, an
 * accepted connection whose listener user space has not told us about (another
 * namespace, or before the first collection) was keyed by its client's port: one flow
 * per connection, filling trace_flows on a busy server. Owner: the listener's for
 * accepted ones, else unknown until close()/shutdown() names it. */
static __always_inline void adopt(const struct sock *sk, int old, struct sock_entry *e)
{
	__builtin_memset(e, 0, sizeof(*e));
	e->netns = netns_of(sk);
	e->family = (__u8)sk->__sk_common.skc_family;
	e->flags = SF_ADOPTED | SF_COUNTED;
	e->lport = sk->__sk_common.skc_num;
	if (old == TCP_ESTABLISHED || old == TCP_CLOSE_WAIT || old == TCP_FIN_WAIT1 ||
	    old == TCP_FIN_WAIT2 || old == TCP_LAST_ACK || old == TCP_CLOSING)
		e->flags |= SF_ESTABLISHED;
	__u16 local = sk->__sk_common.skc_num;
	struct listener_owner *l = old == TCP_SYN_SENT ? 0 : listener_of(e->netns, local);
	int accepted = old != TCP_SYN_SENT && sk->sk_max_ack_backlog > 0;
	if (old == TCP_SYN_RECV || l || accepted) {
		e->direction = DIR_PASSIVE;
		e->port = local;
		if (l) {
			e->tgid = l->tgid;
			__builtin_memcpy(e->comm, l->comm, 16);
		}
	} else {
		e->direction = DIR_ACTIVE;
		remote_of(sk, e->family, e->addr, &e->port);
	}
	count_loss(CNT_SOCKS_UNTRACKED);
}

/* The entry of sk, adopting it (stored) when there is none. */
static __always_inline struct sock_entry *entry_of(const struct sock *sk, __u64 key, int old)
{
	struct sock_entry *e = bpf_map_lookup_elem(&trace_socks, &key);
	if (e)
		return e;
	struct sock_entry fresh;
	adopt(sk, old, &fresh);
	bpf_map_update_elem(&trace_socks, &key, &fresh, BPF_NOEXIST);
	return bpf_map_lookup_elem(&trace_socks, &key);
}

/* A connection ended (-> CLOSE) after its handshake. */
static __noinline void finish(const struct sock *sk, struct sock_entry *e, int old,
				   __u64 now)
{
	__u32 flags = e->flags;
	if (!(flags & SF_ESTABLISHED))
		return;
	/* A passive connection that ends before accept() is counted now. */
	count_open_once(e);
	flags = e->flags;
	struct flow_stats *s = flow_stats_of(e);
	if (!s)
		return;
	/* First closer from the state left when nothing marked it (adopted entries). */
	if (!(flags & (SF_LOCAL_FIRST | SF_PEER_FIRST))) {
		if (old == TCP_LAST_ACK)
			flags |= SF_PEER_FIRST;
		else if (old == TCP_FIN_WAIT1 || old == TCP_FIN_WAIT2 || old == TCP_CLOSING)
			flags |= SF_LOCAL_FIRST;
		/* ESTABLISHED -> CLOSE without an error: this host aborts, and its reset
		 * follows the state change (tcp_disconnect() for SO_LINGER {1,0} and
		 * connect(AF_UNSPEC), __tcp_close() with unread data). A reset received
		 * marked the peer already; a timeout sets sk_err before tcp_done(). */
		else if (old == TCP_ESTABLISHED && !sk->sk_err)
			flags |= SF_LOCAL_FIRST;
	}
	if (flags & SF_LOCAL_FIRST)
		__sync_fetch_and_add(&s->closed_local, 1);
	else if (flags & SF_PEER_FIRST)
		__sync_fetch_and_add(&s->closed_peer, 1);
	else
		__sync_fetch_and_add(&s->closed_unknown, 1);
	if (e->start_ns && !(flags & SF_ADOPTED) && now > e->start_ns) {
		__u64 us = (now - e->start_ns) / 1000;
		__u32 b = us ? log2_u64(us) + 1 : 0;
		if (b >= LIFETIME_BUCKETS)
			b = LIFETIME_BUCKETS - 1;
		__sync_fetch_and_add(&s->lifetime_count, 1);
		__sync_fetch_and_add(&s->lifetime_sum_us, us);
		__sync_fetch_and_add(&s->lifetime[b & (LIFETIME_BUCKETS - 1)], 1);
	}
}

static __noinline void count_failure(const struct sock_entry *e, __u32 slot)
{
	struct flow_stats *s = flow_stats_of(e);
	if (s && slot < FAIL_SLOTS)
		__sync_fetch_and_add(&s->failed[slot], 1);
}

/* ---- Programs ---- */

SEC("tp_btf/inet_sock_set_state")
int trace_state(__u64 *ctx)
{
	const struct sock *sk = (const struct sock *)ctx[0];
	int old = (int)ctx[1];
	int new = (int)ctx[2];

	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	if (cfg_leaks && new == TCP_CLOSE && old != TCP_LISTEN)
		forget_origin(sk, old);
	/* Steps that change nothing counted: return before any map lookup. */
	if (new == TCP_FIN_WAIT2 || new == TCP_CLOSING || new == TCP_TIME_WAIT)
		return 0;

	__u64 key = (__u64)sk;
	__u64 now = bpf_ktime_get_ns();
	struct sock_entry *e;

	if (old == TCP_CLOSE && new == TCP_SYN_SENT) {
		/* connect(), in the calling process. */
		struct sock_entry fresh;
		__builtin_memset(&fresh, 0, sizeof(fresh));
		fresh.start_ns = now;
		fresh.tgid = current_owner(fresh.comm);
		fresh.netns = netns_of(sk);
		fresh.family = (__u8)sk->__sk_common.skc_family;
		fresh.direction = DIR_ACTIVE;
		remote_of(sk, fresh.family, fresh.addr, &fresh.port);
		bpf_map_update_elem(&trace_socks, &key, &fresh, BPF_ANY);
		sock_event(sk, &fresh, WHAT(EV_STATE, old, new), 0, 0);
		if (cfg_leaks) {
			__u64 inode = 0;
			const struct socket *so = sk->sk_socket;
			if (so && so->file)
				inode = so->file->f_inode->i_ino;
			record_origin(ctx, bpf_get_socket_cookie(sk), VIA_CONNECT, inode,
				      fresh.netns, fresh.family, fresh.addr, fresh.port);
		}
		return 0;
	}

	if (new == TCP_LISTEN) {
		/* listen(), in the calling process. */
		struct listener_owner l;
		__builtin_memset(&l, 0, sizeof(l));
		l.sk = key;
		l.tgid = current_owner(l.comm);
		struct listener_key lk = { .netns = netns_of(sk), .port = sk->__sk_common.skc_num };
		if (bpf_map_update_elem(&trace_listeners, &lk, &l, BPF_ANY))
			count_loss(CNT_LISTENERS_FULL);
		if (cfg_events) {
			struct sock_entry shown;
			__builtin_memset(&shown, 0, sizeof(shown));
			shown.tgid = l.tgid;
			__builtin_memcpy(shown.comm, l.comm, 16);
			shown.netns = lk.netns;
			shown.direction = DIR_PASSIVE;
			shown.port = lk.port;
			shown.lport = lk.port;
			sock_event(sk, &shown, WHAT(EV_STATE, old, new), 0, 0);
		}
		return 0;
	}

	if (old == TCP_LISTEN) {
		/* The child of a listener, created in softirq context (inet_csk_clone_lock
		 * takes the listener's state, then sets SYN_RECV): the listener's owner until
		 * accept() says who took it. */
		if (new == TCP_SYN_RECV) {
			struct sock_entry fresh;
			__builtin_memset(&fresh, 0, sizeof(fresh));
			fresh.start_ns = now;
			fresh.netns = netns_of(sk);
			fresh.family = (__u8)sk->__sk_common.skc_family;
			fresh.direction = DIR_PASSIVE;
			fresh.port = sk->__sk_common.skc_num;
			fresh.lport = fresh.port;
			struct listener_owner *l = listener_of(fresh.netns, fresh.port);
			if (l) {
				fresh.tgid = l->tgid;
				__builtin_memcpy(fresh.comm, l->comm, 16);
			}
			bpf_map_update_elem(&trace_socks, &key, &fresh, BPF_ANY);
			sock_event(sk, &fresh, WHAT(EV_STATE, old, new), 0, 0);
			/* Give the child its cookie now: accept() (trace_accept_exit) finds
			 * the socket through a descriptor, as a plain pointer the cookie
			 * helper does not take, and reads the cookie from memory. */
			if (cfg_leaks)
				bpf_get_socket_cookie(sk);
		} else if (new == TCP_CLOSE) {
			/* A listener closed: forget it unless another socket took the port. */
			struct listener_key lk = { .netns = netns_of(sk),
						   .port = sk->__sk_common.skc_num };
			struct listener_owner *l = bpf_map_lookup_elem(&trace_listeners, &lk);
			if (l && l->sk == key)
				bpf_map_delete_elem(&trace_listeners, &lk);
		}
		return 0;
	}

	if (old == TCP_SYN_SENT && new == TCP_CLOSE) {
		/* A connect() that failed after its SYN: refused (RST), timed out, or closed
		 * while connecting. Without an error and without a segment sent, it is
		 * tcp_v4_connect()'s own failure path (no port: EADDRNOTAVAIL, no route),
		 * which the fexit program counts with the errno connect() returns. */
		e = bpf_map_lookup_elem(&trace_socks, &key);
		int err = sk->sk_err;
		__u32 slot = fail_slot(err);
		if (!err) {
			__u32 segs = 0;
			bpf_probe_read_kernel(&segs, sizeof(segs),
					      &((const struct tcp_sock *)sk)->segs_out);
			if (!segs) {
				struct trace_config *cfg = config();
				if (cfg && cfg->connect_hook) {
					if (e)
						bpf_map_delete_elem(&trace_socks, &key);
					return 0;
				}
				/* No fexit: the errno is not seen here. Still without a
				 * local port (inet_sport 0: neither bound nor found by
				 * inet_hash_connect), it can only be EADDRNOTAVAIL. */
				__u16 sport = 1;
				bpf_probe_read_kernel(&sport, sizeof(sport),
						      &((const struct inet_sock *)sk)->inet_sport);
				slot = sport ? FAIL_OTHER : FAIL_EADDRNOTAVAIL;
				err = sport ? -1 : 99;
			}
		}
		struct sock_entry gone;
		if (!e) {
			adopt(sk, old, &gone);
			e = &gone;
		}
		count_failure(e, slot);
		sock_event(sk, e, WHAT(EV_CONNECT_FAILED, old, new), err, 0);
		bpf_map_delete_elem(&trace_socks, &key);
		return 0;
	}

	if (new == TCP_CLOSE) {
		e = bpf_map_lookup_elem(&trace_socks, &key);
		struct sock_entry gone;
		int adopted = 0;
		if (!e) {
			if (old == TCP_SYN_RECV || old == TCP_CLOSE)
				return 0;
			adopt(sk, old, &gone);
			e = &gone;
			adopted = 1;
		}
		finish(sk, e, old, now);
		__u64 lifetime = e->start_ns && !(e->flags & SF_ADOPTED) ? now - e->start_ns : 0;
		sock_event(sk, e, WHAT(EV_STATE, old, new), 0, lifetime);
		/* A local abort sends its reset after this change (tcp_disconnect() for
		 * SO_LINGER {1,0}, __tcp_close() with unread data): keep the entry for
		 * trace_send_reset, which removes it. */
		if ((old == TCP_ESTABLISHED || old == TCP_CLOSE_WAIT) && !sk->sk_err) {
			if (adopted) {
				gone.flags |= SF_CLOSED;
				bpf_map_update_elem(&trace_socks, &key, &gone, BPF_ANY);
			} else {
				__sync_fetch_and_or(&e->flags, SF_CLOSED);
			}
			return 0;
		}
		bpf_map_delete_elem(&trace_socks, &key);
		return 0;
	}

	e = entry_of(sk, key, old);
	if (!e)
		return 0;
	if (new == TCP_ESTABLISHED) {
		if (old == TCP_SYN_SENT) {
			/* The local port is known from here (connect() found it). */
			e->lport = sk->__sk_common.skc_num;
			__sync_fetch_and_or(&e->flags, SF_ESTABLISHED);
			count_open_once(e);
		} else {
			/* Passive. With the accept() hook: counted once both this and
			 * accept() happened (they race on two CPUs: a child is queued for
			 * accept() before it is ESTABLISHED), or at close if never
			 * accepted. Without it: now, for the listener's process. */
			__u32 had = __sync_fetch_and_or(&e->flags, SF_ESTABLISHED);
			struct trace_config *cfg = config();
			if ((had & SF_ACCEPTED) || !cfg || !cfg->accept_hook)
				count_open_once(e);
		}
	} else if (new == TCP_FIN_WAIT1) {
		/* close() or shutdown() in the process holding the socket. */
		if (!(e->flags & SF_PEER_FIRST))
			__sync_fetch_and_or(&e->flags, SF_LOCAL_FIRST);
		if (!e->tgid && !current_is_kthread())
			e->tgid = current_owner(e->comm);
	} else if (new == TCP_CLOSE_WAIT) {
		/* The peer's FIN, in softirq context. */
		if (!(e->flags & SF_LOCAL_FIRST))
			__sync_fetch_and_or(&e->flags, SF_PEER_FIRST);
	} else if (new == TCP_LAST_ACK) {
		if (!e->tgid && !current_is_kthread())
			e->tgid = current_owner(e->comm);
	}
	sock_event(sk, e, WHAT(EV_STATE, old, new), 0, 0);
	return 0;
}

/* accept() returned a child: its owner is the caller. inet_csk_accept's arguments
 * changed in 6.10 (struct proto_accept_arg); only its return value is read, with
 * bpf_get_func_ret, so either signature works. */
SEC("fexit/inet_csk_accept")
int trace_accept(void *ctx)
{
	__u64 child = 0;
	if (bpf_get_func_ret(ctx, &child) || !child)
		return 0;
	const struct sock *sk = (const struct sock *)child;
	struct sock_entry *e = bpf_map_lookup_elem(&trace_socks, &child);
	if (!e) {
		/* Queued before tracing started (or pushed out of the map). */
		unsigned char state = 0;
		bpf_probe_read_kernel(&state, 1, (const void *)&sk->__sk_common.skc_state);
		if (state == TCP_CLOSE)
			return 0;
		struct sock_entry fresh;
		__builtin_memset(&fresh, 0, sizeof(fresh));
		bpf_probe_read_kernel(&fresh.family, 1, &sk->__sk_common.skc_family);
		bpf_probe_read_kernel(&fresh.port, 2, &sk->__sk_common.skc_num);
		unsigned long net = 0;
		bpf_probe_read_kernel(&net, sizeof(net), &sk->__sk_common.skc_net.net);
		bpf_probe_read_kernel(&fresh.netns, 4, &((struct net *)net)->ns.inum);
		fresh.direction = DIR_PASSIVE;
		fresh.flags = SF_ADOPTED | SF_COUNTED | SF_ESTABLISHED | SF_ACCEPTED;
		fresh.lport = fresh.port;
		fresh.tgid = current_owner(fresh.comm);
		count_loss(CNT_SOCKS_UNTRACKED);
		bpf_map_update_elem(&trace_socks, &child, &fresh, BPF_NOEXIST);
		return 0;
	}
	e->tgid = current_owner(e->comm);
	__u32 had = __sync_fetch_and_or(&e->flags, SF_ACCEPTED);
	if (had & SF_ESTABLISHED)
		count_open_once(e);
	if (cfg_events && event_wanted(e->tgid, e->netns, e->port, 0)) {
		struct flow_event *ev = event_start();
		if (ev) {
			ev->tgid = e->tgid;
			ev->netns = e->netns;
			__builtin_memcpy(ev->comm, e->comm, 16);
			ev->family = e->family;
			ev->sport = e->port;
			ev->kind = EV_ACCEPTED;
			ev->direction = DIR_PASSIVE;
			event_send(ev);
		}
	}
	return 0;
}

/* A connect() that failed inside tcp_v4_connect/tcp_v6_connect, before or without a
 * SYN: above all EADDRNOTAVAIL (no free local port for the destination), which no
 * kernel counter records. The caller is the owner; the destination comes from the
 * sockaddr connect() was given (the socket's own fields are reset on failure). */
static __always_inline int connect_failed(void *ctx, int v6_entry)
{
	__u64 ret = 0;
	if (bpf_get_func_ret(ctx, &ret))
		return 0;
	int err = (int)ret;
	if (err >= 0)
		return 0;
	__u64 skp = 0, uaddr = 0;
	if (bpf_get_func_arg(ctx, 0, &skp) || bpf_get_func_arg(ctx, 1, &uaddr) || !skp ||
	    !uaddr)
		return 0;
	const struct sock *sk = (const struct sock *)skp;
	unsigned short family = 0;
	bpf_probe_read_kernel(&family, sizeof(family), &sk->__sk_common.skc_family);
	/* tcp_v6_connect() hands IPv4-mapped destinations to tcp_v4_connect(): count
	 * those once, at the IPv6 return. */
	if (!v6_entry && family == AF_INET6)
		return 0;

	struct sock_entry e;
	__builtin_memset(&e, 0, sizeof(e));
	e.tgid = current_owner(e.comm);
	unsigned long net = 0;
	bpf_probe_read_kernel(&net, sizeof(net), &sk->__sk_common.skc_net.net);
	bpf_probe_read_kernel(&e.netns, 4, &((struct net *)net)->ns.inum);
	e.direction = DIR_ACTIVE;
	e.family = (__u8)family;
	__u16 sa_family = 0;
	bpf_probe_read_kernel(&sa_family, sizeof(sa_family), (void *)uaddr);
	if (sa_family == AF_INET6) {
		struct sockaddr_in6 sa;
		bpf_probe_read_kernel(&sa, sizeof(sa), (void *)uaddr);
		__builtin_memcpy(e.addr, sa.sin6_addr.bytes, 16);
		e.port = be16(sa.sin6_port);
	} else {
		struct sockaddr_in sa;
		bpf_probe_read_kernel(&sa, sizeof(sa), (void *)uaddr);
		if (family == AF_INET6) {
			/* An AF_INET sockaddr on an AF_INET6 socket: keyed as the socket's
			 * state changes are, IPv4-mapped. */
			e.addr[10] = 0xff;
			e.addr[11] = 0xff;
			__builtin_memcpy(&e.addr[12], &sa.sin_addr, 4);
		} else {
			__builtin_memcpy(e.addr, &sa.sin_addr, 4);
		}
		e.port = be16(sa.sin_port);
	}
	count_failure(&e, fail_slot(err));
	if (cfg_events && event_wanted(e.tgid, e.netns, 0, e.port)) {
		struct flow_event *ev = event_start();
		if (ev) {
			ev->tgid = e.tgid;
			ev->netns = e.netns;
			__builtin_memcpy(ev->comm, e.comm, 16);
			__builtin_memcpy(ev->daddr, e.addr, 16);
			ev->dport = e.port;
			ev->family = e.family;
			ev->kind = EV_CONNECT_FAILED;
			ev->error = -err;
			ev->direction = DIR_ACTIVE;
			event_send(ev);
		}
	}
	return 0;
}

SEC("fexit/tcp_v4_connect")
int trace_connect4(void *ctx)
{
	return connect_failed(ctx, 0);
}

SEC("fexit/tcp_v6_connect")
int trace_connect6(void *ctx)
{
	return connect_failed(ctx, 1);
}

/* A reset this host sends. sk is NULL (no socket: a segment to a closed port), a
 * TIME_WAIT or request minisocket, a listener (a handshake it refused), or a full
 * socket (an abort: SO_LINGER {1,0} close, data left unread at close, ss -K, or an
 * invalid segment). Since 6.10 a third argument gives the reason; sk is first either
 * way. */
SEC("tp_btf/tcp_send_reset")
int trace_send_reset(__u64 *ctx)
{
	const struct sock *sk = (const struct sock *)ctx[0];
	const struct sk_buff *skb = (const struct sk_buff *)ctx[1];
	struct sock_entry *e;
	struct sock_entry other;
	int no_full_sock = 1; /* events of full sockets are sent by sock_event() */

	if (!sk) {
		/* Answer to a segment no socket wanted (the incoming segment's TCP header
		 * is at skb->data). A SYN to a port nothing listens on is counted for that
		 * port. Any other segment belongs to a connection already gone here, and
		 * its destination is that connection's local port, often an ephemeral one:
		 * keyed by it, every such connection made a flow of its own and filled
		 * trace_flows. Those are counted together, under port 0. */
		if (!skb)
			return 0;
		struct tcphdr_ports th = {};
		bpf_probe_read_kernel(&th, sizeof(th), skb->data);
		__builtin_memset(&other, 0, sizeof(other));
		other.direction = DIR_PASSIVE;
		other.port = (th.flags & 0x12) == 0x02 ? be16(th.dest) : 0;
		other.netns = skb->dev ? skb->dev->nd_net.net->ns.inum : 0;
		__u8 version = 0;
		bpf_probe_read_kernel(&version, 1, skb->head + skb->network_header);
		other.family = (version >> 4) == 6 ? AF_INET6 : AF_INET;
		e = &other;
	} else {
		unsigned char state = sk->__sk_common.skc_state;
		if (state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV || state == TCP_LISTEN) {
			/* Minisockets share only sock_common with a full socket. */
			__builtin_memset(&other, 0, sizeof(other));
			other.netns = netns_of(sk);
			other.family = (__u8)sk->__sk_common.skc_family;
			__u16 local = sk->__sk_common.skc_num;
			struct listener_owner *l = listener_of(other.netns, local);
			if (state == TCP_LISTEN || l) {
				other.direction = DIR_PASSIVE;
				other.port = local;
				if (l && state == TCP_LISTEN) {
					other.tgid = l->tgid;
					__builtin_memcpy(other.comm, l->comm, 16);
				}
			} else {
				other.direction = DIR_ACTIVE;
				remote_of(sk, other.family, other.addr, &other.port);
			}
			e = &other;
		} else if (state == TCP_CLOSE) {
			no_full_sock = 0;
			/* A local abort: the connection closed just before, and its entry
			 * was kept for this (SF_CLOSED). */
			if (sk->sk_protocol != IPPROTO_TCP)
				return 0;
			__u64 key = (__u64)sk;
			e = bpf_map_lookup_elem(&trace_socks, &key);
			if (e && (e->flags & SF_CLOSED)) {
				__builtin_memcpy(&other, e, sizeof(other));
				bpf_map_delete_elem(&trace_socks, &key);
			} else {
				adopt(sk, state, &other);
			}
			e = &other;
			sock_event(sk, e, WHAT(EV_RESET_SENT, state, state), 0, 0);
		} else {
			no_full_sock = 0;
			if (sk->sk_protocol != IPPROTO_TCP)
				return 0;
			e = entry_of(sk, (__u64)sk, state);
			if (!e)
				return 0;
			if (!(e->flags & SF_PEER_FIRST))
				__sync_fetch_and_or(&e->flags, SF_LOCAL_FIRST);
			sock_event(sk, e, WHAT(EV_RESET_SENT, state, state), 0, 0);
		}
	}
	struct flow_stats *s = flow_stats_of(e);
	if (s)
		__sync_fetch_and_add(&s->resets_sent, 1);
	if (no_full_sock && cfg_events && event_wanted(e->tgid, e->netns, e->port, 0)) {
		struct flow_event *ev = event_start();
		if (ev) {
			ev->tgid = e->tgid;
			ev->netns = e->netns;
			__builtin_memcpy(ev->comm, e->comm, 16);
			ev->family = e->family;
			if (e->direction == DIR_PASSIVE) {
				ev->sport = e->port;
			} else {
				__builtin_memcpy(ev->daddr, e->addr, 16);
				ev->dport = e->port;
			}
			ev->kind = EV_RESET_SENT;
			ev->direction = e->direction;
			event_send(ev);
		}
	}
	return 0;
}

/* A reset received on a full socket (tcp_reset()). In SYN_SENT it is a refused
 * connect(), counted as such when the socket closes with ECONNREFUSED. */
SEC("tp_btf/tcp_receive_reset")
int trace_receive_reset(__u64 *ctx)
{
	const struct sock *sk = (const struct sock *)ctx[0];
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	unsigned char state = sk->__sk_common.skc_state;
	if (state == TCP_SYN_SENT || state == TCP_CLOSE)
		return 0;
	struct sock_entry *e = entry_of(sk, (__u64)sk, state);
	if (!e)
		return 0;
	if (!(e->flags & SF_LOCAL_FIRST))
		__sync_fetch_and_or(&e->flags, SF_PEER_FIRST);
	struct flow_stats *s = flow_stats_of(e);
	if (s)
		__sync_fetch_and_add(&s->resets_received, 1);
	sock_event(sk, e, WHAT(EV_RESET_RECEIVED, state, state), 0, 0);
	return 0;
}

/* accept() and accept4() returned a descriptor (cfg_leaks only): record the accepted
 * socket's origin in the caller's context. The fexit hook on inet_csk_accept is refused
 * by some kernels, and the raw system call exit works everywhere BTF tracing does; the
 * program returns at its first comparison for every other system call. x86-64 numbers
 * (arch/x86/entry/syscalls/syscall_64.tbl); elsewhere pt_regs has no orig_ax and the
 * program does nothing. */
#define NR_ACCEPT 43
#define NR_ACCEPT4 288

SEC("tp_btf/sys_exit")
int trace_accept_exit(__u64 *ctx)
{
	if (!cfg_leaks)
		return 0;
	long ret = (long)ctx[1];
	if (ret < 0)
		return 0;
	const struct pt_regs *regs = (const struct pt_regs *)ctx[0];
	if (!__builtin_preserve_field_info(regs->orig_ax, BPF_FIELD_EXISTS))
		return 0;
	unsigned long nr = regs->orig_ax;
	if (nr != NR_ACCEPT && nr != NR_ACCEPT4)
		return 0;

	/* The new descriptor's file: current->files->fdt->fd[ret]. */
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = task->files->fdt;
	if (!fdt || (unsigned long)ret >= fdt->max_fds)
		return 0;
	struct file **fds = fdt->fd;
	struct file *f = 0;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[ret]);
	if (!f)
		return 0;
	struct inode *ino = 0;
	bpf_probe_read_kernel(&ino, sizeof(ino), &f->f_inode);
	if (!ino)
		return 0;
	unsigned short mode = 0;
	bpf_probe_read_kernel(&mode, sizeof(mode), &ino->i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return 0;
	struct socket *so = 0;
	bpf_probe_read_kernel(&so, sizeof(so), &f->private_data);
	if (!so)
		return 0;
	struct sock *sk = 0;
	bpf_probe_read_kernel(&sk, sizeof(sk), &so->sk);
	if (!sk)
		return 0;
	__u16 proto = 0;
	unsigned short family = 0;
	bpf_probe_read_kernel(&proto, sizeof(proto), &sk->sk_protocol);
	bpf_probe_read_kernel(&family, sizeof(family), &sk->__sk_common.skc_family);
	if (proto != IPPROTO_TCP || (family != AF_INET && family != AF_INET6))
		return 0;
	__u64 cookie = 0;
	bpf_probe_read_kernel(&cookie, sizeof(cookie), &sk->__sk_common.skc_cookie.counter);
	if (!cookie) {
		count_loss(CNT_ACCEPT_NO_COOKIE);
		return 0;
	}
	__u64 inode = 0;
	bpf_probe_read_kernel(&inode, sizeof(inode), &ino->i_ino);
	__u8 addr[16] = {};
	__u16 dport = 0;
	if (family == AF_INET6) {
		bpf_probe_read_kernel(addr, 16, &sk->__sk_common.skc_v6_daddr);
	} else {
		bpf_probe_read_kernel(addr, 4, &sk->__sk_common.skc_daddr);
	}
	bpf_probe_read_kernel(&dport, sizeof(dport), &sk->__sk_common.skc_dport);
	unsigned long net = 0;
	__u32 netns = 0;
	bpf_probe_read_kernel(&net, sizeof(net), &sk->__sk_common.skc_net.net);
	bpf_probe_read_kernel(&netns, 4, &((struct net *)net)->ns.inum);
	record_origin(ctx, cookie, VIA_ACCEPT, inode, netns, (__u8)family, addr, be16(dport));
	return 0;
}
