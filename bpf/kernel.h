/* The few kernel types and BPF helpers owners.bpf.c and trace.bpf.c use, written by
 * hand instead of a generated vmlinux.h or libbpf's headers.
 *
 * Kernel structs carry only the fields the program reads and are marked
 * preserve_access_index: clang records each field access as a CO-RE relocation, and
 * the loader (aya) rewrites the offsets from the running kernel's BTF
 * (/sys/kernel/btf/vmlinux). Field order and padding here therefore do not matter;
 * field names and types do.
 */
#ifndef TCPDOCTOR_BPF_KERNEL_H
#define TCPDOCTOR_BPF_KERNEL_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef int __s32;
typedef long long __s64;

#define SEC(name) __attribute__((section(name), used))
#define CORE __attribute__((preserve_access_index))
#define __always_inline inline __attribute__((always_inline))
/* A BPF subprogram: the verifier checks it per call, with that call's argument types. */
#define __noinline __attribute__((noinline))

/* include/uapi/linux/stat.h */
#define S_IFMT 00170000
#define S_IFSOCK 0140000

/* include/linux/pid_namespace.h: MAX_PID_NS_LEVEL */
#define MAX_PID_NS_LEVEL 32

/* __builtin_preserve_field_info kinds (libbpf's bpf_core_read.h, enum bpf_field_info_kind) */
#define BPF_FIELD_BYTE_OFFSET 0
#define BPF_FIELD_EXISTS 2

struct seq_file;
struct pid_namespace;

struct ns_common {
	unsigned int inum;
} CORE;

struct net {
	struct ns_common ns;
} CORE;

struct nsproxy {
	struct net *net_ns;
} CORE;

/* include/linux/pid.h: one (number, namespace) pair per pid-namespace level, level 0
 * being the initial namespace. */
struct upid {
	int nr;
	struct pid_namespace *ns;
} CORE;

struct pid {
	unsigned int level;
	struct upid numbers[1]; /* flexible array in the kernel */
} CORE;

struct inode {
	unsigned short i_mode; /* umode_t */
	unsigned long i_ino;
} CORE;

struct file {
	struct inode *f_inode;
	void *private_data;
} CORE;

/* include/linux/fdtable.h: the open files of a task (trace.bpf.c, accept() provenance). */
struct fdtable {
	unsigned int max_fds;
	struct file **fd; /* __rcu array of max_fds */
} CORE;

struct files_struct {
	struct fdtable *fdt; /* __rcu */
} CORE;

struct task_struct {
	unsigned int flags; /* PF_* */
	struct files_struct *files;
	int pid;  /* thread id, initial pid namespace */
	int tgid; /* process id, initial pid namespace */
	struct task_struct *group_leader;
	char comm[16]; /* TASK_COMM_LEN */
	struct pid *thread_pid;
	struct nsproxy *nsproxy; /* NULL once the task has started to exit */
} CORE;

/* include/linux/sched.h */
#define PF_KTHREAD 0x00200000

/* ---- Sockets (trace.bpf.c) ---- */

/* include/linux/socket.h, include/uapi/linux/in.h */
#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

/* include/net/tcp_states.h */
enum {
	TCP_ESTABLISHED = 1,
	TCP_SYN_SENT,
	TCP_SYN_RECV,
	TCP_FIN_WAIT1,
	TCP_FIN_WAIT2,
	TCP_TIME_WAIT,
	TCP_CLOSE,
	TCP_CLOSE_WAIT,
	TCP_LAST_ACK,
	TCP_LISTEN,
	TCP_CLOSING,
	TCP_NEW_SYN_RECV,
};

/* Copied whole (16 bytes) with bpf_probe_read_kernel, so its inner union does not
 * matter here. */
struct in6_addr {
	__u8 bytes[16];
};

/* include/net/net_namespace.h: a struct around the pointer (empty without
 * CONFIG_NET_NS, which no kernel with BTF-enabled tracing lacks in practice). */
typedef struct {
	struct net *net;
} CORE possible_net_t;

/* include/net/sock.h. In the kernel the address and port pairs sit in anonymous unions;
 * CO-RE finds members through anonymous members, so they are flat here. */
/* include/linux/types.h */
typedef struct {
	__s64 counter;
} atomic64_t;

struct sock_common {
	atomic64_t skc_cookie; /* 0 until sock_gen_cookie() (sock_diag, bpf_get_socket_cookie) */
	__u32 skc_daddr;     /* __be32, remote IPv4 address */
	__u32 skc_rcv_saddr; /* __be32, local IPv4 address */
	__u16 skc_dport;     /* __be16, remote port */
	__u16 skc_num;       /* local port, host order */
	unsigned short skc_family;
	volatile unsigned char skc_state;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} CORE;

struct socket;

struct sock {
	struct sock_common __sk_common;
	struct socket *sk_socket; /* NULL once orphaned (close()) */
	int sk_err;
	__u16 sk_protocol; /* a u16 since 5.6; a bitfield before */
	/* Set by listen() only (inet_listen); a connection accepted from a listener is a
	 * clone of it (sk_clone_lock copies the whole sock) and keeps it, while one that
	 * connect()ed has 0. */
	__u32 sk_max_ack_backlog;
} CORE;

/* include/linux/net.h: the file side of a socket. inet_release() sets sk to NULL
 * before it calls the protocol's close(), so during close() sk->sk_socket->sk is no
 * longer the sock. */
struct socket {
	struct sock *sk;
	struct file *file;
} CORE;

/* arch/x86/include/asm/ptrace.h: the system call number at syscall exit. Read only
 * where the field exists (x86-64; see trace_accept_exit). */
struct pt_regs {
	unsigned long orig_ax;
} CORE;

/* include/linux/tcp.h; read with bpf_probe_read_kernel: the verifier knows a
 * tracepoint's sk as a struct sock and refuses loads past its end. */
struct tcp_sock {
	__u32 segs_out; /* segments sent, SYN included */
} CORE;

struct inet_sock {
	__u16 inet_sport; /* __be16; set by bind() or when connect() finds a port */
} CORE;

struct net_device {
	possible_net_t nd_net;
} CORE;

struct sk_buff {
	struct net_device *dev;
	unsigned char *head;
	unsigned char *data;
	__u16 network_header; /* offset from head */
} CORE;

/* UAPI layouts (stable ABI, not CO-RE). */
struct sockaddr_in {
	__u16 sin_family;
	__u16 sin_port; /* __be16 */
	__u32 sin_addr; /* __be32 */
	__u8 pad[8];
};

struct sockaddr_in6 {
	__u16 sin6_family;
	__u16 sin6_port; /* __be16 */
	__u32 sin6_flowinfo;
	struct in6_addr sin6_addr;
	__u32 sin6_scope_id;
};

/* The first 14 bytes of a TCP header (include/uapi/linux/tcp.h): ports and flags. */
struct tcphdr_ports {
	__u16 source; /* __be16 */
	__u16 dest;   /* __be16 */
	__u32 seq;
	__u32 ack_seq;
	__u8 doff;  /* data offset in the high 4 bits */
	__u8 flags; /* FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10 */
};

/* Iterator contexts (include/linux/bpf.h, kernel/bpf/task_iter.c). Not CO-RE: they are
 * ABI, every member one 8-byte slot (__bpf_md_ptr), and the verifier checks each access
 * against the iterator's BTF prototype. */
struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
};

struct bpf_iter__task {
	struct bpf_iter_meta *meta;
	struct task_struct *task; /* NULL on the final call */
};

struct bpf_iter__task_file {
	struct bpf_iter_meta *meta;
	struct task_struct *task; /* NULL on the final call */
	__u32 fd;
	__u32 pad_;
	struct file *file;
};

/* Maps defined the way libbpf and aya read them from the .maps section (BTF). */
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

/* enum bpf_map_type */
#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_PERCPU_HASH 5
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_STACK_TRACE 7
#define BPF_MAP_TYPE_LRU_HASH 9
#define BPF_MAP_TYPE_RINGBUF 27

/* map_flags */
#define BPF_F_NO_PREALLOC 1

/* bpf_get_stackid flags: the user-space stack, not the kernel's */
#define BPF_F_USER_STACK (1ULL << 8)

/* map update flags */
#define BPF_ANY 0
#define BPF_NOEXIST 1
#define BPF_EXIST 2

/* Helpers, by their ids in enum bpf_func_id (include/uapi/linux/bpf.h). */
static void *(*const bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*const bpf_map_update_elem)(void *map, const void *key, const void *value,
					 __u64 flags) = (void *)2;
static long (*const bpf_map_delete_elem)(void *map, const void *key) = (void *)3;
static __u64 (*const bpf_ktime_get_ns)(void) = (void *)5;
static __u64 (*const bpf_get_current_pid_tgid)(void) = (void *)14;
static long (*const bpf_get_current_comm)(void *buf, __u32 size) = (void *)16;
static long (*const bpf_get_stackid)(void *ctx, void *map, __u64 flags) = (void *)27;
/* In tracing programs: the socket's cookie (generated on first use, the same number
 * sock_diag reports), for a BTF sock pointer. */
static __u64 (*const bpf_get_socket_cookie)(const void *sk) = (void *)46;
static __u64 (*const bpf_ktime_get_boot_ns)(void) = (void *)125;
static long (*const bpf_probe_read_kernel)(void *dst, __u32 size, const void *unsafe_ptr) =
	(void *)113;
static long (*const bpf_seq_write)(struct seq_file *m, const void *data, __u32 len) = (void *)127;
static void *(*const bpf_ringbuf_reserve)(void *ringbuf, __u64 size, __u64 flags) = (void *)131;
static void (*const bpf_ringbuf_submit)(void *data, __u64 flags) = (void *)132;
static struct task_struct *(*const bpf_get_current_task_btf)(void) = (void *)158;
/* fexit only: the traced function's argument n, and its return value, wherever the
 * function's signature puts them (Linux 5.17). */
static long (*const bpf_get_func_arg)(void *ctx, __u32 n, __u64 *value) = (void *)183;
static long (*const bpf_get_func_ret)(void *ctx, __u64 *value) = (void *)184;

#endif
