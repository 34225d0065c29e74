/* bench-reaper CMD [ARG...]: run CMD as a child subreaper (docs/performance.md).
 *
 * An MTA that forks per message (Exim: a delivery process per message,
 * left behind by the process that received it) leaves orphans that the
 * kernel hands to init, and the CPU time of an orphan reaped by init is in
 * nobody's cutime/cstime. With PR_SET_CHILD_SUBREAPER the orphans come to
 * this process instead, it waits for every one of them, and so its
 * cutime/cstime (which postern-bench --watch-pid adds for the process-group
 * leader) covers all of them. TERM, INT and HUP are passed on to CMD; it
 * exits when CMD and every adopted orphan have exited, with CMD's status. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile pid_t child = -1;

static void pass_on(int sig) {
    if (child > 0)
        kill(child, sig);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench-reaper CMD [ARG...]\n");
        return 2;
    }
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) {
        perror("bench-reaper: prctl(PR_SET_CHILD_SUBREAPER)");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = pass_on;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    child = fork();
    if (child < 0) {
        perror("bench-reaper: fork");
        return 2;
    }
    if (child == 0) {
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        execvp(argv[1], argv + 1);
        fprintf(stderr, "bench-reaper: %s: %s\n", argv[1], strerror(errno));
        _exit(127);
    }
    int rc = 0;
    for (;;) {
        int status;
        pid_t p = wait(&status);
        if (p < 0) {
            if (errno == EINTR)
                continue;
            break; /* ECHILD: nothing left */
        }
        if (p == child)
            rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    return rc;
}
