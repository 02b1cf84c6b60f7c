/* fdrelay PORT CMD...: connect a virtio-serial port to a unix socketpair and run CMD with the
 * other end of the pair as descriptor 3 (for `mount -t 9p -o trans=fd,rfdno=3,wfdno=3`).
 *
 * Why: the kernel's trans=fd needs ->read_iter/->write_iter, which virtio ports lack, so a
 * user-space relay is needed; and relaying through FIFOs stalls as soon as a 9P message is
 * larger than a pipe buffer (64 KiB: the kernel never resumes after a partial write to a full
 * pipe). Sockets are what trans=tcp uses underneath, so trans=fd on a socket behaves the same.
 * The relay runs in a child process until either side closes. Built static by build.sh. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF (512 * 1024)

struct dir { int from, to; char *buf; size_t len, off; };

/* Move what can move without blocking; returns -1 when the source is closed or broken. */
static int pump(struct dir *d, short rev_from, short rev_to) {
    if (d->len == 0 && (rev_from & (POLLIN | POLLHUP))) {
        ssize_t n = read(d->from, d->buf, BUF);
        if (n == 0) return -1;
        if (n < 0) return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
        d->len = n; d->off = 0;
    }
    if (d->len > 0 && (rev_to & POLLOUT || rev_from & POLLIN)) {
        ssize_t n = write(d->to, d->buf + d->off, d->len - d->off);
        if (n < 0) return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
        d->off += n;
        if (d->off == d->len) d->len = d->off = 0;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: fdrelay PORT CMD...\n"); return 2; }
    int port = open(argv[1], O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (port < 0) { perror("fdrelay: open port"); return 1; }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) { perror("fdrelay: socketpair"); return 1; }
    pid_t pid = fork();
    if (pid < 0) { perror("fdrelay: fork"); return 1; }
    if (pid > 0) { /* the command, with the socket as fd 3 */
        close(port); close(sv[1]);
        if (sv[0] != 3) { dup2(sv[0], 3); close(sv[0]); }
        execvp(argv[2], argv + 2);
        perror("fdrelay: exec");
        return 1;
    }
    close(sv[0]);
    setsid();
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
    struct dir up = { sv[1], port, malloc(BUF), 0, 0 };   /* guest kernel -> host server */
    struct dir down = { port, sv[1], malloc(BUF), 0, 0 }; /* host server -> guest kernel */
    for (;;) {
        struct pollfd p[2] = { { sv[1], 0, 0 }, { port, 0, 0 } };
        if (up.len == 0) p[0].events |= POLLIN; else p[1].events |= POLLOUT;
        if (down.len == 0) p[1].events |= POLLIN; else p[0].events |= POLLOUT;
        if (poll(p, 2, -1) < 0 && errno != EINTR) return 1;
        if (pump(&up, p[0].revents, p[1].revents) < 0) return 0;
        if (pump(&down, p[1].revents, p[0].revents) < 0) return 0;
    }
}
