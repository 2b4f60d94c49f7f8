/*
 * bench/syscalls.c: what the system calls exitsim's workloads make, and the pieces of
 * the exit path that user space can time, cost on this machine. Built and run by
 * bench/syscalls.py (cc -O2), which turns the figures into cost-profile entries.
 *
 * Every figure is a median: a loop of N calls is timed with CLOCK_MONOTONIC, REPS
 * times, and the median loop time divided by N is printed, in nanoseconds per call.
 * The exit-path figures fork a child per sample: the child does its set-up (opens N
 * files, or takes a SysV semaphore with or without SEM_UNDO), writes a time stamp into
 * a shared page and _exits; the parent takes the time when waitpid returns. Each loop
 * of exits gives the median of its exits, and the kinds of exit take turns. The
 * difference of two such figures is the cost of what differs at exit. Everything runs
 * on one CPU (the first this process may use).
 *
 * Usage: syscalls [-q] [DIR]   (-q: few iterations, a smoke run for the tests; the
 * files it times live in a new directory under DIR, /tmp by default, removed at exit)
 * Output: one line per figure, "name<TAB>ns<TAB>what", ns with one decimal.
 *
 * This is Linux: the same work as OpenBSD's calls and exit1 steps, without OpenBSD's
 * kernel lock. Written for exitsim; no OpenBSD or Linux source is copied here.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sem.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REPS 7
#define BATCH 256      /* descriptors opened, then closed, per timed batch */
#define EXIT_FILES 64  /* files the child holds open at exit, against none */
#define NDIRENTS 8     /* entries of the small directory, besides . and .. */

static const char *FILE_PATH = "a/b/c/file";  /* three directories deep */
static const char *LINK_PATH = "a/b/c/link";  /* a symbolic link to "file" */
static const char *DIR_PATH = "a/b/c/d";      /* a small directory */

static long n_calls = 100000;  /* per timed loop */
static long n_forks = 1000;    /* per timed loop of exits */
static int file_fd = -1, null_fd = -1, append_fd = -1;
static int sem_id = -1;
static char base[4096];  /* the directory the files live in, made by mkdtemp */
static int tree_made;
static char buf[65536];
static volatile double *stamp;  /* shared with the forked children */

static void die(const char *what) {
	fprintf(stderr, "syscalls: %s: %s\n", what, strerror(errno));
	exit(1);
}

static double now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double median(double *v, int n) {
	qsort(v, n, sizeof *v, cmp_double);
	return v[n / 2];
}

static void emit(const char *name, double ns, const char *what) {
	printf("%s\t%.1f\t%s\n", name, ns, what);
	fflush(stdout);
}

/* -- loops of one kind of call ------------------------------------------------------ */

typedef void (*loop_fn)(long n);

static void loop_getpid(long n) {
	for (long i = 0; i < n; i++)
		syscall(SYS_getpid);  /* not the C library's, which may cache it */
}

static void loop_open_close(long n) {
	for (long i = 0; i < n; i++) {
		int fd = open(FILE_PATH, O_RDONLY);
		if (fd < 0)
			die("open");
		close(fd);
	}
}

static void loop_stat(long n) {
	struct stat st;
	for (long i = 0; i < n; i++)
		if (stat(FILE_PATH, &st) < 0)
			die("stat");
}

static void loop_lstat(long n) {
	struct stat st;
	for (long i = 0; i < n; i++)
		if (lstat(FILE_PATH, &st) < 0)
			die("lstat");
}

static void loop_fstat(long n) {
	struct stat st;
	for (long i = 0; i < n; i++)
		if (fstat(file_fd, &st) < 0)
			die("fstat");
}

static void loop_access(long n) {
	for (long i = 0; i < n; i++)
		if (access(FILE_PATH, R_OK) < 0)
			die("access");
}

static void loop_readlink(long n) {
	char target[64];
	for (long i = 0; i < n; i++)
		if (readlink(LINK_PATH, target, sizeof target) < 0)
			die("readlink");
}

static void loop_getdents(long n) {
	for (long i = 0; i < n; i++) {
		int fd = open(DIR_PATH, O_RDONLY | O_DIRECTORY);
		if (fd < 0)
			die("open dir");
		if (syscall(SYS_getdents64, fd, buf, sizeof buf) <= 0)
			die("getdents64");
		close(fd);
	}
}

static void loop_dup_close(long n) {
	for (long i = 0; i < n; i++) {
		int fd = dup(file_fd);
		if (fd < 0)
			die("dup");
		close(fd);
	}
}

static void loop_pread(long n) {
	for (long i = 0; i < n; i++)
		if (pread(file_fd, buf, 4096, 0) != 4096)
			die("pread");
}

static void loop_write_null(long n) {
	for (long i = 0; i < n; i++)
		if (write(null_fd, buf, 4096) != 4096)
			die("write /dev/null");
}

static void loop_append(long n) {
	/* Emptied once per loop, so the file stays a few MiB; one ftruncate per n
	 * writes is in the timed loop, a few ns a call at most. */
	if (ftruncate(append_fd, 0) < 0)
		die("ftruncate");
	for (long i = 0; i < n; i++)
		if (write(append_fd, buf, 64) != 64)
			die("append");
}

static const struct itimerval ITIMER_OFF = {{0, 0}, {0, 0}};
static const struct itimerval ITIMER_ON = {{0, 0}, {1000, 0}};

static void loop_itimer_off(long n) {
	for (long i = 0; i < n; i++)
		setitimer(ITIMER_REAL, &ITIMER_OFF, NULL);
}

static void loop_itimer_on_off(long n) {
	for (long i = 0; i < n; i++) {
		setitimer(ITIMER_REAL, &ITIMER_ON, NULL);
		setitimer(ITIMER_REAL, &ITIMER_OFF, NULL);
	}
}

/* The median over REPS of a loop of n calls, per call. */
static double per_call(loop_fn f, long n) {
	double v[REPS];
	f(n / 10 + 1);  /* warm the caches and the name cache */
	for (int r = 0; r < REPS; r++) {
		double t0 = now_ns();
		f(n);
		v[r] = (now_ns() - t0) / (double)n;
	}
	return median(v, REPS);
}

/* open and close apart: BATCH opens timed, then their BATCH closes timed (each the
 * last reference to its file), for n of each; the median over REPS of each. */
static void open_and_close(long n, double *open_ns, double *close_ns) {
	double vo[REPS], vc[REPS];
	int fds[BATCH];
	long batches = n / BATCH > 0 ? n / BATCH : 1;
	for (int r = 0; r < REPS; r++) {
		double to = 0, tc = 0;
		for (long b = 0; b < batches; b++) {
			double t0 = now_ns();
			for (int i = 0; i < BATCH; i++)
				if ((fds[i] = open(FILE_PATH, O_RDONLY)) < 0)
					die("open");
			double t1 = now_ns();
			for (int i = 0; i < BATCH; i++)
				close(fds[i]);
			tc += now_ns() - t1;
			to += t1 - t0;
		}
		vo[r] = to / (double)(batches * BATCH);
		vc[r] = tc / (double)(batches * BATCH);
	}
	*open_ns = median(vo, REPS);
	*close_ns = median(vc, REPS);
}

/* -- exits ------------------------------------------------------------------------ */

enum sem_mode { SEM_NONE, SEM_PLAIN, SEM_WITH_UNDO };

static void child(int nfiles, enum sem_mode sm) {
	for (int i = 0; i < nfiles; i++)
		if (open(FILE_PATH, O_RDONLY) < 0)
			_exit(2);
	if (sm == SEM_WITH_UNDO) {
		struct sembuf up = {0, 1, SEM_UNDO};
		if (semop(sem_id, &up, 1) < 0)
			_exit(3);
	} else if (sm == SEM_PLAIN) {
		/* The same semop, undone by hand, so the set-up matches and nothing is
		 * left for exit to undo. */
		struct sembuf up = {0, 1, 0}, down = {0, -1, 0};
		if (semop(sem_id, &up, 1) < 0 || semop(sem_id, &down, 1) < 0)
			_exit(3);
	}
	/* Let the parent go to sleep in waitpid first (one CPU), so the figure is the exit
	 * and the parent's wakeup, whatever the set-up took. */
	sched_yield();
	*stamp = now_ns();
	_exit(0);
}

/* One way of exiting: the files the child opens and what it does with a semaphore. */
struct exit_kind {
	const char *name;
	int nfiles;
	enum sem_mode sm;
	const char *what;
};

static double one_exit(const struct exit_kind *e) {
	int status;
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0)
		child(e->nfiles, e->sm);
	if (waitpid(pid, &status, 0) != pid)
		die("waitpid");
	double t = now_ns();
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "syscalls: child failed (status %d)\n", status);
		exit(1);
	}
	return t - *stamp;
}

/* From the child's last instruction before _exit to waitpid's return in the parent,
 * per exit, for each kind: the median over REPS loops of n_forks exits of each kind,
 * each loop's figure the median of its exits (an exit now and then waits for something
 * else on the CPU). The kinds take turns exit by exit, so a drift of the machine's
 * speed over the run moves them all alike. */
static void exits(const struct exit_kind *kinds, int nk, double *out) {
	double v[8][REPS];
	double *each = malloc(sizeof *each * (size_t)n_forks * (size_t)nk);
	if (each == NULL || nk > 8)
		die("exits");
	for (int r = -1; r < REPS; r++) {  /* r = -1: a warm-up loop */
		long n = r < 0 ? n_forks / 10 + 1 : n_forks;
		for (long i = 0; i < n; i++)
			for (int k = 0; k < nk; k++)
				each[k * n_forks + i] = one_exit(&kinds[k]);
		if (r >= 0)
			for (int k = 0; k < nk; k++)
				v[k][r] = median(each + k * n_forks, (int)n);
	}
	for (int k = 0; k < nk; k++)
		out[k] = median(v[k], REPS);
	free(each);
}

/* -- set-up ----------------------------------------------------------------------- */

static void remove_tree(void);

/* The files, in a new directory under dir; removed at exit, also after a failure. */
static void make_tree(const char *dir) {
	char name[32];
	if (snprintf(base, sizeof base, "%s/exitsim-syscalls.XXXXXX", dir) >= (int)sizeof base)
		die("directory name too long");
	if (mkdtemp(base) == NULL)
		die("mkdtemp");
	tree_made = 1;
	atexit(remove_tree);
	if (chdir(base) < 0)
		die("chdir");
	if (mkdir("a", 0755) < 0 || mkdir("a/b", 0755) < 0 || mkdir("a/b/c", 0755) < 0 ||
	    mkdir(DIR_PATH, 0755) < 0)
		die("mkdir");
	int fd = open(FILE_PATH, O_RDWR | O_CREAT | O_EXCL, 0644);
	if (fd < 0)
		die("create file");
	memset(buf, 'x', 8192);
	if (write(fd, buf, 8192) != 8192)
		die("write file");
	close(fd);
	if (symlink("file", LINK_PATH) < 0)
		die("symlink");
	for (int i = 0; i < NDIRENTS; i++) {
		snprintf(name, sizeof name, "%s/e%d", DIR_PATH, i);
		if ((fd = open(name, O_WRONLY | O_CREAT | O_EXCL, 0644)) < 0)
			die("create entry");
		close(fd);
	}
	if ((append_fd = open("a/acct", O_WRONLY | O_CREAT | O_APPEND, 0644)) < 0)
		die("create append file");
	if ((file_fd = open(FILE_PATH, O_RDONLY)) < 0)
		die("open file");
	if ((null_fd = open("/dev/null", O_WRONLY)) < 0)
		die("open /dev/null");
}

static void remove_tree(void) {
	char name[64];
	if (sem_id >= 0)
		semctl(sem_id, 0, IPC_RMID);
	sem_id = -1;
	if (!tree_made || chdir(base) < 0)
		return;
	tree_made = 0;
	close(file_fd);
	close(null_fd);
	close(append_fd);
	for (int i = 0; i < NDIRENTS; i++) {
		snprintf(name, sizeof name, "%s/e%d", DIR_PATH, i);
		unlink(name);
	}
	unlink("a/acct");
	unlink(LINK_PATH);
	unlink(FILE_PATH);
	rmdir(DIR_PATH);
	rmdir("a/b/c");
	rmdir("a/b");
	rmdir("a");
	if (chdir("/") == 0)
		rmdir(base);
}

int main(int argc, char **argv) {
	int a = 1;
	if (a < argc && strcmp(argv[a], "-q") == 0) {
		n_calls = 2000;
		n_forks = 50;
		a++;
	}
	const char *dir = a < argc ? argv[a++] : "/tmp";
	if (a < argc || dir[0] == '-') {
		fprintf(stderr, "usage: syscalls [-q] [DIR]\n");
		return 2;
	}
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < BATCH + EXIT_FILES + 16) {
		fprintf(stderr, "syscalls: needs %d open files (ulimit -n)\n", BATCH + EXIT_FILES + 16);
		return 1;
	}
	/* One CPU for everything: a child's exit then wakes its parent on the same CPU,
	 * with no cross-CPU wakeup in the figure, and the loops do not migrate. */
	cpu_set_t allowed, one;
	int cpu = 0;
	if (sched_getaffinity(0, sizeof allowed, &allowed) < 0)
		die("sched_getaffinity");
	while (cpu < CPU_SETSIZE - 1 && !CPU_ISSET(cpu, &allowed))
		cpu++;
	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	if (sched_setaffinity(0, sizeof one, &one) < 0)
		die("sched_setaffinity");
	stamp = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (stamp == MAP_FAILED)
		die("mmap");
	make_tree(dir);

	double o, c;
	emit("getpid", per_call(loop_getpid, n_calls), "getpid(2): entry and return only");
	emit("open_close", per_call(loop_open_close, n_calls),
	     "open+close of a file three directories deep");
	open_and_close(n_calls, &o, &c);
	emit("open", o, "open(2) of that file, alone (batches of 256)");
	emit("close", c, "close(2) of a file, the last reference, alone (batches of 256)");
	emit("stat", per_call(loop_stat, n_calls), "stat(2) of that file");
	emit("lstat", per_call(loop_lstat, n_calls), "lstat(2) of that file");
	emit("fstat", per_call(loop_fstat, n_calls), "fstat(2) of an open file");
	emit("access", per_call(loop_access, n_calls), "access(2, R_OK) of that file");
	emit("readlink", per_call(loop_readlink, n_calls), "readlink(2) of a link beside it");
	emit("getdents", per_call(loop_getdents, n_calls),
	     "open+getdents64+close of a directory of 8 entries, three deep");
	emit("dup_close", per_call(loop_dup_close, n_calls), "dup(2)+close(2) of an open file");
	emit("read4k", per_call(loop_pread, n_calls), "pread(2) of 4 KiB of a cached file");
	emit("write_null", per_call(loop_write_null, n_calls), "write(2) of 4 KiB to /dev/null");
	emit("append64", per_call(loop_append, n_calls),
	     "write(2) of 64 bytes to a regular file opened O_APPEND");
	emit("itimer_off", per_call(loop_itimer_off, n_calls),
	     "setitimer(ITIMER_REAL, 0) of a timer not armed");
	emit("itimer_on_off", per_call(loop_itimer_on_off, n_calls),
	     "setitimer(ITIMER_REAL) on, then off (two calls)");
	static const struct exit_kind kinds[] = {
	    {"exit_files0", 0, SEM_NONE,
	     "child _exit holding only what it inherited, to the parent's waitpid return"},
	    {"exit_files64", EXIT_FILES, SEM_NONE,
	     "the same with 64 more files open (one struct file each, the last reference)"},
	    {"exit_sem_plain", 0, SEM_PLAIN,
	     "the same after a semop without SEM_UNDO (nothing to undo)"},
	    {"exit_sem_undo", 0, SEM_WITH_UNDO,
	     "the same after a semop with SEM_UNDO (one adjustment undone at exit)"},
	};
	int nk = (int)(sizeof kinds / sizeof kinds[0]);
	double out[8];
	/* The semaphore lives only as long as the exits need it. */
	if ((sem_id = semget(IPC_PRIVATE, 1, IPC_CREAT | 0600)) < 0)
		die("semget");
	exits(kinds, nk, out);
	semctl(sem_id, 0, IPC_RMID);
	sem_id = -1;
	for (int k = 0; k < nk; k++)
		emit(kinds[k].name, out[k], kinds[k].what);
	remove_tree();
	return 0;
}
