/* The few kernel types and BPF helpers owners.bpf.c uses, written by hand instead of a
 * generated vmlinux.h or libbpf's headers.
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

#define SEC(name) __attribute__((section(name), used))
#define CORE __attribute__((preserve_access_index))

/* include/uapi/linux/stat.h */
#define S_IFMT 00170000
#define S_IFSOCK 0140000

/* include/linux/pid_namespace.h: MAX_PID_NS_LEVEL */
#define MAX_PID_NS_LEVEL 32

/* __builtin_preserve_field_info kinds (libbpf's bpf_core_read.h, enum bpf_field_info_kind) */
#define BPF_FIELD_BYTE_OFFSET 0

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

struct task_struct {
	int pid;  /* thread id, initial pid namespace */
	int tgid; /* process id, initial pid namespace */
	struct pid *thread_pid;
	struct nsproxy *nsproxy; /* NULL once the task has started to exit */
} CORE;

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

/* Helpers, by their ids in enum bpf_func_id (include/uapi/linux/bpf.h). */
static long (*const bpf_probe_read_kernel)(void *dst, __u32 size, const void *unsafe_ptr) =
	(void *)113;
static long (*const bpf_seq_write)(struct seq_file *m, const void *data, __u32 len) = (void *)127;
static struct task_struct *(*const bpf_get_current_task_btf)(void) = (void *)158;

#endif
