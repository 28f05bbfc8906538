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
#include <sys/socket.h>
#include <unistd.h>

#define PATTERN_PERIOD 251
#define CHUNK (1u << 20)
#define PATTERN_LEN (CHUNK + PATTERN_PERIOD)
#define ECHO_BUF (64u * 1024u)
#define HEADER_MAX 64

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
