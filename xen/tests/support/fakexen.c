/*
 * fakexen: an LD_PRELOAD library that lets the real C xenstored (Debian xen-utils-4.17,
 * /usr/lib/xen-4.17/bin/xenstored) run as an ordinary process on a host without Xen, for
 * Envoy's tests (written against 4.17's imports; 4.20's are covered too but untested). Compiled
 * at test time by xen/tests/support/mod.rs:
 *
 *     cc -shared -fPIC -O2 -Wall -o fakexen.so fakexen.c -ldl
 *
 * It replaces the hypervisor calls xenstored imports from libxenctrl, libxenevtchn and
 * libxengnttab, all relative to the directory $FAKEXEN_DIR:
 *
 * - /proc/xen/xsd_port and /proc/xen/xsd_kva (dom0's xenstore event channel and ring page) are
 *   opened as $FAKEXEN_DIR/xsd_port and $FAKEXEN_DIR/xsd_kva;
 * - every domid exists and is running (xc_domain_getinfo, and 4.20's xc_domain_getinfo_single),
 *   so permissions may name any domain;
 * - event channels: one FIFO, $FAKEXEN_DIR/evtchn, created here and polled by xenstored. Any
 *   byte written to it by a test wakes xenstored, which then looks at every ring; pending()
 *   reports the last port bound to a domain (never -1: xenstored exits on that). Notifications
 *   from xenstored go nowhere: a test's guest polls its ring;
 * - grant mapping: the xenstore ring of domain D (XS_INTRODUCE) is $FAKEXEN_DIR/ring-D mapped
 *   shared when that file exists (a test mmaps the same file and plays the guest), otherwise a
 *   fresh zeroed page.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xenctrl.h>
#include <xenevtchn.h>
#include <xengnttab.h>

#define PAGE 4096

static const char *fx_dir(void)
{
    const char *d = getenv("FAKEXEN_DIR");
    return d && *d ? d : "/tmp/fakexen";
}

static void fx_path(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "%s/%s", fx_dir(), name);
}

/* ---------------------------------------------------------------- open() redirection */

static const char *fx_redirect(const char *path, char *buf, size_t n)
{
    if (path && strcmp(path, "/proc/xen/xsd_port") == 0) {
        fx_path(buf, n, "xsd_port");
        return buf;
    }
    if (path && strcmp(path, "/proc/xen/xsd_kva") == 0) {
        fx_path(buf, n, "xsd_kva");
        return buf;
    }
    return path;
}

typedef int (*open_fn)(const char *, int, ...);

static int fx_open(const char *sym, const char *path, int flags, mode_t mode)
{
    open_fn real = (open_fn)dlsym(RTLD_NEXT, sym);
    char buf[4096];
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    return real(fx_redirect(path, buf, sizeof buf), flags, mode);
}

static mode_t fx_mode(int flags, va_list ap)
{
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = fx_mode(flags, ap);
    va_end(ap);
    return fx_open("open", path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = fx_mode(flags, ap);
    va_end(ap);
    return fx_open("open64", path, flags, mode);
}

/* ---------------------------------------------------------------- libxenctrl */

static int fx_xc_token;

xc_interface *xc_interface_open(xentoollog_logger *logger, xentoollog_logger *dombuild_logger,
                                unsigned open_flags)
{
    (void)logger;
    (void)dombuild_logger;
    (void)open_flags;
    return (xc_interface *)&fx_xc_token;
}

int xc_interface_close(xc_interface *xch)
{
    (void)xch;
    return 0;
}

int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid, unsigned int max_doms,
                      xc_dominfo_t *info)
{
    (void)xch;
    if (max_doms == 0)
        return 0;
    memset(info, 0, sizeof *info);
    info->domid = first_domid;
    info->running = 1;
    return 1;
}

/* Xen 4.20's xenstored asks this instead (0 = the domain exists; zeroed flags = running). */
int xc_domain_getinfo_single(xc_interface *xch, uint32_t domid, xc_domaininfo_t *info)
{
    (void)xch;
    if (info) {
        memset(info, 0, sizeof *info);
        info->domain = domid;
    }
    return 0;
}

/* ---------------------------------------------------------------- libxenevtchn */

struct xenevtchn_handle {
    int fd;                 /* the FIFO, read side (opened read-write so it never sees EOF) */
    evtchn_port_t next;     /* next local port to hand out */
    evtchn_port_t last_dom; /* last port bound to a domain (reported by pending) */
};

xenevtchn_handle *xenevtchn_open(xentoollog_logger *logger, unsigned open_flags)
{
    (void)logger;
    (void)open_flags;
    char path[4096];
    fx_path(path, sizeof path, "evtchn");
    if (mkfifo(path, 0600) != 0 && errno != EEXIST)
        return NULL;
    xenevtchn_handle *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->fd = fx_open("open", path, O_RDWR | O_NONBLOCK | O_CLOEXEC, 0);
    if (h->fd < 0) {
        free(h);
        return NULL;
    }
    h->next = 1;
    return h;
}

xenevtchn_handle *xenevtchn_fdopen(xentoollog_logger *logger, int fd, unsigned open_flags)
{
    (void)fd;
    return xenevtchn_open(logger, open_flags);
}

int xenevtchn_close(xenevtchn_handle *h)
{
    if (h) {
        close(h->fd);
        free(h);
    }
    return 0;
}

int xenevtchn_fd(xenevtchn_handle *h)
{
    return h->fd;
}

xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *h, unsigned int virq)
{
    (void)virq;
    return h->next++;
}

xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *h, uint32_t domid,
                                                     evtchn_port_t remote_port)
{
    (void)domid;
    (void)remote_port;
    h->last_dom = h->next++;
    return h->last_dom;
}

int xenevtchn_notify(xenevtchn_handle *h, evtchn_port_t port)
{
    (void)h;
    (void)port;
    return 0;
}

xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *h)
{
    char drain[256];
    while (read(h->fd, drain, sizeof drain) > 0)
        ;
    return h->last_dom;
}

int xenevtchn_unmask(xenevtchn_handle *h, evtchn_port_t port)
{
    (void)h;
    (void)port;
    return 0;
}

int xenevtchn_unbind(xenevtchn_handle *h, evtchn_port_t port)
{
    (void)h;
    (void)port;
    return 0;
}

/* ---------------------------------------------------------------- libxengnttab */

static int fx_gnttab_token;

xengnttab_handle *xengnttab_open(xentoollog_logger *logger, unsigned open_flags)
{
    (void)logger;
    (void)open_flags;
    return (xengnttab_handle *)&fx_gnttab_token;
}

int xengnttab_close(xengnttab_handle *xgt)
{
    (void)xgt;
    return 0;
}

int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t nr_grants)
{
    (void)xgt;
    (void)nr_grants;
    return 0;
}

void *xengnttab_map_grant_ref(xengnttab_handle *xgt, uint32_t domid, uint32_t ref, int prot)
{
    (void)xgt;
    (void)ref;
    char name[64], path[4096];
    snprintf(name, sizeof name, "ring-%u", domid);
    fx_path(path, sizeof path, name);
    int fd = fx_open("open", path, O_RDWR | O_CLOEXEC, 0);
    void *p;
    if (fd >= 0) {
        p = mmap(NULL, PAGE, prot, MAP_SHARED, fd, 0);
        close(fd);
    } else {
        p = mmap(NULL, PAGE, prot, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    }
    return p == MAP_FAILED ? NULL : p;
}

int xengnttab_unmap(xengnttab_handle *xgt, void *start_address, uint32_t count)
{
    (void)xgt;
    return munmap(start_address, (size_t)count * PAGE);
}
