/*
 * target: the benchmark's TCP server, built so that it is never the bottleneck.
 *
 * Usage: target [HOST]
 *   Listens on HOST (default 127.0.0.1), port chosen by the kernel, and prints that port on
 *   stdout as one line, so the harness never races another program for a port.
 *
 * Each connection starts with one request line:
 *   "ECHO\n"    echo every following byte until the peer closes
 *   "GET <n>\n" send n bytes where byte i is (i % 251), then wait for the peer to close
 *   "PUT <n>\n" receive n bytes and check that byte i is (i % 251) (an upload, verified here),
 *               then answer "OK <n>\n", or "BAD <offset>\n" at the first wrong byte or an early
 *               end, and wait for the peer to close
 *   an HTTP/1.1 request line ("<METHOD> <path> HTTP/1.1\r\n"): the connection speaks HTTP/1.1,
 *               keep-alive, requests answered in order (pipelining allowed):
 *                 POST /echo (Content-Length body) -> 200 with the same body
 *                 GET /bytes/<n>                   -> 200, Content-Length n, byte i = (i % 251)
 *                 anything else                    -> 404 (400 for a malformed head), and for
 *                 a malformed head or "Connection: close" the connection is closed after it
 *
 * One thread per connection: the kernel schedules the blocking reads and writes, bulk writes go
 * out in ~1 MiB system calls from a precomputed pattern buffer, and a thousand idle connections
 * cost a small stack each (the target's memory is not what the benchmark measures).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define PATTERN_PERIOD 251
#define CHUNK (1u << 20)
#define PATTERN_LEN (CHUNK + PATTERN_PERIOD)
#define ECHO_BUF (64u * 1024u)
#define HEADER_MAX 64
#define HTTP_HEAD_MAX (16u * 1024u)
#define HTTP_BODY_BUF (64u * 1024u)

static unsigned char *pattern;

static int write_all(int fd, const unsigned char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static void drain_until_close(int fd) {
    unsigned char sink[4096];
    for (;;) {
        ssize_t n = recv(fd, sink, sizeof sink, 0);
        if (n == 0 || (n < 0 && errno != EINTR))
            return;
    }
}

static void serve_get(int fd, unsigned long long n) {
    unsigned long long sent = 0;
    while (sent < n) {
        unsigned long long left = n - sent;
        size_t len = left < CHUNK ? (size_t)left : CHUNK;
        if (write_all(fd, pattern + sent % PATTERN_PERIOD, len) < 0)
            return;
        sent += len;
    }
    drain_until_close(fd);
}

static void serve_put(int fd, unsigned long long n, const unsigned char *early, size_t early_len) {
    unsigned char *buf = malloc(CHUNK);
    char answer[64];
    unsigned long long got = 0;
    if (buf == NULL)
        return;
    if (early_len > n)
        early_len = (size_t)n;
    if (early_len > 0 && memcmp(early, pattern, early_len) != 0)
        goto bad;
    got = early_len;
    while (got < n) {
        unsigned long long left = n - got;
        ssize_t r = recv(fd, buf, left < CHUNK ? (size_t)left : CHUNK, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            goto bad;
        if (memcmp(buf, pattern + got % PATTERN_PERIOD, (size_t)r) != 0)
            goto bad;
        got += (unsigned long long)r;
    }
    snprintf(answer, sizeof answer, "OK %llu\n", n);
    goto reply;
bad:
    snprintf(answer, sizeof answer, "BAD %llu\n", got);
reply:
    free(buf);
    if (write_all(fd, (const unsigned char *)answer, strlen(answer)) == 0)
        drain_until_close(fd);
}

static void serve_echo(int fd, const unsigned char *early, size_t early_len) {
    unsigned char *buf = malloc(ECHO_BUF);
    if (buf == NULL)
        return;
    if (early_len > 0 && write_all(fd, early, early_len) < 0)
        goto out;
    for (;;) {
        ssize_t n = recv(fd, buf, ECHO_BUF, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (write_all(fd, buf, (size_t)n) < 0)
            break;
    }
out:
    free(buf);
}

/* ---- HTTP/1.1 ------------------------------------------------------------------------- */

static int writev_all(int fd, struct iovec *iov, int count) {
    while (count > 0) {
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)count};
        ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        while (count > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            count--;
        }
        if (count > 0) {
            iov->iov_base = (char *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    return 0;
}

static int http_simple(int fd, const char *status) {
    char head[128];
    int len = snprintf(head, sizeof head,
                       "HTTP/1.1 %s\r\nContent-Length: 0\r\n\r\n", status);
    return write_all(fd, (const unsigned char *)head, (size_t)len);
}

/* A header's value (case-insensitive name) in a head whose lines end in \r\n, or NULL. */
static const char *http_header(const char *head, const char *name, size_t *value_len) {
    size_t name_len = strlen(name);
    const char *line = strstr(head, "\r\n");
    while (line != NULL) {
        line += 2;
        const char *end = strstr(line, "\r\n");
        if (end == NULL || end == line)
            return NULL;
        if ((size_t)(end - line) > name_len && line[name_len] == ':' &&
            strncasecmp(line, name, name_len) == 0) {
            const char *v = line + name_len + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            const char *e = end;
            while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
            *value_len = (size_t)(e - v);
            return v;
        }
        line = end;
    }
    return NULL;
}

static int parse_length(const char *text, size_t len, unsigned long long *out) {
    if (len == 0 || len > 19)
        return -1;
    unsigned long long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (text[i] < '0' || text[i] > '9')
            return -1;
        v = v * 10 + (unsigned long long)(text[i] - '0');
    }
    *out = v;
    return 0;
}

/* Serve HTTP/1.1 on fd; `buf` (HTTP_HEAD_MAX + 1 bytes) already holds `have` bytes. */
static void serve_http(int fd, char *buf, size_t have) {
    unsigned char *body = malloc(HTTP_BODY_BUF);
    if (body == NULL)
        return;
    for (;;) {
        char *end;
        while ((end = memmem(buf, have, "\r\n\r\n", 4)) == NULL) {
            if (have >= HTTP_HEAD_MAX) {
                http_simple(fd, "431 Request Header Fields Too Large");
                goto out;
            }
            ssize_t n = recv(fd, buf + have, HTTP_HEAD_MAX - have, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                goto out;
            have += (size_t)n;
        }
        end[2] = '\0'; /* the head, each line ending in \r\n */
        size_t used = (size_t)(end - buf) + 4;
        char method[16], target[256], version[16];
        if (sscanf(buf, "%15s %255s %15s", method, target, version) != 3 ||
            strcmp(version, "HTTP/1.1") != 0) {
            http_simple(fd, "400 Bad Request");
            goto out;
        }
        size_t vlen = 0;
        const char *value = http_header(buf, "Connection", &vlen);
        int close_after = value != NULL && vlen == 5 && strncasecmp(value, "close", 5) == 0;
        unsigned long long length = 0;
        value = http_header(buf, "Content-Length", &vlen);
        if (value != NULL && parse_length(value, vlen, &length) < 0) {
            http_simple(fd, "400 Bad Request");
            goto out;
        }
        if (http_header(buf, "Transfer-Encoding", &vlen) != NULL) {
            http_simple(fd, "501 Not Implemented"); /* the load generator never sends one */
            goto out;
        }
        int echo = strcmp(method, "POST") == 0 && strcmp(target, "/echo") == 0;
        unsigned long long get_n = 0;
        int get = strcmp(method, "GET") == 0 && strncmp(target, "/bytes/", 7) == 0 &&
                  parse_length(target + 7, strlen(target + 7), &get_n) == 0;
        char head[160];
        int head_len = snprintf(head, sizeof head,
                                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                "Content-Length: %llu\r\n\r\n",
                                echo ? length : get_n);
        /* The body: what came with the head first, then from the socket. */
        size_t early = have - used < length ? have - used : (size_t)length;
        unsigned long long left = length - early;
        if (echo && length <= HTTP_BODY_BUF) { /* small: head and body in one write */
            memcpy(body, buf + used, early);
            size_t got = early;
            while (got < length) {
                ssize_t n = recv(fd, body + got, (size_t)length - got, 0);
                if (n < 0 && errno == EINTR)
                    continue;
                if (n <= 0)
                    goto out;
                got += (size_t)n;
            }
            struct iovec iov[2] = {{head, (size_t)head_len}, {body, (size_t)length}};
            if (writev_all(fd, iov, 2) < 0)
                goto out;
        } else if (echo) { /* large: stream it back as it comes */
            if (write_all(fd, (unsigned char *)head, (size_t)head_len) < 0 ||
                write_all(fd, (unsigned char *)buf + used, early) < 0)
                goto out;
            while (left > 0) {
                ssize_t n = recv(fd, body, left < HTTP_BODY_BUF ? (size_t)left : HTTP_BODY_BUF, 0);
                if (n < 0 && errno == EINTR)
                    continue;
                if (n <= 0 || write_all(fd, body, (size_t)n) < 0)
                    goto out;
                left -= (unsigned long long)n;
            }
        } else {
            while (left > 0) { /* a body nobody asked for: read and drop it */
                ssize_t n = recv(fd, body, left < HTTP_BODY_BUF ? (size_t)left : HTTP_BODY_BUF, 0);
                if (n < 0 && errno == EINTR)
                    continue;
                if (n <= 0)
                    goto out;
                left -= (unsigned long long)n;
            }
            if (!get) {
                if (http_simple(fd, "404 Not Found") < 0)
                    goto out;
            } else {
                size_t first = get_n < CHUNK ? (size_t)get_n : CHUNK;
                struct iovec iov[2] = {{head, (size_t)head_len}, {pattern, first}};
                if (writev_all(fd, iov, 2) < 0)
                    goto out;
                unsigned long long sent = first;
                while (sent < get_n) {
                    unsigned long long rest = get_n - sent;
                    size_t len = rest < CHUNK ? (size_t)rest : CHUNK;
                    if (write_all(fd, pattern + sent % PATTERN_PERIOD, len) < 0)
                        goto out;
                    sent += len;
                }
            }
        }
        if (close_after)
            goto out;
        used += early;
        memmove(buf, buf + used, have - used); /* the next (pipelined) request, if any */
        have -= used;
    }
out:
    free(body);
}

static int is_http_request_line(const char *line, size_t len) {
    return len >= 10 && strncmp(line + len - 10, " HTTP/1.1\r", 10) == 0;
}

static void *serve(void *arg) {
    int fd = (int)(intptr_t)arg;
    unsigned char header[HEADER_MAX + 1];
    size_t have = 0;
    char *newline = NULL;
    while (newline == NULL && have < HEADER_MAX) {
        ssize_t n = recv(fd, header + have, HEADER_MAX - have, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto done;
        have += (size_t)n;
        newline = memchr(header, '\n', have);
    }
    if (newline == NULL)
        goto done;
    if (is_http_request_line((char *)header, (size_t)((unsigned char *)newline - header))) {
        char *buf = malloc(HTTP_HEAD_MAX + 1);
        if (buf != NULL) {
            memcpy(buf, header, have);
            serve_http(fd, buf, have);
            free(buf);
        }
        goto done;
    }
    *newline = '\0';
    size_t used = (size_t)((unsigned char *)newline - header) + 1;
    if (strcmp((char *)header, "ECHO") == 0) {
        serve_echo(fd, header + used, have - used);
    } else if (strncmp((char *)header, "GET ", 4) == 0) {
        char *end = NULL;
        errno = 0;
        unsigned long long n = strtoull((char *)header + 4, &end, 10);
        if (errno == 0 && end != (char *)header + 4 && *end == '\0')
            serve_get(fd, n);
    } else if (strncmp((char *)header, "PUT ", 4) == 0) {
        char *end = NULL;
        errno = 0;
        unsigned long long n = strtoull((char *)header + 4, &end, 10);
        if (errno == 0 && end != (char *)header + 4 && *end == '\0')
            serve_put(fd, n, header + used, have - used);
    }
done:
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    const char *host = argc > 1 ? argv[1] : "127.0.0.1";
    signal(SIGPIPE, SIG_IGN);

    pattern = malloc(PATTERN_LEN);
    if (pattern == NULL)
        return 1;
    for (size_t i = 0; i < PATTERN_LEN; i++)
        pattern[i] = (unsigned char)(i % PATTERN_PERIOD);

    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "target: bad address %s\n", host);
        return 2;
    }
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 4096) < 0) {
        perror("target: bind/listen");
        return 1;
    }
    socklen_t alen = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &alen);
    printf("%u\n", (unsigned)ntohs(addr.sin_port));
    fflush(stdout);

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 128u * 1024u);
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE) {
                perror("target: accept");
                usleep(10000);
                continue;
            }
            perror("target: accept");
            return 1;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pthread_t thread;
        if (pthread_create(&thread, &attr, serve, (void *)(intptr_t)fd) != 0) {
            perror("target: pthread_create");
            close(fd);
        }
    }
}
