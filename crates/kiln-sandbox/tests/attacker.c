/*
 * A hostile RUN step, for kiln-sandbox's confinement tests: makes the system calls a shell
 * cannot make. `attacker PROBE [ARG]` tries one thing and prints `PROBE: ok` when it worked or
 * `PROBE: refused: <error>` when it did not, then exits 0 (2 for an unknown probe). The tests
 * build it with the host's gcc (`gcc -static`) and put it in the rootfs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/keyctl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static int report(const char *probe, long result)
{
	if (result < 0)
		printf("%s: refused: %s\n", probe, strerror(errno));
	else
		printf("%s: ok\n", probe);
	return 0;
}

/* A child made by a raw clone ends at once; the parent reaps it. */
static long reap(long pid)
{
	if (pid == 0)
		_exit(0);
	if (pid > 0)
		waitpid((pid_t)pid, NULL, 0);
	return pid;
}

#ifdef __x86_64__
/* The i386 ABI from a 64-bit process: seccomp sees AUDIT_ARCH_I386, as for a linux/386
 * binary. Pointer arguments would be cut to 32 bits, so only numbers are passed. */
static long ia32_syscall(long nr, long arg1)
{
	long result;
	__asm__ volatile("int $0x80"
			 : "=a"(result)
			 : "a"(nr), "b"(arg1)
			 : "memory", "r8", "r9", "r10", "r11");
	if (result < 0 && result > -4096) {
		errno = (int)-result;
		return -1;
	}
	return result;
}
#endif

int main(int argc, char **argv)
{
	const char *probe = argc > 1 ? argv[1] : "";
	const char *arg = argc > 2 ? argv[2] : "";
	setvbuf(stdout, NULL, _IOLBF, 0);

	if (!strcmp(probe, "add_key"))
		return report(probe, syscall(SYS_add_key, "user", "kiln-attacker", "x", 1,
					     KEY_SPEC_SESSION_KEYRING));
	if (!strcmp(probe, "keyctl"))
		return report(probe, syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING,
					     "kiln-attacker"));
	if (!strcmp(probe, "tiocsti")) {
		/* Keystrokes pushed into kiln's terminal would be read by the user's shell. */
		int tty = open("/dev/tty", O_RDWR | O_NOCTTY);
		if (tty < 0)
			return report(probe, tty);
		long result = 0;
		for (const char *c = arg; *c && result == 0; c++)
			result = ioctl(tty, TIOCSTI, c);
		if (result == 0)
			result = ioctl(tty, TIOCSTI, "\n");
		return report(probe, result);
	}
	if (!strcmp(probe, "ptrace"))
		return report(probe, ptrace(PTRACE_ATTACH, (pid_t)atol(arg), 0, 0));
	if (!strcmp(probe, "init_module")) {
		static char image[64];
		return report(probe, syscall(SYS_init_module, image, sizeof image, ""));
	}
	if (!strcmp(probe, "finit_module")) {
		int self = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
		return report(probe, syscall(SYS_finit_module, self, "", 0));
	}
	if (!strcmp(probe, "unshare"))
		return report(probe, unshare(CLONE_NEWUSER | CLONE_NEWNS));
	if (!strcmp(probe, "clone_newuser"))
		return report(probe, reap(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)));
	if (!strcmp(probe, "clone3")) {
		struct clone_args args = {.exit_signal = SIGCHLD};
		return report(probe, reap(syscall(SYS_clone3, &args, sizeof args)));
	}
	if (!strcmp(probe, "io_uring")) {
		/* io_uring's submissions are not seen by seccomp. */
		static char params[120];
		long ring = syscall(SYS_io_uring_setup, 1, params);
		if (ring >= 0)
			close((int)ring);
		return report(probe, ring);
	}
	if (!strcmp(probe, "connect")) {
		/* Not an attack: what an ssh client does with a mounted agent socket. */
		struct sockaddr_un addr = {.sun_family = AF_UNIX};
		strncpy(addr.sun_path, arg, sizeof addr.sun_path - 1);
		int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0)
			return report(probe, -1);
		char line[64] = {0};
		long got = read(sock, line, sizeof line - 1);
		if (got > 0)
			printf("%s: ok %s", probe, line);
		return got > 0 ? 0 : report(probe, -1);
	}
	if (!strcmp(probe, "fork"))
		return report(probe, reap(fork()));
#ifdef __x86_64__
	if (!strcmp(probe, "ia32_getpid"))
		return report(probe, ia32_syscall(20, 0));
	if (!strcmp(probe, "ia32_unshare"))
		return report(probe, ia32_syscall(310, CLONE_NEWUSER));
#endif
	fprintf(stderr, "attacker: unknown probe %s\n", probe);
	return 2;
}
