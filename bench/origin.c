/*
 * origin.c: a tiny benchmark origin for Portico's side-by-side benchmark.
 *
 * Single-threaded, epoll (level-triggered), HTTP/1.1 and HTTP/1.0 keep-alive.
 * Serves from memory:
 *   /small  13-byte body
 *   /64k    65536-byte body
 *   /1m     1 MiB body
 * anything else: 404. Methods other than GET/HEAD: 405.
 *
 * Correctness points:
 *  - partial writes: the unsent part of each response (head + body) is kept
 *    per connection and sent when the socket is writable again (EAGAIN);
 *  - while a response is pending the connection is not read, so input is
 *    bounded by one request head (BUF_SIZE) and a few discarded body bytes;
 *  - pipelined requests are answered in order (one at a time);
 *  - `Connection: close`, and HTTP/1.0 without `Connection: keep-alive`,
 *    close the connection once the response is fully written;
 *  - a request body announced by Content-Length is read and discarded;
 *    chunked request bodies are refused with 501 and the connection closed;
 *  - a request head larger than BUF_SIZE gets 431 and the connection closed.
 *
 * Build: gcc -O2 -Wall -o origin origin.c
 * Usage: origin PORT [BIND_ADDRESS]   (default address 127.0.0.1)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define BUF_SIZE 8192    /* max request head, and input buffer per connection */
#define HEAD_SIZE 256    /* response head buffer per connection */
#define MAX_EVENTS 512

struct body {
    const char *path;
    char *data;
    size_t len;
};

static struct body bodies[3];

struct conn {
    int fd;
    int close_after;          /* close once pending output is written */
    size_t in_len;            /* bytes in `in` */
    unsigned long long discard; /* request body bytes still to drop */
    /* pending output: head[head_off..head_len) then body[body_off..body_len) */
    size_t head_len, head_off;
    const char *body;
    size_t body_len, body_off;
    int want_out;             /* currently registered for EPOLLOUT */
    char in[BUF_SIZE];
    char head[HEAD_SIZE];
};

static int ep;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void conn_close(struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

static int pending(const struct conn *c) {
    return c->head_off < c->head_len || c->body_off < c->body_len;
}

/* Register for EPOLLIN when idle, EPOLLOUT while output is pending. */
static int set_interest(struct conn *c, int out) {
    if (out == c->want_out)
        return 0;
    struct epoll_event ev = {.events = out ? EPOLLOUT : EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        return -1;
    c->want_out = out;
    return 0;
}

static void respond(struct conn *c, int status, const char *reason,
                    const char *body, size_t len, int head_only) {
    int n = snprintf(c->head, sizeof c->head,
                     "HTTP/1.1 %d %s\r\n"
                     "Server: origin\r\n"
                     "Content-Type: text/plain\r\n"
                     "Content-Length: %zu\r\n"
                     "%s"
                     "\r\n",
                     status, reason, len,
                     c->close_after ? "Connection: close\r\n" : "");
    c->head_len = (size_t)n;
    c->head_off = 0;
    c->body = head_only ? NULL : body;
    c->body_len = head_only ? 0 : len;
    c->body_off = 0;
}

/* Does the comma-separated header value contain `token` (case-insensitive)? */
static int has_token(const char *v, size_t vlen, const char *token) {
    size_t tl = strlen(token);
    size_t i = 0;
    while (i < vlen) {
        while (i < vlen && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < vlen && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e - s == tl && strncasecmp(v + s, token, tl) == 0)
            return 1;
    }
    return 0;
}

/*
 * Parse one request head of `hlen` bytes (including the final CRLFCRLF) and
 * set up the response; error responses set close_after.
 */
static void handle_request(struct conn *c, char *h, size_t hlen) {
    char *end = h + hlen;
    char *eol = memmem(h, hlen, "\r\n", 2);
    /* request line: METHOD SP TARGET SP HTTP/x.y */
    char *sp1 = memchr(h, ' ', (size_t)(eol - h));
    char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
    if (!sp1 || !sp2 || eol - sp2 - 1 != 8 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0) {
        c->close_after = 1;
        respond(c, 400, "Bad Request", "", 0, 0);
        return;
    }
    int minor = sp2[8] - '0';
    size_t mlen = (size_t)(sp1 - h);
    int is_get = mlen == 3 && memcmp(h, "GET", 3) == 0;
    int is_head = mlen == 4 && memcmp(h, "HEAD", 4) == 0;
    char *target = sp1 + 1;
    size_t tlen = (size_t)(sp2 - target);
    char *q = memchr(target, '?', tlen);
    if (q)
        tlen = (size_t)(q - target);

    int conn_close_tok = 0, conn_keep_tok = 0, chunked = 0, bad = 0;
    unsigned long long clen = 0;
    char *line = eol + 2;
    while (line < end - 2) {
        char *le = memmem(line, (size_t)(end - line), "\r\n", 2);
        if (!le)
            break;
        char *colon = memchr(line, ':', (size_t)(le - line));
        if (colon) {
            size_t nlen = (size_t)(colon - line);
            char *v = colon + 1;
            size_t vlen = (size_t)(le - v);
            if (nlen == 10 && strncasecmp(line, "connection", 10) == 0) {
                conn_close_tok |= has_token(v, vlen, "close");
                conn_keep_tok |= has_token(v, vlen, "keep-alive");
            } else if (nlen == 14 && strncasecmp(line, "content-length", 14) == 0) {
                char *p = v;
                while (p < le && (*p == ' ' || *p == '\t'))
                    p++;
                if (p == le || *p < '0' || *p > '9')
                    bad = 1;
                unsigned long long n = 0;
                while (p < le && *p >= '0' && *p <= '9' && n < (1ULL << 50))
                    n = n * 10 + (unsigned)(*p++ - '0');
                while (p < le && (*p == ' ' || *p == '\t'))
                    p++;
                if (p != le)
                    bad = 1;
                clen = n;
            } else if (nlen == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
                chunked = 1;
            }
        }
        line = le + 2;
    }

    if (minor == 0)
        c->close_after = !conn_keep_tok || conn_close_tok;
    else
        c->close_after = conn_close_tok;

    if (bad) {
        c->close_after = 1;
        respond(c, 400, "Bad Request", "", 0, 0);
        return;
    }
    if (chunked) {
        c->close_after = 1;
        respond(c, 501, "Not Implemented", "", 0, 0);
        return;
    }
    c->discard = clen;
    if (!is_get && !is_head) {
        respond(c, 405, "Method Not Allowed", "", 0, 0);
        return;
    }
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        if (strlen(bodies[i].path) == tlen && memcmp(bodies[i].path, target, tlen) == 0) {
            respond(c, 200, "OK", bodies[i].data, bodies[i].len, is_head);
            return;
        }
    }
    respond(c, 404, "Not Found", "", 0, is_head);
}

/*
 * Consume buffered input: drop discarded body bytes, then parse at most one
 * request head (if no response is pending). Returns 0 ok, -1 close now.
 */
static int process_input(struct conn *c) {
    if (c->discard && c->in_len) {
        size_t d = c->discard < c->in_len ? (size_t)c->discard : c->in_len;
        memmove(c->in, c->in + d, c->in_len - d);
        c->in_len -= d;
        c->discard -= d;
    }
    if (pending(c) || c->discard || c->in_len == 0)
        return 0;
    char *hend = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!hend) {
        if (c->in_len == sizeof c->in) {
            c->close_after = 1;
            respond(c, 431, "Request Header Fields Too Large", "", 0, 0);
            c->in_len = 0;
        }
        return 0;
    }
    size_t hlen = (size_t)(hend - c->in) + 4;
    handle_request(c, c->in, hlen);
    memmove(c->in, c->in + hlen, c->in_len - hlen);
    c->in_len -= hlen;
    /* drop body bytes already buffered */
    if (c->discard && c->in_len) {
        size_t d = c->discard < c->in_len ? (size_t)c->discard : c->in_len;
        memmove(c->in, c->in + d, c->in_len - d);
        c->in_len -= d;
        c->discard -= d;
    }
    return 0;
}

/* Write pending output. Returns 0 (done or EAGAIN), -1 on error. */
static int flush_out(struct conn *c) {
    while (pending(c)) {
        struct iovec iov[2];
        int n = 0;
        if (c->head_off < c->head_len) {
            iov[n].iov_base = c->head + c->head_off;
            iov[n].iov_len = c->head_len - c->head_off;
            n++;
        }
        if (c->body_off < c->body_len) {
            iov[n].iov_base = (void *)(c->body + c->body_off);
            iov[n].iov_len = c->body_len - c->body_off;
            n++;
        }
        ssize_t w = writev(c->fd, iov, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -1;
        }
        size_t left = (size_t)w;
        size_t hrem = c->head_len - c->head_off;
        if (left >= hrem) {
            c->head_off = c->head_len;
            left -= hrem;
            c->body_off += left;
        } else {
            c->head_off += left;
        }
    }
    return 0;
}

/*
 * Drive a connection as far as possible: answer buffered requests, write,
 * and decide interest. Returns -1 when the connection was closed.
 */
static int drive(struct conn *c) {
    for (int rounds = 0; rounds < 64; rounds++) {
        if (process_input(c) < 0)
            goto close;
        if (!pending(c))
            break;
        if (flush_out(c) < 0)
            goto close;
        if (pending(c))
            break; /* EAGAIN: wait for EPOLLOUT */
        if (c->close_after)
            goto close;
        /* response sent; loop to answer a buffered (pipelined) request */
    }
    if (pending(c))
        return set_interest(c, 1) < 0 ? (conn_close(c), -1) : 0;
    if (set_interest(c, 0) < 0)
        goto close;
    return 0;
close:
    conn_close(c);
    return -1;
}

static void on_readable(struct conn *c) {
    for (;;) {
        size_t room = sizeof c->in - c->in_len;
        if (room == 0)
            break;
        ssize_t r = read(c->fd, c->in + c->in_len, room);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            conn_close(c);
            return;
        }
        if (r == 0) { /* peer closed; nothing pending since we only read when idle */
            conn_close(c);
            return;
        }
        c->in_len += (size_t)r;
        if (process_input(c) < 0) {
            conn_close(c);
            return;
        }
        if (pending(c))
            break;
    }
    drive(c);
}

static void on_accept(int lfd) {
    for (int i = 0; i < 256; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE)
                fprintf(stderr, "origin: accept: %s\n", strerror(errno));
            return; /* EAGAIN or resource error: retry on next event */
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(c);
        }
    }
}

static char *make_body(size_t len) {
    char *b = malloc(len);
    if (!b)
        die("malloc");
    for (size_t i = 0; i < len; i++)
        b[i] = (char)('a' + i % 26);
    if (len)
        b[len - 1] = '\n';
    return b;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [BIND_ADDRESS]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    const char *addr = argc > 2 ? argv[2] : "127.0.0.1";
    if (port <= 0 || port > 65535) {
        fprintf(stderr, "origin: bad port %s\n", argv[1]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    bodies[0].path = "/small";
    bodies[0].data = strdup("Hello, world\n"); /* 13 bytes */
    bodies[0].len = 13;
    bodies[1].path = "/64k";
    bodies[1].len = 65536;
    bodies[1].data = make_body(bodies[1].len);
    bodies[2].path = "/1m";
    bodies[2].len = 1 << 20;
    bodies[2].data = make_body(bodies[2].len);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
        fprintf(stderr, "origin: bad address %s\n", addr);
        return 2;
    }
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0)
        die("bind");
    if (listen(lfd, 4096) < 0)
        die("listen");

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    static int lmark; /* data.ptr == &lmark marks the listener */
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &lmark};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0)
        die("epoll_ctl");

    fprintf(stderr, "origin: listening on %s:%d\n", addr, port);
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == &lmark) {
                on_accept(lfd);
                continue;
            }
            struct conn *c = evs[i].data.ptr;
            uint32_t e = evs[i].events;
            if (e & EPOLLOUT) {
                drive(c);          /* writable: flush, maybe answer more */
            } else if (e & EPOLLIN) {
                on_readable(c);
            } else if (e & (EPOLLERR | EPOLLHUP)) {
                conn_close(c);
            }
        }
    }
}
