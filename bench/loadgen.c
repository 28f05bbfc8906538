/*
 * loadgen: the benchmark's load client, built so that it is never the bottleneck.
 *
 * Talks to bench/target.c (directly or through a tunnel) and verifies every byte it gets back:
 * downloads must be the pattern byte i = (i % 251), echoes must equal what was sent. Any
 * mismatch, short read, or timeout prints one line on stderr and exits 1. Results are one JSON
 * object on stdout. Latencies are in milliseconds, percentiles are nearest-rank.
 *
 *   loadgen bulk HOST PORT BYTES          one connection downloads BYTES
 *   loadgen rtt  HOST PORT COUNT SIZE     one connection, COUNT sequential SIZE-byte echoes
 *   loadgen conc HOST PORT CONNS SECONDS SIZE
 *                                         CONNS connections doing back-to-back SIZE-byte echoes
 *                                         for SECONDS (one thread, epoll)
 *   loadgen ttfb HOST PORT COUNT          COUNT times in a row: connect, "GET 64", first byte
 *   loadgen idle HOST PORT CONNS          open CONNS verified echo connections, print a JSON line,
 *                                         hold them until stdin closes
 *   loadgen fair HOST PORT SECONDS SIZE   SIZE-byte echoes on one connection for SECONDS while a
 *                                         second connection downloads as fast as it can
 *   loadgen wan  HOST PORT DIR BYTES WARMUP RATE SIZE TTFB_EVERY
 *                                         one bulk transfer of BYTES, DIR "down" (GET: the target
 *                                         sends) or "up" (PUT: we send, the target verifies and
 *                                         answers OK); WARMUP seconds (decimal) after it starts,
 *                                         and until it ends: SIZE-byte echoes on a second
 *                                         connection, open loop at RATE per second (latency from
 *                                         each one's scheduled send time), and a new connection
 *                                         to first byte of "GET 64" every TTFB_EVERY seconds.
 *                                         Times in the JSON ("t_*") are CLOCK_MONOTONIC seconds;
 *                                         t_written: when an upload's last byte was written.
 *
 * HTTP/1.1 modes (target.c answers them when a connection starts with an HTTP request line),
 * each on one keep-alive connection; every answer's status line must be "HTTP/1.1 200 OK" with
 * a Content-Length of exactly what was asked for, and every body byte is checked:
 *   loadgen http-bulk HOST PORT BYTES      "GET /bytes/BYTES": request to last byte
 *   loadgen http-rtt  HOST PORT COUNT SIZE COUNT sequential "POST /echo" with SIZE-byte bodies,
 *                                          each timed from sending the request to the last byte
 *                                          of its answer (after 50 warm-up ones)
 *   loadgen http-get  HOST PORT COUNT SIZE COUNT sequential "GET /bytes/SIZE" (no request body:
 *                                          a browser's GET), timed likewise
 *   loadgen http-ttfb HOST PORT COUNT      COUNT times in a row: a new connection (with --tls its
 *                                          handshake), "GET /bytes/64", first byte of the answer;
 *                                          then the whole answer is checked
 *
 * Options before the mode, for the HTTP modes (a browser's way in, e.g. the relay's portal):
 *   --tls CA_FILE     speak TLS (OpenSSL): the server's chain must verify against CA_FILE and
 *                     its certificate must name --host (never switched off); TLS 1.2 or later;
 *                     new connections resume the last session the server offered, as browsers do
 *   --host NAME       the Host header (default "bench"), the TLS server name and the name checked
 *   --cookie VALUE    a Cookie header on every request
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PATTERN_PERIOD 251
#define CHUNK (1u << 20)
#define PATTERN_LEN (CHUNK + PATTERN_PERIOD)
#define IO_TIMEOUT_S 30
#define WARMUP 50
#define TTFB_BYTES 64
#define FOREVER 4611686018427387904ULL /* 2**62 bytes: "until I hang up" */

static unsigned char *pattern;
static struct sockaddr_in target_addr;

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- samples ---------------------------------------------------------------------------- */

typedef struct {
    double *v; /* seconds */
    size_t n, cap;
} samples_t;

static void add_sample(samples_t *s, double value) {
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 1024;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
        if (s->v == NULL)
            die("out of memory");
    }
    s->v[s->n++] = value;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(const samples_t *sorted, double p) {
    if (sorted->n == 0)
        return 0.0;
    size_t rank = (size_t)(p / 100.0 * (double)sorted->n + 0.999999999); /* ceil */
    if (rank < 1)
        rank = 1;
    if (rank > sorted->n)
        rank = sorted->n;
    return sorted->v[rank - 1];
}

static void print_latency(const char *name, samples_t *s) {
    qsort(s->v, s->n, sizeof *s->v, cmp_double);
    double sum = 0;
    for (size_t i = 0; i < s->n; i++)
        sum += s->v[i];
    printf("\"%s\": {\"n\": %zu, \"mean_ms\": %.4f, \"p50_ms\": %.4f, \"p90_ms\": %.4f, "
           "\"p99_ms\": %.4f, \"max_ms\": %.4f}",
           name, s->n, s->n ? sum / (double)s->n * 1e3 : 0.0, percentile(s, 50) * 1e3,
           percentile(s, 90) * 1e3, percentile(s, 99) * 1e3,
           s->n ? s->v[s->n - 1] * 1e3 : 0.0);
}

/* ---- sockets ---------------------------------------------------------------------------- */

static int dial(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&target_addr, sizeof target_addr) < 0)
        die("connect: %s", strerror(errno));
    return fd;
}

static void send_all(int fd, const void *data, size_t len) {
    const unsigned char *p = data;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("send: %s", strerror(errno));
        }
        p += n;
        len -= (size_t)n;
    }
}

static void recv_exact(int fd, unsigned char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = recv(fd, buf, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("recv: %s", errno == EAGAIN ? "timed out" : strerror(errno));
        if (n == 0)
            die("recv: connection closed early");
        buf += n;
        len -= (size_t)n;
    }
}

static void send_line(int fd, const char *fmt, ...) {
    char line[96];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    send_all(fd, line, (size_t)len);
}

/* The i-th echo message of connection c: different every time, so stale bytes are caught. */
static void fill_message(unsigned char *msg, size_t size, unsigned long seq, unsigned conn) {
    for (size_t j = 0; j < size; j++)
        msg[j] = (unsigned char)(seq * 31u + conn * 17u + j * 7u);
}

/* Receive a download and check it against the pattern; returns bytes received before EOF/error
 * when tolerate_end is set, otherwise dies unless exactly `total` bytes arrive. */
static unsigned long long download(int fd, unsigned long long total, unsigned char *buf,
                                   _Atomic unsigned long long *progress, atomic_int *stop) {
    unsigned long long got = 0;
    while (got < total) {
        unsigned long long left = total - got;
        ssize_t n = recv(fd, buf, left < CHUNK ? (size_t)left : CHUNK, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (stop != NULL && atomic_load(stop))
                return got;
            die("download: %s after %llu of %llu bytes",
                n == 0 ? "connection closed" : strerror(errno), got, total);
        }
        if (memcmp(buf, pattern + got % PATTERN_PERIOD, (size_t)n) != 0)
            die("download: wrong byte in [%llu, %llu)", got, got + (unsigned long long)n);
        got += (unsigned long long)n;
        if (progress != NULL)
            atomic_store(progress, got);
    }
    return got;
}

/* ---- modes ------------------------------------------------------------------------------ */

static int mode_bulk(unsigned long long bytes) {
    unsigned char *buf = malloc(CHUNK);
    int fd = dial();
    double t0 = now();
    send_line(fd, "GET %llu\n", bytes);
    download(fd, bytes, buf, NULL, NULL);
    double seconds = now() - t0;
    close(fd);
    printf("{\"mode\": \"bulk\", \"bytes\": %llu, \"seconds\": %.6f, \"mb_per_s\": %.3f}\n", bytes,
           seconds, (double)bytes / seconds / 1e6);
    return 0;
}

static void echo_round_trip(int fd, unsigned char *msg, unsigned char *reply, size_t size,
                            unsigned long seq) {
    fill_message(msg, size, seq, 0);
    send_all(fd, msg, size);
    recv_exact(fd, reply, size);
    if (memcmp(msg, reply, size) != 0)
        die("echo: reply %lu differs from what was sent", seq);
}

static int mode_rtt(unsigned long count, size_t size) {
    unsigned char *msg = malloc(size), *reply = malloc(size);
    samples_t s = {0};
    int fd = dial();
    send_line(fd, "ECHO\n");
    for (unsigned long i = 0; i < WARMUP + count; i++) {
        double t0 = now();
        echo_round_trip(fd, msg, reply, size, i);
        if (i >= WARMUP)
            add_sample(&s, now() - t0);
    }
    close(fd);
    printf("{\"mode\": \"rtt\", \"size\": %zu, ", size);
    print_latency("latency", &s);
    printf("}\n");
    return 0;
}

typedef struct {
    int fd;
    unsigned index;
    unsigned long seq;
    size_t got;
    double started;
    int active;
} conn_t;

static void conc_send(conn_t *c, unsigned char *msg, size_t size) {
    fill_message(msg, size, c->seq, c->index);
    c->got = 0;
    c->started = now();
    /* Blocking socket, empty send buffer (the previous reply was read in full): never blocks. */
    send_all(c->fd, msg, size);
}

static int mode_conc(unsigned conns, double seconds, size_t size) {
    conn_t *cs = calloc(conns, sizeof *cs);
    unsigned char *msg = malloc(size), *expect = malloc(size);
    unsigned char **rx = calloc(conns, sizeof *rx);
    samples_t s = {0};
    int ep = epoll_create1(0);
    for (unsigned i = 0; i < conns; i++) {
        cs[i] = (conn_t){.fd = dial(), .index = i, .active = 1};
        rx[i] = malloc(size);
        send_line(cs[i].fd, "ECHO\n");
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    /* Warm-up: one round trip on every connection before the clock starts. */
    unsigned warm = 0;
    for (unsigned i = 0; i < conns; i++)
        conc_send(&cs[i], msg, size);
    double start = 0, end = 0;
    unsigned long done = 0;
    unsigned active = conns;
    struct epoll_event events[256];
    while (active > 0) {
        int n = epoll_wait(ep, events, 256, IO_TIMEOUT_S * 1000);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("conc: no reply for %d s", IO_TIMEOUT_S);
        for (int k = 0; k < n; k++) {
            conn_t *c = &cs[events[k].data.u32];
            ssize_t r = recv(c->fd, rx[c->index] + c->got, size - c->got, MSG_DONTWAIT);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r <= 0)
                die("conc: connection %u: %s", c->index, r == 0 ? "closed" : strerror(errno));
            c->got += (size_t)r;
            if (c->got < size)
                continue;
            double t = now();
            fill_message(expect, size, c->seq, c->index);
            if (memcmp(expect, rx[c->index], size) != 0)
                die("conc: connection %u: reply %lu differs", c->index, c->seq);
            c->seq++;
            if (start == 0) { /* still warming up */
                if (++warm == conns) {
                    start = now();
                    end = start + seconds;
                    for (unsigned i = 0; i < conns; i++)
                        conc_send(&cs[i], msg, size);
                }
                continue;
            }
            if (t > end) { /* the window closed while this one was in flight: stop here */
                c->active = 0;
                active--;
                continue;
            }
            done++;
            add_sample(&s, t - c->started);
            conc_send(c, msg, size);
        }
    }
    for (unsigned i = 0; i < conns; i++)
        close(cs[i].fd);
    printf("{\"mode\": \"conc\", \"conns\": %u, \"seconds\": %.3f, \"round_trips\": %lu, "
           "\"per_s\": %.1f, ",
           conns, seconds, done, (double)done / seconds);
    print_latency("latency", &s);
    printf("}\n");
    return 0;
}

static int mode_ttfb(unsigned long count) {
    unsigned char buf[TTFB_BYTES];
    samples_t s = {0};
    for (unsigned long i = 0; i < count; i++) {
        double t0 = now();
        int fd = dial();
        send_line(fd, "GET %u\n", TTFB_BYTES);
        ssize_t n;
        do
            n = recv(fd, buf, sizeof buf, 0);
        while (n < 0 && errno == EINTR);
        if (n <= 0)
            die("ttfb: connection %lu: %s", i, n == 0 ? "closed" : strerror(errno));
        add_sample(&s, now() - t0);
        if ((size_t)n < sizeof buf)
            recv_exact(fd, buf + n, sizeof buf - (size_t)n);
        if (memcmp(buf, pattern, sizeof buf) != 0)
            die("ttfb: connection %lu: wrong bytes", i);
        close(fd);
    }
    printf("{\"mode\": \"ttfb\", ");
    print_latency("latency", &s);
    printf("}\n");
    return 0;
}

static int mode_idle(unsigned conns) {
    int *fds = calloc(conns, sizeof *fds);
    double t0 = now();
    for (unsigned i = 0; i < conns; i++) {
        unsigned char hello[6] = {'E', 'C', 'H', 'O', '\n', (unsigned char)i}, back;
        fds[i] = dial();
        send_all(fds[i], hello, sizeof hello);
        recv_exact(fds[i], &back, 1);
        if (back != (unsigned char)i)
            die("idle: connection %u echoed the wrong byte", i);
    }
    printf("{\"mode\": \"idle\", \"conns\": %u, \"open_seconds\": %.3f}\n", conns, now() - t0);
    fflush(stdout);
    char sink[64];
    while (read(STDIN_FILENO, sink, sizeof sink) > 0) /* until the harness closes stdin */
        ;
    for (unsigned i = 0; i < conns; i++)
        close(fds[i]);
    return 0;
}

typedef struct {
    int fd;
    unsigned char *buf;
    _Atomic unsigned long long received;
    atomic_int stop;
} bulk_job_t;

static void *bulk_thread(void *arg) {
    bulk_job_t *job = arg;
    download(job->fd, FOREVER, job->buf, &job->received, &job->stop);
    return NULL;
}

static int mode_fair(double seconds, size_t size) {
    unsigned char *msg = malloc(size), *reply = malloc(size);
    samples_t s = {0};
    int fd = dial();
    send_line(fd, "ECHO\n");
    for (unsigned long i = 0; i < WARMUP; i++)
        echo_round_trip(fd, msg, reply, size, i);

    bulk_job_t job = {.fd = dial(), .buf = malloc(CHUNK)};
    send_line(job.fd, "GET %llu\n", FOREVER);
    pthread_t thread;
    if (pthread_create(&thread, NULL, bulk_thread, &job) != 0)
        die("pthread_create failed");
    double deadline = now() + IO_TIMEOUT_S;
    while (atomic_load(&job.received) < 16u * CHUNK) { /* until the download is in full flow */
        if (now() > deadline)
            die("fair: download did not start");
        usleep(1000);
    }
    unsigned long long bytes0 = atomic_load(&job.received);
    double t0 = now(), t = t0;
    for (unsigned long i = WARMUP; t - t0 < seconds; i++) {
        double r0 = now();
        echo_round_trip(fd, msg, reply, size, i);
        t = now();
        add_sample(&s, t - r0);
    }
    unsigned long long bulk_bytes = atomic_load(&job.received) - bytes0;
    atomic_store(&job.stop, 1);
    shutdown(job.fd, SHUT_RDWR);
    pthread_join(thread, NULL);
    close(job.fd);
    close(fd);
    printf("{\"mode\": \"fair\", \"size\": %zu, \"seconds\": %.3f, \"bulk_mb_per_s\": %.3f, ", size,
           t - t0, (double)bulk_bytes / (t - t0) / 1e6);
    print_latency("latency", &s);
    printf("}\n");
    return 0;
}

/* ---- wan: one bulk transfer, open-loop echoes and new connections while it runs ---------- */

typedef struct {
    int up;
    unsigned long long bytes;
    double t_start, t_written, t_end; /* t_written: an upload's last byte handed to the kernel */
    atomic_int done;
} wan_bulk_t;

static void *wan_bulk_thread(void *arg) {
    wan_bulk_t *job = arg;
    int fd = dial();
    job->t_start = now();
    if (!job->up) {
        unsigned char *buf = malloc(CHUNK);
        send_line(fd, "GET %llu\n", job->bytes);
        download(fd, job->bytes, buf, NULL, NULL);
        free(buf);
    } else {
        send_line(fd, "PUT %llu\n", job->bytes);
        unsigned long long sent = 0;
        while (sent < job->bytes) {
            unsigned long long left = job->bytes - sent;
            size_t len = left < CHUNK ? (size_t)left : CHUNK;
            send_all(fd, pattern + sent % PATTERN_PERIOD, len);
            sent += len;
        }
        /* What the path took in without delivering it yet is still on its way: wait for the
         * answer as long as the rest could take at 50 kB/s (the harness bounds the whole run). */
        job->t_written = now();
        struct timeval tv = {.tv_sec = IO_TIMEOUT_S + (time_t)(job->bytes / 50000)};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char answer[64] = {0}, expect[64];
        size_t have = 0;
        while (have < sizeof answer - 1 && memchr(answer, '\n', have) == NULL) {
            ssize_t n = recv(fd, answer + have, sizeof answer - 1 - have, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                die("upload: %s before the target's answer",
                    n == 0 ? "connection closed" : (errno == EAGAIN ? "timed out" : strerror(errno)));
            have += (size_t)n;
        }
        snprintf(expect, sizeof expect, "OK %llu\n", job->bytes);
        if (strcmp(answer, expect) != 0)
            die("upload: the target answered %.40s", answer);
    }
    job->t_end = now();
    close(fd);
    atomic_store(&job->done, 1);
    return NULL;
}

typedef struct {
    int fd;
    size_t size;
    double t0, rate;
    wan_bulk_t *bulk;
    double *scheduled;
    size_t cap;
    atomic_size_t sent;
} wan_echo_t;

static void sleep_until(double t) {
    struct timespec ts = {.tv_sec = (time_t)t, .tv_nsec = (long)((t - (double)(time_t)t) * 1e9)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static void *wan_echo_sender(void *arg) {
    wan_echo_t *e = arg;
    unsigned char *msg = malloc(e->size);
    for (size_t i = 0; i < e->cap; i++) {
        double at = e->t0 + (double)i / e->rate;
        sleep_until(at);
        if (atomic_load(&e->bulk->done))
            break;
        e->scheduled[i] = at;
        fill_message(msg, e->size, WARMUP + i, 0);
        atomic_store(&e->sent, i + 1);
        send_all(e->fd, msg, e->size);
    }
    free(msg);
    atomic_store(&e->sent, atomic_load(&e->sent) | ((size_t)1 << 62)); /* finished flag */
    return NULL;
}

typedef struct {
    double t0, every;
    wan_bulk_t *bulk;
    samples_t s;
} wan_ttfb_t;

static void *wan_ttfb_thread(void *arg) {
    wan_ttfb_t *t = arg;
    unsigned char buf[TTFB_BYTES];
    for (unsigned long i = 0;; i++) {
        sleep_until(t->t0 + (double)i * t->every);
        if (atomic_load(&t->bulk->done))
            break;
        double t0 = now();
        int fd = dial();
        send_line(fd, "GET %u\n", TTFB_BYTES);
        ssize_t n;
        do
            n = recv(fd, buf, sizeof buf, 0);
        while (n < 0 && errno == EINTR);
        if (n <= 0)
            die("wan ttfb: connection %lu: %s", i,
                n == 0 ? "closed" : (errno == EAGAIN ? "timed out" : strerror(errno)));
        add_sample(&t->s, now() - t0);
        if ((size_t)n < sizeof buf)
            recv_exact(fd, buf + n, sizeof buf - (size_t)n);
        if (memcmp(buf, pattern, sizeof buf) != 0)
            die("wan ttfb: connection %lu: wrong bytes", i);
        close(fd);
    }
    return NULL;
}

static int mode_wan(const char *dir, unsigned long long bytes, double warmup, double rate,
                    size_t size, double ttfb_every) {
    if (strcmp(dir, "down") != 0 && strcmp(dir, "up") != 0)
        die("wan: direction must be down or up, not %s", dir);
    if (rate <= 0 || ttfb_every <= 0 || size == 0)
        die("wan: rate, size and ttfb interval must be positive");
    unsigned char *msg = malloc(size), *reply = malloc(size), *expect = malloc(size);
    int efd = dial();
    send_line(efd, "ECHO\n");
    for (unsigned long i = 0; i < 5; i++) /* the echo path works before the bulk starts */
        echo_round_trip(efd, msg, reply, size, i);

    wan_bulk_t bulk = {.up = strcmp(dir, "up") == 0, .bytes = bytes};
    pthread_t bulk_th, echo_th, ttfb_th;
    if (pthread_create(&bulk_th, NULL, wan_bulk_thread, &bulk) != 0)
        die("pthread_create failed");
    double probe_t0 = now() + warmup;
    wan_echo_t echo = {.fd = efd, .size = size, .t0 = probe_t0, .rate = rate, .bulk = &bulk};
    echo.cap = (size_t)(rate * 7200) + 16;
    echo.scheduled = calloc(echo.cap, sizeof *echo.scheduled);
    wan_ttfb_t ttfb = {.t0 = probe_t0 + 0.5 / rate, .every = ttfb_every, .bulk = &bulk};
    if (pthread_create(&echo_th, NULL, wan_echo_sender, &echo) != 0 ||
        pthread_create(&ttfb_th, NULL, wan_ttfb_thread, &ttfb) != 0)
        die("pthread_create failed");

    samples_t lat = {0};
    size_t received = 0;
    for (;;) {
        size_t sent = atomic_load(&echo.sent);
        int finished = (sent >> 62) & 1;
        sent &= ~((size_t)1 << 62);
        if (received < sent) {
            recv_exact(efd, reply, size); /* SO_RCVTIMEO bounds every wait */
            double t = now();
            fill_message(expect, size, WARMUP + received, 0);
            if (memcmp(expect, reply, size) != 0)
                die("wan echo: reply %zu differs from what was sent", received);
            add_sample(&lat, t - echo.scheduled[received]);
            received++;
        } else if (finished) {
            break;
        } else {
            usleep(1000);
        }
    }
    pthread_join(echo_th, NULL);
    pthread_join(ttfb_th, NULL);
    pthread_join(bulk_th, NULL);
    close(efd);
    double seconds = bulk.t_end - bulk.t_start;
    printf("{\"mode\": \"wan\", \"direction\": \"%s\", \"bytes\": %llu, \"seconds\": %.6f, "
           "\"mb_per_s\": %.4f, \"t_start\": %.6f, \"t_end\": %.6f, \"t_probe\": %.6f, "
           "\"t_written\": %.6f, \"rate\": %.3f, \"size\": %zu, ",
           dir, bytes, seconds, (double)bytes / seconds / 1e6, bulk.t_start, bulk.t_end,
           probe_t0, bulk.up ? bulk.t_written : bulk.t_start, rate, size);
    print_latency("echo", &lat);
    printf(", ");
    print_latency("ttfb", &ttfb.s);
    printf("}\n");
    return 0;
}

/* ---- HTTP/1.1 ----------------------------------------------------------------------------- */

#define HTTP_HEAD_MAX 8192

typedef struct {
    int fd;
    SSL *ssl;                                 /* with --tls */
    unsigned char buf[HTTP_HEAD_MAX + CHUNK]; /* bytes read past an answer's head */
    size_t have;                              /* of which this many are not yet consumed */
} http_conn_t;

static const char *http_host = "bench";
static const char *http_cookie;  /* NULL: no Cookie header */
static SSL_CTX *tls_ctx;         /* NULL: plain TCP */
static SSL_SESSION *tls_session; /* the last session the server offered, resumed by new ones */
static unsigned long tls_handshakes, tls_resumed;
static char tls_version[32] = "", tls_cipher[64] = "";

static void tls_die(const char *what) {
    char err[256] = "";
    unsigned long e = ERR_get_error();
    if (e != 0)
        ERR_error_string_n(e, err, sizeof err);
    die("%s: %s", what, err[0] ? err : (errno ? strerror(errno) : "failed"));
}

static int tls_new_session(SSL *ssl, SSL_SESSION *session) {
    (void)ssl;
    if (tls_session != NULL)
        SSL_SESSION_free(tls_session);
    tls_session = session;
    return 1; /* we keep the reference */
}

static void tls_setup(const char *ca_file) {
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (tls_ctx == NULL)
        tls_die("SSL_CTX_new");
    SSL_CTX_set_min_proto_version(tls_ctx, TLS1_2_VERSION);
    if (SSL_CTX_load_verify_locations(tls_ctx, ca_file, NULL) != 1)
        tls_die("loading the CA file");
    SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
    SSL_CTX_sess_set_new_cb(tls_ctx, tls_new_session);
}

/* TLS on a connected socket: server name, chain and host name checked. */
static SSL *tls_connect(int fd) {
    SSL *ssl = SSL_new(tls_ctx);
    if (ssl == NULL)
        tls_die("SSL_new");
    if (SSL_set_tlsext_host_name(ssl, http_host) != 1 || SSL_set1_host(ssl, http_host) != 1)
        tls_die("setting the server name");
    SSL_set_fd(ssl, fd);
    if (tls_session != NULL)
        SSL_set_session(ssl, tls_session);
    if (SSL_connect(ssl) != 1) {
        long verify = SSL_get_verify_result(ssl);
        if (verify != X509_V_OK)
            die("TLS: the server's certificate does not verify for %s: %s", http_host,
                X509_verify_cert_error_string(verify));
        tls_die("TLS handshake");
    }
    tls_handshakes++;
    if (SSL_session_reused(ssl))
        tls_resumed++;
    snprintf(tls_version, sizeof tls_version, "%s", SSL_get_version(ssl));
    snprintf(tls_cipher, sizeof tls_cipher, "%s", SSL_get_cipher_name(ssl));
    return ssl;
}

static void http_connect(http_conn_t *c) {
    c->fd = dial();
    c->ssl = tls_ctx != NULL ? tls_connect(c->fd) : NULL;
    c->have = 0;
}

static http_conn_t *http_dial(void) {
    http_conn_t *c = calloc(1, sizeof *c);
    if (c == NULL)
        die("out of memory");
    http_connect(c);
    return c;
}

static void http_close(http_conn_t *c) {
    int fd = c->fd;
    if (c->ssl != NULL) {
        /* close_notify (not waiting for the server's): a session freed without it is marked
         * not resumable */
        SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    close(fd);
}

static void http_send(http_conn_t *c, const void *data, size_t len) {
    if (c->ssl == NULL) {
        send_all(c->fd, data, len);
        return;
    }
    while (len > 0) { /* SSL_write writes all of it unless partial writes are enabled */
        int n = SSL_write(c->ssl, data, len > INT32_MAX ? INT32_MAX : (int)len);
        if (n <= 0)
            tls_die("TLS write");
        data = (const unsigned char *)data + n;
        len -= (size_t)n;
    }
}

/* recv(2) or SSL_read: > 0 bytes, 0 at the end of the stream, < 0 with errno on failure. */
static ssize_t http_recv(http_conn_t *c, void *buf, size_t len) {
    if (c->ssl == NULL)
        return recv(c->fd, buf, len, 0);
    errno = 0;
    int n = SSL_read(c->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
    if (n > 0)
        return n;
    int err = SSL_get_error(c->ssl, n);
    if (err == SSL_ERROR_ZERO_RETURN)
        return 0;
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
        errno = EAGAIN; /* SO_RCVTIMEO ran out */
    else if (err == SSL_ERROR_SYSCALL && errno == 0)
        return 0; /* closed without close_notify */
    else if (err != SSL_ERROR_SYSCALL)
        errno = EPROTO;
    return -1;
}

static void http_printf(http_conn_t *c, const char *fmt, ...) {
    char text[2048];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (len < 0 || (size_t)len >= sizeof text)
        die("request head too long");
    http_send(c, text, (size_t)len);
}

/* The Host (and Cookie) lines of every request, ending the head. */
static const char *http_common(char *out, size_t size) {
    int len = snprintf(out, size, "Host: %s\r\n%s%s%s\r\n", http_host,
                       http_cookie ? "Cookie: " : "", http_cookie ? http_cookie : "",
                       http_cookie ? "\r\n" : "");
    if (len < 0 || (size_t)len >= size)
        die("host or cookie too long");
    return out;
}

/* Read one answer's head; check its status line and Content-Length; leave body bytes in buf. */
static void http_read_head(http_conn_t *c, unsigned long long expect_length, const char *what) {
    char *end = NULL;
    for (;;) {
        if (c->have >= 4) {
            c->buf[c->have] = '\0';
            end = memmem(c->buf, c->have, "\r\n\r\n", 4);
            if (end != NULL)
                break;
        }
        if (c->have >= HTTP_HEAD_MAX)
            die("%s: answer head longer than %d bytes", what, HTTP_HEAD_MAX);
        ssize_t n = http_recv(c, c->buf + c->have, HTTP_HEAD_MAX - c->have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("%s: recv: %s", what, errno == EAGAIN ? "timed out" : strerror(errno));
        if (n == 0)
            die("%s: connection closed %s", what, c->have ? "within the answer's head" : "before an answer");
        c->have += (size_t)n;
    }
    size_t head_len = (size_t)(end - (char *)c->buf) + 4;
    char head[HTTP_HEAD_MAX + 1];
    memcpy(head, c->buf, head_len);
    head[head_len] = '\0';
    const char *status = "HTTP/1.1 200 OK\r\n";
    if (strncmp(head, status, strlen(status)) != 0) {
        char *eol = strstr(head, "\r\n");
        if (eol != NULL)
            *eol = '\0';
        die("%s: status line %.80s, not HTTP/1.1 200 OK", what, head);
    }
    unsigned long long length = 0;
    int found = 0;
    for (char *line = strstr(head, "\r\n") + 2; *line != '\0' && strncmp(line, "\r\n", 2) != 0;) {
        char *eol = strstr(line, "\r\n");
        if (strncasecmp(line, "Content-Length:", 15) == 0) {
            char *v = line + 15, *stop = NULL;
            while (*v == ' ')
                v++;
            errno = 0;
            length = strtoull(v, &stop, 10);
            if (errno != 0 || stop == v || (*stop != '\r' && *stop != ' ') || found)
                die("%s: bad or repeated Content-Length", what);
            found = 1;
        } else if (strncasecmp(line, "Transfer-Encoding:", 18) == 0) {
            die("%s: unexpected Transfer-Encoding in the answer", what);
        }
        line = eol + 2;
    }
    if (!found)
        die("%s: answer without Content-Length", what);
    if (length != expect_length)
        die("%s: Content-Length %llu, expected %llu", what, length, expect_length);
    c->have -= head_len;
    memmove(c->buf, c->buf + head_len, c->have);
}

/* Receive exactly len body bytes (what was read past the head first) into out, or when out is
 * NULL check them against the download pattern. */
static void http_body(http_conn_t *c, unsigned char *out, unsigned long long len,
                      const char *what) {
    unsigned long long got = 0;
    while (got < len) {
        size_t take;
        if (c->have > 0) {
            take = c->have < len - got ? c->have : (size_t)(len - got);
        } else {
            unsigned long long left = len - got;
            size_t room = left < CHUNK ? (size_t)left : CHUNK;
            ssize_t n = http_recv(c, c->buf, room);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                die("%s: %s after %llu of %llu body bytes", what,
                    n == 0 ? "connection closed"
                           : (errno == EAGAIN ? "timed out" : strerror(errno)),
                    got, len);
            c->have = (size_t)n;
            take = c->have;
        }
        if (out != NULL)
            memcpy(out + got, c->buf, take);
        else if (memcmp(c->buf, pattern + got % PATTERN_PERIOD, take) != 0)
            die("%s: wrong byte in [%llu, %llu)", what, got, got + take);
        got += take;
        c->have -= take;
        memmove(c->buf, c->buf + take, c->have);
    }
}

static void http_get_bytes(http_conn_t *c, unsigned long long bytes) {
    char common[1024];
    http_printf(c, "GET /bytes/%llu HTTP/1.1\r\n%s", bytes, http_common(common, sizeof common));
    http_read_head(c, bytes, "http GET");
    http_body(c, NULL, bytes, "http GET");
}

static void http_echo(http_conn_t *c, unsigned char *req, size_t head_len, size_t size,
                      unsigned char *reply, unsigned long seq) {
    fill_message(req + head_len, size, seq, 0);
    http_send(c, req, head_len + size);
    http_read_head(c, size, "http echo");
    http_body(c, reply, size, "http echo");
    if (memcmp(req + head_len, reply, size) != 0)
        die("http echo: answer %lu differs from what was sent", seq);
    if (c->have != 0)
        die("http echo: %zu bytes past answer %lu", c->have, seq);
}

static size_t http_echo_head(unsigned char *req, size_t size) {
    char common[1024];
    return (size_t)sprintf((char *)req,
                           "POST /echo HTTP/1.1\r\n"
                           "Content-Type: application/octet-stream\r\nContent-Length: %zu\r\n%s",
                           size, http_common(common, sizeof common));
}

/* With --tls: what was negotiated, and how many handshakes resumed a session. */
static void print_tls(void) {
    if (tls_ctx == NULL)
        return;
    printf(", \"tls\": {\"version\": \"%s\", \"cipher\": \"%s\", \"handshakes\": %lu, "
           "\"resumed\": %lu}",
           tls_version, tls_cipher, tls_handshakes, tls_resumed);
}

static int mode_http_bulk(unsigned long long bytes) {
    http_conn_t *c = http_dial();
    double t0 = now();
    http_get_bytes(c, bytes);
    double seconds = now() - t0;
    if (c->have != 0)
        die("http GET: %zu bytes past the answer", c->have);
    http_close(c);
    printf("{\"mode\": \"http-bulk\", \"bytes\": %llu, \"seconds\": %.6f, \"mb_per_s\": %.3f",
           bytes, seconds, (double)bytes / seconds / 1e6);
    print_tls();
    printf("}\n");
    return 0;
}

static int mode_http_get(unsigned long count, size_t size) {
    samples_t s = {0};
    http_conn_t *c = http_dial();
    for (unsigned long i = 0; i < WARMUP + count; i++) {
        double t0 = now();
        http_get_bytes(c, size);
        if (c->have != 0)
            die("http GET: %zu bytes past answer %lu", c->have, i);
        if (i >= WARMUP)
            add_sample(&s, now() - t0);
    }
    http_close(c);
    printf("{\"mode\": \"http-get\", \"size\": %zu, ", size);
    print_latency("latency", &s);
    print_tls();
    printf("}\n");
    return 0;
}

static int mode_http_rtt(unsigned long count, size_t size) {
    unsigned char *req = malloc(2048 + size), *reply = malloc(size ? size : 1);
    size_t head_len = http_echo_head(req, size);
    samples_t s = {0};
    http_conn_t *c = http_dial();
    for (unsigned long i = 0; i < WARMUP + count; i++) {
        double t0 = now();
        http_echo(c, req, head_len, size, reply, i);
        if (i >= WARMUP)
            add_sample(&s, now() - t0);
    }
    http_close(c);
    printf("{\"mode\": \"http-rtt\", \"size\": %zu, ", size);
    print_latency("latency", &s);
    print_tls();
    printf("}\n");
    return 0;
}

static int mode_http_ttfb(unsigned long count) {
    samples_t s = {0};
    http_conn_t *c = calloc(1, sizeof *c);
    if (c == NULL)
        die("out of memory");
    char common[1024];
    http_common(common, sizeof common);
    for (unsigned long i = 0; i < count; i++) {
        double t0 = now();
        http_connect(c);
        http_printf(c, "GET /bytes/%u HTTP/1.1\r\n%s", TTFB_BYTES, common);
        ssize_t n;
        do
            n = http_recv(c, c->buf, HTTP_HEAD_MAX);
        while (n < 0 && errno == EINTR);
        if (n <= 0)
            die("http ttfb: connection %lu: %s", i,
                n == 0 ? "closed" : (errno == EAGAIN ? "timed out" : strerror(errno)));
        add_sample(&s, now() - t0);
        c->have = (size_t)n;
        http_read_head(c, TTFB_BYTES, "http ttfb");
        http_body(c, NULL, TTFB_BYTES, "http ttfb");
        if (c->have != 0)
            die("http ttfb: %zu bytes past answer %lu", c->have, i);
        http_close(c);
    }
    printf("{\"mode\": \"http-ttfb\", ");
    print_latency("latency", &s);
    print_tls();
    printf("}\n");
    return 0;
}

/* ---- main ------------------------------------------------------------------------------- */

static unsigned long long number(const char *text, const char *what) {
    char *end = NULL;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0')
        die("bad %s: %s", what, text);
    return value;
}

static double decimal(const char *text, const char *what) {
    char *end = NULL;
    errno = 0;
    double value = strtod(text, &end);
    if (errno != 0 || end == text || *end != '\0' || value < 0)
        die("bad %s: %s", what, text);
    return value;
}

static void usage(void) {
    fprintf(stderr, "usage: loadgen bulk HOST PORT BYTES | rtt HOST PORT COUNT SIZE |\n"
                    "       conc HOST PORT CONNS SECONDS SIZE | ttfb HOST PORT COUNT |\n"
                    "       idle HOST PORT CONNS | fair HOST PORT SECONDS SIZE |\n"
                    "       wan HOST PORT down|up BYTES WARMUP RATE SIZE TTFB_EVERY |\n"
                    "       http-bulk HOST PORT BYTES | http-rtt HOST PORT COUNT SIZE |\n"
                    "       http-get HOST PORT COUNT SIZE | http-ttfb HOST PORT COUNT\n"
                    "options before the mode (HTTP modes): --tls CA_FILE --host NAME "
                    "--cookie VALUE\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *ca_file = NULL;
    while (argc >= 3 && strncmp(argv[1], "--", 2) == 0) {
        if (strcmp(argv[1], "--tls") == 0)
            ca_file = argv[2];
        else if (strcmp(argv[1], "--host") == 0)
            http_host = argv[2];
        else if (strcmp(argv[1], "--cookie") == 0)
            http_cookie = argv[2];
        else
            usage();
        argc -= 2;
        argv += 2;
    }
    if (argc < 4)
        usage();
    signal(SIGPIPE, SIG_IGN);
    if (strpbrk(http_host, "\r\n") != NULL || (http_cookie && strpbrk(http_cookie, "\r\n")))
        die("--host and --cookie must be one line");
    if (ca_file != NULL)
        tls_setup(ca_file);
    const char *mode = argv[1];
    target_addr.sin_family = AF_INET;
    target_addr.sin_port = htons((uint16_t)number(argv[3], "port"));
    if (inet_pton(AF_INET, argv[2], &target_addr.sin_addr) != 1)
        die("bad address: %s", argv[2]);
    pattern = malloc(PATTERN_LEN);
    for (size_t i = 0; i < PATTERN_LEN; i++)
        pattern[i] = (unsigned char)(i % PATTERN_PERIOD);

    if (strcmp(mode, "http-ttfb") == 0 && argc == 5)
        return mode_http_ttfb((unsigned long)number(argv[4], "count"));
    if (tls_ctx != NULL && strncmp(mode, "http-", 5) != 0)
        die("--tls is for the HTTP modes");
    if (strcmp(mode, "http-bulk") == 0 && argc == 5)
        return mode_http_bulk(number(argv[4], "bytes"));
    if (strcmp(mode, "http-get") == 0 && argc == 6)
        return mode_http_get((unsigned long)number(argv[4], "count"),
                             (size_t)number(argv[5], "size"));
    if (strcmp(mode, "http-rtt") == 0 && argc == 6)
        return mode_http_rtt((unsigned long)number(argv[4], "count"),
                             (size_t)number(argv[5], "size"));
    if (strcmp(mode, "bulk") == 0 && argc == 5)
        return mode_bulk(number(argv[4], "bytes"));
    if (strcmp(mode, "rtt") == 0 && argc == 6)
        return mode_rtt((unsigned long)number(argv[4], "count"),
                        (size_t)number(argv[5], "size"));
    if (strcmp(mode, "conc") == 0 && argc == 7)
        return mode_conc((unsigned)number(argv[4], "conns"), (double)number(argv[5], "seconds"),
                         (size_t)number(argv[6], "size"));
    if (strcmp(mode, "ttfb") == 0 && argc == 5)
        return mode_ttfb((unsigned long)number(argv[4], "count"));
    if (strcmp(mode, "idle") == 0 && argc == 5)
        return mode_idle((unsigned)number(argv[4], "conns"));
    if (strcmp(mode, "fair") == 0 && argc == 6)
        return mode_fair((double)number(argv[4], "seconds"), (size_t)number(argv[5], "size"));
    if (strcmp(mode, "wan") == 0 && argc == 10)
        return mode_wan(argv[4], number(argv[5], "bytes"), decimal(argv[6], "warmup"),
                        decimal(argv[7], "rate"), (size_t)number(argv[8], "size"),
                        decimal(argv[9], "ttfb interval"));
    usage();
    return 2;
}
