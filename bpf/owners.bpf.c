/* Socket owner scan in the kernel: two BPF iterators that dump fixed-size records,
 * read by src/collect/procfs/bpf_owners.rs, which joins them on the global tgid.
 *
 *   owner_files      (iter/task_file)  one file_record per open file of every process
 *   owner_processes  (iter/task)       one process_record per process
 *
 * Both visit only tasks visible in the pid namespace of the process that reads the
 * iterator (the kernel's task iterators walk that namespace). Built by build.rs with
 * `clang -target bpf -O2 -g`; -g emits the BTF that CO-RE relocation needs.
 *
 * This replaces readdir + readlink over /proc/PID/fd, where procfs builds a dentry and
 * formats a "socket:[N]" string per descriptor; here the kernel copies 24 bytes.
 */
#include "kernel.h"

/* bpf_seq_write is GPL-only. */
char LICENSE[] SEC("license") = "GPL";

/* Record layouts: keep in sync with FileRecord / ProcessRecord in bpf_owners.rs. */
struct file_record {
	__u64 ino;       /* sockets: inode number, the N of "socket:[N]"; others: 0 */
	__u32 tgid;      /* process id in the initial pid namespace */
	__u32 fd;        /* descriptor number */
	__u32 is_socket; /* 1: a socket (what /proc shows as socket:[N]); 0: anything else */
	__u32 reserved;  /* 0 */
};

struct process_record {
	__u32 tgid;     /* process id in the initial pid namespace: the join key */
	__u32 pid;      /* process id in the reader's pid namespace: what its /proc shows */
	__u32 netns;    /* inode of the network namespace; 0 once the task is exiting */
	__u32 reserved; /* 0 */
};

SEC("iter/task_file")
int owner_files(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;

	if (!task || !file)
		return 0; /* the final call after the last file */

	/* /proc/PID/fd lists the group leader's descriptor table. The kernel already
	 * skips threads that share it (task_file_seq_get_next, skip_if_dup_files); a
	 * thread with a table of its own (clone without CLONE_FILES, or a leader that
	 * left with pthread_exit) is skipped here too, so both scans see the same
	 * descriptors and no (process, fd) pair is reported twice. */
	if (task->pid != task->tgid)
		return 0;

	/* A socket is a sockfs file: S_IFSOCK inode, private_data its struct socket
	 * (sock_alloc_file). An O_PATH descriptor of a bound AF_UNIX path also has an
	 * S_IFSOCK inode, on the path's filesystem, but no private_data; /proc shows it
	 * as the path, so it is not a socket here either. */
	struct inode *inode = file->f_inode;
	int is_socket = (inode->i_mode & S_IFMT) == S_IFSOCK && file->private_data;
	struct file_record r = {
		/* i_ino is a cache line away from i_mode: read only when needed. */
		.ino = is_socket ? inode->i_ino : 0,
		.tgid = (__u32)task->tgid,
		.fd = ctx->fd,
		.is_socket = is_socket,
		.reserved = 0,
	};
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

SEC("iter/task")
int owner_processes(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;

	if (!task)
		return 0;
	if (task->pid != task->tgid)
		return 0; /* threads: /proc lists processes */

	/* The reader's pid namespace level: task->tgid is the pid in the initial
	 * namespace, but tcpdoctor may run in a child namespace (a container, or
	 * `unshare --pid`), where /proc shows pid->numbers[level].nr. The level is taken
	 * from the reading task (current) rather than from userspace: /proc/self/status
	 * NSpid counts levels from the namespace of the /proc mount, not from level 0. */
	struct task_struct *me = bpf_get_current_task_btf();
	unsigned int level = me->thread_pid->level;
	if (level > MAX_PID_NS_LEVEL)
		return 0;

	/* Variable-index reads go through bpf_probe_read_kernel on plain addresses: the
	 * verifier refuses variable offsets into BTF pointers. */
	unsigned long pid_addr = 0;
	if (bpf_probe_read_kernel(&pid_addr, sizeof(pid_addr), &task->thread_pid) || !pid_addr)
		return 0;
	struct pid *pid = (struct pid *)pid_addr;
	unsigned int task_level = 0;
	if (bpf_probe_read_kernel(&task_level, sizeof(task_level), &pid->level))
		return 0;
	if (task_level < level)
		return 0; /* not visible from our namespace; the iterator should not offer it */
	unsigned long numbers = pid_addr + __builtin_preserve_field_info(pid->numbers,
									 BPF_FIELD_BYTE_OFFSET);
	struct upid up = {};
	if (bpf_probe_read_kernel(&up, sizeof(up),
				  (const void *)(numbers + level * sizeof(struct upid))))
		return 0;

	struct nsproxy *nsp = task->nsproxy;
	struct process_record r = {
		.tgid = (__u32)task->tgid,
		.pid = (__u32)up.nr,
		.netns = nsp ? nsp->net_ns->ns.inum : 0,
		.reserved = 0,
	};
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}
