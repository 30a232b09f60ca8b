/*
 * loadgen: a small load generator for a line-echo server on 127.0.0.1.
 *
 * One thread, epoll, non-blocking sockets; every client is a state machine.
 *
 *   connect    connect-per-request: connect, send "hello world\n", half-close
 *              (shutdown SHUT_WR), read until "\n", check the reply is
 *              "HELLO WORLD\n", close with SO_LINGER 0, start again.
 *   keepalive  each client keeps one connection and does request/reply round
 *              trips on it.
 *
 * Every reply is checked.  A request without a full reply within --timeout
 * seconds counts as a time-out (its connection is reset and the client moves
 * on).  When --duration is over no new request starts; requests in flight
 * are allowed to finish (bounded by --timeout), so the server never sees
 * connections cut mid-request.  The result is one JSON line on stdout; "rps"
 * counts the replies received within --duration (the tail is not load).
 *
 * Starvation: a client that got fewer than 1/STARVED_DIVISOR of the median
 * client's replies within --duration (zero included) is counted in
 * "clients_starved", e.g. the keep-alive clients a fixed pool of 8 threads
 * never serves (they may get a reply in the tail, once the others leave).
 *
 * Why half-close, then SO_LINGER 0:
 *   The server's handler reads lines until end-of-file.  Resetting a
 *   connection whose FIN the server has not seen makes its read fail with
 *   ECONNRESET (an error and a traceback per request, which would distort
 *   the measurement).  So the client sends its FIN right after the request;
 *   the server answers, reads end-of-file and closes cleanly.  The client
 *   then closes with SO_LINGER {1, 0}: if the server's FIN has not arrived
 *   yet this sends an RST instead of entering TIME_WAIT, so connect-per-request
 *   does not exhaust the ~28k ephemeral ports in a few seconds.  (When the
 *   server's FIN got there first the socket is already in TIME_WAIT; Linux
 *   reuses such ports for loopback connects after 1 s with tcp_tw_reuse=2.)
 *   If the kernel still has no free port, connect() fails with EADDRNOTAVAIL:
 *   that is counted as "port_exhaustion" (a client-side limit, not a server
 *   error) and the client retries after 10 ms.
 *
 * Build: gcc -O2 -o bench/build/loadgen bench/loadgen.c
 * Usage: loadgen --port P [--mode connect|keepalive] [--clients N]
 *                [--duration S] [--timeout S] [--cpu K]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char REQUEST[] = "hello world\n";
static const char REPLY[] = "HELLO WORLD\n";
#define REQUEST_LEN (sizeof(REQUEST) - 1)
#define REPLY_LEN (sizeof(REPLY) - 1)
#define SCAN_INTERVAL_NS 5000000ULL      /* how often time-outs are checked */
#define ERROR_BACKOFF_NS 1000000ULL      /* pause after an error: no busy spin */
#define EXHAUSTED_BACKOFF_NS 10000000ULL /* pause after EADDRNOTAVAIL */
#define STARVED_DIVISOR 10               /* starved: < median replies / this */
#define SPARE_FDS 32                     /* beyond one per client: stdio, epoll */

enum state { IDLE, CONNECTING, SENDING, READING, CLOSING, DONE };
enum mode { MODE_CONNECT, MODE_KEEPALIVE };

struct client {
    int fd;
    enum state state;
    uint64_t started;  /* request start, ns: connect() in connect mode, send() in keepalive */
    uint64_t retry_at; /* IDLE: do not start before this */
    size_t sent;
    size_t got;
    uint32_t events; /* what epoll watches for fd; 0 = not registered */
    char buf[64];
    uint64_t replies;
    uint64_t window_replies; /* within --duration */
    uint64_t timeouts;
};

struct errors {
    uint64_t connect, reset, eof, mismatch, other;
};

static struct {
    enum mode mode;
    int clients;
    double duration;
    double timeout;
    int port;
    int cpu;
} opt = {MODE_CONNECT, 8, 10.0, 2.0, 0, -1};

static int epfd;
static struct sockaddr_in target;
static struct client *cl;
static struct errors err;
static uint64_t requests, window_requests, timeouts, port_exhaustion;
static uint64_t *lat;
static size_t nlat, caplat;
static int stopping;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void record_latency(uint64_t ns) {
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 65536;
        lat = realloc(lat, caplat * sizeof *lat);
        if (!lat) die("realloc");
    }
    lat[nlat++] = ns;
}

static void watch(struct client *c, uint32_t events) {
    if (c->events == events) return;
    struct epoll_event ev = {.events = events, .data.u32 = (uint32_t)(c - cl)};
    if (epoll_ctl(epfd, c->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl");
    c->events = events;
}

/* Close the client's socket; reset=1 sends an RST (SO_LINGER 0) instead of a FIN. */
static void drop(struct client *c, int reset) {
    if (c->fd < 0) return;
    if (reset) {
        struct linger lg = {1, 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(c->fd); /* also removes it from the epoll set */
    c->fd = -1;
    c->events = 0;
}

static void idle(struct client *c, uint64_t delay) {
    c->state = stopping ? DONE : IDLE;
    c->retry_at = now_ns() + delay;
}

static void fail(struct client *c, uint64_t *counter) {
    (*counter)++;
    drop(c, 1);
    idle(c, ERROR_BACKOFF_NS);
}

static void on_writable(struct client *c);

static void start_send(struct client *c) {
    c->sent = 0;
    c->got = 0;
    c->state = SENDING;
}

/* Open a connection; returns 0 if started, -1 if the client was sent back to IDLE. */
static int open_conn(struct client *c) {
    int one = 1;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        if (errno == EMFILE || errno == ENFILE) die("socket (raise ulimit -n)");
        die("socket");
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->started = now_ns();
    c->state = CONNECTING;
    if (connect(c->fd, (struct sockaddr *)&target, sizeof target) == 0) {
        start_send(c);
        on_writable(c);
        return 0;
    }
    if (errno == EINPROGRESS) {
        watch(c, EPOLLOUT);
        return 0;
    }
    if (errno == EADDRNOTAVAIL) {
        port_exhaustion++;
        drop(c, 0);
        idle(c, EXHAUSTED_BACKOFF_NS);
        return -1;
    }
    fail(c, &err.connect);
    return -1;
}

static void begin_request(struct client *c) {
    if (opt.mode == MODE_CONNECT || c->fd < 0) {
        open_conn(c);
        return;
    }
    c->started = now_ns();
    start_send(c);
    on_writable(c); /* the socket is almost always writable: skip a round trip */
}

static void on_connected(struct client *c) {
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0 || soerr != 0) {
        if (soerr == EADDRNOTAVAIL) {
            port_exhaustion++;
            drop(c, 0);
            idle(c, EXHAUSTED_BACKOFF_NS);
            return;
        }
        fail(c, &err.connect);
        return;
    }
    start_send(c);
}

static void on_writable(struct client *c) {
    while (c->sent < REQUEST_LEN) {
        ssize_t n = send(c->fd, REQUEST + c->sent, REQUEST_LEN - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                watch(c, EPOLLOUT);
                return;
            }
            fail(c, errno == ECONNRESET || errno == EPIPE ? &err.reset : &err.other);
            return;
        }
        c->sent += (size_t)n;
    }
    if (opt.mode == MODE_CONNECT) shutdown(c->fd, SHUT_WR); /* see the header comment */
    c->state = READING;
    watch(c, EPOLLIN);
}

static void on_readable(struct client *c) {
    for (;;) {
        ssize_t n = recv(c->fd, c->buf + c->got, sizeof c->buf - c->got, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            fail(c, errno == ECONNRESET ? &err.reset : &err.other);
            return;
        }
        if (n == 0) {
            fail(c, &err.eof);
            return;
        }
        c->got += (size_t)n;
        char *nl = memchr(c->buf, '\n', c->got);
        if (!nl) {
            if (c->got < sizeof c->buf) continue;
            fail(c, &err.mismatch); /* a line longer than any valid reply */
            return;
        }
        if ((size_t)(nl - c->buf) + 1 != c->got || c->got != REPLY_LEN ||
            memcmp(c->buf, REPLY, REPLY_LEN) != 0) {
            fail(c, &err.mismatch);
            return;
        }
        record_latency(now_ns() - c->started);
        requests++;
        if (!stopping) {
            window_requests++;
            c->window_replies++;
        }
        c->replies++;
        if (opt.mode == MODE_CONNECT) drop(c, 1);
        if (stopping) {
            c->state = DONE;
        } else {
            begin_request(c);
        }
        return;
    }
}

/* keepalive, at the end: half-close and wait for the server's end-of-file. */
static void on_closing(struct client *c) {
    char sink[64];
    for (;;) {
        ssize_t n = recv(c->fd, sink, sizeof sink, 0);
        if (n > 0) continue;
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        drop(c, n < 0);
        c->state = DONE;
        return;
    }
}

static void on_event(struct client *c, uint32_t events) {
    switch (c->state) {
    case CONNECTING:
        on_connected(c);
        if (c->state == SENDING) on_writable(c);
        break;
    case SENDING:
        on_writable(c);
        break;
    case READING:
        (void)events;
        on_readable(c);
        break;
    case CLOSING:
        on_closing(c);
        break;
    default:
        break;
    }
}

static int busy(const struct client *c) {
    return c->state == CONNECTING || c->state == SENDING || c->state == READING;
}

/* Start clients whose back-off is over; time out requests that are too slow. */
static void scan(uint64_t now) {
    uint64_t limit = (uint64_t)(opt.timeout * 1e9);
    for (int i = 0; i < opt.clients; i++) {
        struct client *c = &cl[i];
        if (busy(c) && now - c->started > limit) {
            timeouts++;
            c->timeouts++;
            drop(c, 1);
            idle(c, 0);
        }
        if (c->state == IDLE && stopping) c->state = DONE;
        if (c->state == IDLE && now >= c->retry_at) begin_request(c);
    }
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* One descriptor per client, and a few more: raise the soft limit if needed. */
static void raise_fd_limit(void) {
    struct rlimit rl;
    rlim_t need = (rlim_t)opt.clients + SPARE_FDS;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) die("getrlimit");
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need) return;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
        fprintf(stderr, "loadgen: %d clients need %llu file descriptors, hard limit is %llu\n",
                opt.clients, (unsigned long long)need, (unsigned long long)rl.rlim_max);
        exit(2);
    }
    rl.rlim_cur = need;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0) die("setrlimit");
}

static uint64_t median_window_replies(void) {
    uint64_t *r = malloc((size_t)opt.clients * sizeof *r);
    if (!r) die("malloc");
    for (int i = 0; i < opt.clients; i++) r[i] = cl[i].window_replies;
    qsort(r, (size_t)opt.clients, sizeof *r, cmp_u64);
    uint64_t m = r[opt.clients / 2];
    free(r);
    return m;
}

static double pct_ms(double p) {
    if (nlat == 0) return 0.0;
    size_t i = (size_t)(p * (double)(nlat - 1) + 0.5);
    return (double)lat[i] / 1e6;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port P [--mode connect|keepalive] [--clients N]\n"
            "               [--duration S] [--timeout S] [--cpu K]\n"
            "Target is always 127.0.0.1:P. Prints one JSON line.\n");
    exit(2);
}

static void parse(int argc, char **argv) {
    static const struct option longopts[] = {
        {"mode", required_argument, 0, 'm'},    {"clients", required_argument, 0, 'c'},
        {"duration", required_argument, 0, 'd'}, {"timeout", required_argument, 0, 't'},
        {"port", required_argument, 0, 'p'},    {"cpu", required_argument, 0, 'C'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "m:c:d:t:p:C:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'm':
            if (strcmp(optarg, "connect") == 0) opt.mode = MODE_CONNECT;
            else if (strcmp(optarg, "keepalive") == 0) opt.mode = MODE_KEEPALIVE;
            else usage();
            break;
        case 'c': opt.clients = atoi(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 't': opt.timeout = atof(optarg); break;
        case 'p': opt.port = atoi(optarg); break;
        case 'C': opt.cpu = atoi(optarg); break;
        default: usage();
        }
    }
    if (opt.port <= 0 || opt.port > 65535 || opt.clients <= 0 || opt.duration <= 0 ||
        opt.timeout <= 0 || optind != argc)
        usage();
}

int main(int argc, char **argv) {
    parse(argc, argv);
    raise_fd_limit();
    signal(SIGPIPE, SIG_IGN);
    if (opt.cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(opt.cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0) die("sched_setaffinity");
    }
    memset(&target, 0, sizeof target);
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)opt.port);
    target.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    cl = calloc((size_t)opt.clients, sizeof *cl);
    if (!cl) die("calloc");
    for (int i = 0; i < opt.clients; i++) cl[i].fd = -1;

    struct epoll_event events[256];
    uint64_t start = now_ns();
    uint64_t deadline = start + (uint64_t)(opt.duration * 1e9);
    uint64_t hard_stop = deadline + (uint64_t)(opt.timeout * 1e9) + 1000000000ULL;
    uint64_t last_scan = start;
    for (int i = 0; i < opt.clients; i++) begin_request(&cl[i]);

    for (;;) {
        uint64_t now = now_ns();
        if (!stopping && now >= deadline) stopping = 1;
        if (stopping) {
            int active = 0;
            for (int i = 0; i < opt.clients; i++) {
                struct client *c = &cl[i];
                if (c->state == IDLE) c->state = DONE;
                if (c->state == DONE && c->fd >= 0 && opt.mode == MODE_KEEPALIVE) {
                    shutdown(c->fd, SHUT_WR);
                    c->state = CLOSING;
                    watch(c, EPOLLIN);
                }
                if (c->state != DONE) active++;
            }
            if (active == 0 || now >= hard_stop) break;
        }
        if (now - last_scan >= SCAN_INTERVAL_NS) {
            scan(now);
            last_scan = now;
        }
        int wait_ms = (int)(SCAN_INTERVAL_NS / 1000000ULL);
        if (!stopping && deadline - now < (uint64_t)wait_ms * 1000000ULL)
            wait_ms = (int)((deadline - now) / 1000000ULL);
        int n = epoll_wait(epfd, events, 256, wait_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) on_event(&cl[events[i].data.u32], events[i].events);
    }
    uint64_t end = now_ns();
    for (int i = 0; i < opt.clients; i++) {
        if (busy(&cl[i])) { /* still in flight at the hard stop */
            timeouts++;
            cl[i].timeouts++;
        }
        drop(&cl[i], 1);
    }

    qsort(lat, nlat, sizeof *lat, cmp_u64);
    double seconds = (double)(end - start) / 1e9;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru); /* own CPU: tells whether the load generator was the limit */
    double cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                 (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    uint64_t zero = 0, cmin = UINT64_MAX, cmax = 0, starved = 0, with_timeouts = 0;
    uint64_t median = median_window_replies();
    for (int i = 0; i < opt.clients; i++) {
        uint64_t r = cl[i].replies, w = cl[i].window_replies;
        if (r == 0) zero++;
        if (w == 0 || w * STARVED_DIVISOR < median) starved++;
        if (cl[i].timeouts) with_timeouts++;
        if (r < cmin) cmin = r;
        if (r > cmax) cmax = r;
    }
    uint64_t errors = err.connect + err.reset + err.eof + err.mismatch + err.other;
    printf("{\"mode\": \"%s\", \"clients\": %d, \"duration\": %.3f, \"seconds\": %.6f, "
           "\"requests\": %llu, \"window_requests\": %llu, \"rps\": %.1f, "
           "\"p50_ms\": %.3f, \"p90_ms\": %.3f, "
           "\"p99_ms\": %.3f, \"max_ms\": %.3f, \"errors\": %llu, "
           "\"error_kinds\": {\"connect\": %llu, \"reset\": %llu, \"eof\": %llu, "
           "\"mismatch\": %llu, \"other\": %llu}, \"timeouts\": %llu, "
           "\"port_exhaustion\": %llu, \"clients_with_zero_replies\": %llu, "
           "\"clients_starved\": %llu, \"clients_with_timeouts\": %llu, "
           "\"client_replies_min\": %llu, \"client_window_replies_median\": %llu, "
           "\"client_replies_max\": %llu, \"cpu_seconds\": %.3f, \"per_client\": [",
           opt.mode == MODE_CONNECT ? "connect" : "keepalive", opt.clients, opt.duration,
           seconds, (unsigned long long)requests, (unsigned long long)window_requests,
           (double)window_requests / opt.duration,
           pct_ms(0.50), pct_ms(0.90), pct_ms(0.99), nlat ? (double)lat[nlat - 1] / 1e6 : 0.0,
           (unsigned long long)errors, (unsigned long long)err.connect,
           (unsigned long long)err.reset, (unsigned long long)err.eof,
           (unsigned long long)err.mismatch, (unsigned long long)err.other,
           (unsigned long long)timeouts, (unsigned long long)port_exhaustion,
           (unsigned long long)zero, (unsigned long long)starved,
           (unsigned long long)with_timeouts, (unsigned long long)cmin,
           (unsigned long long)median, (unsigned long long)cmax, cpu);
    for (int i = 0; i < opt.clients; i++)
        printf("%s%llu", i ? ", " : "", (unsigned long long)cl[i].replies);
    printf("], \"per_client_timeouts\": [");
    for (int i = 0; i < opt.clients; i++)
        printf("%s%llu", i ? ", " : "", (unsigned long long)cl[i].timeouts);
    printf("]}\n");
    free(lat);
    free(cl);
    close(epfd);
    return 0;
}
