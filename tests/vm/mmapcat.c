/* mmapcat FILE: write FILE's bytes to stdout, read through a shared read-only mapping
 * (exercises the 9P client's page-cache path rather than read(2)). Built static at test time. */
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: mmapcat FILE\n"); return 2; }
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) { perror("open"); return 1; }
    struct stat st;
    if (fstat(fd, &st) < 0) { perror("fstat"); return 1; }
    if (st.st_size == 0) return 0;
    const char *p = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    for (off_t done = 0; done < st.st_size;) {
        ssize_t n = write(1, p + done, st.st_size - done > (1 << 20) ? (1 << 20) : st.st_size - done);
        if (n <= 0) { perror("write"); return 1; }
        done += n;
    }
    return 0;
}
