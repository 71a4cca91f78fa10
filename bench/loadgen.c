/* loadgen: a lean RPC load generator for bench/run.py (one thread, epoll, requests built once).

   loadgen --port P [options]        prints one JSON line on stdout

   --connections N    connections (default 4)
   --inflight K       calls kept outstanding on each connection (default 1)
   --duration S       measuring window in seconds (default 3); calls complete inside it count
   --warmup S         load applied before the window opens (default 0.2)
   --rate R           open loop instead: R calls/s in all, sent on a fixed schedule, each
                      latency counted from its scheduled send time (no coordinated omission)
   --once             send K calls on each connection once; report the wall time to the last
   --proto P          json (JSON-RPC 2.0, default), legacy ({"in": ..., "params": ...}),
                      msgpack (msgpack-rpc, unframed, as mprpc speaks it)
   --byteorder B      big (default) or little: the 4-byte length prefix of json and legacy
   --method M         method name (default echo)
   --arg A            its one argument: a JSON literal (default "0123456789abcdef"); for
                      msgpack a "string" or a number
   --expect TEXT      reject the run unless the first reply contains TEXT (default: the arg)
   --cpu-pid PID      also report that process's CPU time (user+system from /proc/PID/stat)
                      over the window, per call

   Replies are matched to their call by id (json, msgpack) or by order (legacy). The output has
   calls, seconds, calls_per_s, p50_us, p90_us, p99_us, p999_us, max_us, errors, the server's
   cpu_us_per_call and the load generator's own. */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { JSON, LEGACY, MSGPACK };

typedef struct {
    char *p;
    size_t len;
} frame_t;

typedef struct {
    int fd;
    char *rbuf;
    size_t rlen, rcap;
    char *wbuf;
    size_t wlen, woff, wcap;
    int want_out;
    double *sent_at;  /* per slot: when its call was (or was scheduled to be) sent */
    int *free_slots;  /* stack of free slot numbers */
    int nfree;
    int *order;       /* legacy: FIFO ring of outstanding slots */
    int ohead, otail;
    int outstanding;
    double next_send; /* open loop: the next scheduled send */
    int sent_once;
} conn_t;

static int proto = JSON, little = 0, nconn = 4, inflight = 1, once = 0, nslots;
static double duration = 3, warmup = 0.2, rate = 0;
static const char *method = "echo", *arg = "\"0123456789abcdef\"", *expect = NULL;
static int port = 0, cpu_pid = 0;
static frame_t *frames;
static conn_t *conns;
static int epfd;

/* Latency histogram: 1 µs buckets to 100 ms, then 1 ms buckets to 100 s. */
#define FINE 100000
#define COARSE 100000
static uint64_t hist_fine[FINE], hist_coarse[COARSE], hist_over;
static uint64_t counted, errors, total_done;
static double max_lat;
static double window_start, window_end;
static int checked;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, errno ? strerror(errno) : "failed");
    printf("{\"error\": \"%s\"}\n", what);
    exit(1);
}

static void fail(const char *what) {
    errno = 0;
    die(what);
}

static void *xmalloc(size_t n) {
    void *p = calloc(1, n);
    if (!p) die("out of memory");
    return p;
}

static void record(double latency) {
    double us = latency * 1e6;
    if (us < 0) us = 0;
    if (us < FINE) hist_fine[(int)us]++;
    else if (us / 1000 < COARSE) hist_coarse[(int)(us / 1000)]++;
    else hist_over++;
    if (latency > max_lat) max_lat = latency;
    counted++;
}

static double percentile(double q) {
    uint64_t rank = (uint64_t)(q * counted), seen = 0;
    if (rank >= counted) rank = counted ? counted - 1 : 0;
    for (int i = 0; i < FINE; i++)
        if ((seen += hist_fine[i]) > rank) return i + 0.5;
    for (int i = 0; i < COARSE; i++)
        if ((seen += hist_coarse[i]) > rank) return i * 1000.0 + 500;
    return max_lat * 1e6;
}

/* -- requests, built once per slot ---------------------------------------------------------- */

static size_t mp_uint(unsigned char *o, uint32_t v) {
    if (v < 128) { o[0] = v; return 1; }
    if (v < 65536) { o[0] = 0xcd; o[1] = v >> 8; o[2] = v; return 3; }
    o[0] = 0xce; o[1] = v >> 24; o[2] = v >> 16; o[3] = v >> 8; o[4] = v; return 5;
}

static size_t mp_str(unsigned char *o, const char *s, size_t n) {
    size_t h;
    if (n < 32) { o[0] = 0xa0 | n; h = 1; }
    else if (n < 256) { o[0] = 0xd9; o[1] = n; h = 2; }
    else { o[0] = 0xda; o[1] = n >> 8; o[2] = n; h = 3; }
    memcpy(o + h, s, n);
    return h + n;
}

static void build_frames(void) {
    frames = xmalloc(sizeof(frame_t) * nslots);
    for (int s = 0; s < nslots; s++) {
        size_t cap = 64 + strlen(method) + strlen(arg) * 2;
        unsigned char *buf = xmalloc(cap);
        size_t n = 0;
        if (proto == MSGPACK) {
            buf[n++] = 0x94;
            buf[n++] = 0x00;
            n += mp_uint(buf + n, s);
            n += mp_str(buf + n, method, strlen(method));
            buf[n++] = 0x91;
            if (arg[0] == '"') {
                n += mp_str(buf + n, arg + 1, strlen(arg) - 2);
            } else {
                double d = strtod(arg, NULL);
                uint64_t bits;
                memcpy(&bits, &d, 8);
                buf[n++] = 0xcb;
                for (int i = 7; i >= 0; i--) buf[n++] = bits >> (8 * i);
            }
        } else {
            int body;
            if (proto == JSON)
                body = snprintf((char *)buf + 4, cap - 4,
                                "{\"jsonrpc\":\"2.0\",\"method\":\"%s\",\"params\":[%s],\"id\":%d}",
                                method, arg, s);
            else
                body = snprintf((char *)buf + 4, cap - 4, "{\"in\":\"%s\",\"params\":%s}", method, arg);
            uint32_t len = body;
            if (little) { buf[0] = len; buf[1] = len >> 8; buf[2] = len >> 16; buf[3] = len >> 24; }
            else { buf[0] = len >> 24; buf[1] = len >> 16; buf[2] = len >> 8; buf[3] = len; }
            n = 4 + body;
        }
        frames[s].p = (char *)buf;
        frames[s].len = n;
    }
}

/* -- connections ----------------------------------------------------------------------------- */

static void want_out(conn_t *c, int on) {
    if (c->want_out == on) return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl");
    c->want_out = on;
}

static void flush(conn_t *c) {
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) { want_out(c, 1); return; }
            die("send");
        }
        c->woff += n;
    }
    c->woff = c->wlen = 0;
    want_out(c, 0);
}

static void send_call(conn_t *c, double at) {
    if (!c->nfree) fail("no free call slot (the server fell too far behind the offered rate)");
    int s = c->free_slots[--c->nfree];
    frame_t *f = &frames[s];
    if (c->wlen + f->len > c->wcap) {
        c->wcap = (c->wlen + f->len) * 2;
        c->wbuf = realloc(c->wbuf, c->wcap);
        if (!c->wbuf) die("out of memory");
    }
    memcpy(c->wbuf + c->wlen, f->p, f->len);
    c->wlen += f->len;
    c->sent_at[s] = at;
    if (proto == LEGACY) {
        c->order[c->otail] = s;
        c->otail = (c->otail + 1) % nslots;
    }
    c->outstanding++;
}

static void check_first(const char *body, size_t len) {
    const char *want = expect ? expect : arg;
    size_t wl = strlen(want);
    if (proto == MSGPACK && !expect && want[0] == '"') { want++; wl -= 2; }
    if (!memmem(body, len, want, wl)) {
        fprintf(stderr, "loadgen: unexpected first reply: %.*s\n", (int)(len < 300 ? len : 300), body);
        fail("unexpected first reply");
    }
    checked = 1;
}

static void completed(conn_t *c, int s, int is_error, double t) {
    if (s < 0 || s >= nslots) fail("reply with an unknown id");
    c->free_slots[c->nfree++] = s;
    c->outstanding--;
    total_done++;
    if (is_error) errors++;
    double origin = c->sent_at[s];
    /* A call counts when it completes inside the window (open loop: when it was scheduled
       inside it, however late it completes). */
    if (rate > 0 ? (origin >= window_start && origin < window_end)
                 : (t >= window_start && t < window_end))
        record(t - origin);
    if (rate == 0 && !once && t < window_end) send_call(c, t);
}

/* Skip one msgpack object at p; its length, or 0 if incomplete. */
static size_t mp_skip(const unsigned char *p, size_t n) {
    if (!n) return 0;
    unsigned b = p[0];
    size_t h = 1, len = 0, items = 0;
#define NEED(k) do { if (n < (k)) return 0; } while (0)
#define BE16(q) (((size_t)(q)[0] << 8) | (q)[1])
#define BE32(q) (((size_t)(q)[0] << 24) | ((size_t)(q)[1] << 16) | ((size_t)(q)[2] << 8) | (q)[3])
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) return 1;
    if ((b & 0xe0) == 0xa0) { len = b & 0x1f; }
    else if ((b & 0xf0) == 0x90) { items = b & 0x0f; }
    else if ((b & 0xf0) == 0x80) { items = 2 * (b & 0x0f); }
    else switch (b) {
        case 0xcc: case 0xd0: return n >= 2 ? 2 : 0;
        case 0xcd: case 0xd1: return n >= 3 ? 3 : 0;
        case 0xce: case 0xd2: case 0xca: return n >= 5 ? 5 : 0;
        case 0xcf: case 0xd3: case 0xcb: return n >= 9 ? 9 : 0;
        case 0xd9: case 0xc4: NEED(2); len = p[1]; h = 2; break;
        case 0xda: case 0xc5: NEED(3); len = BE16(p + 1); h = 3; break;
        case 0xdb: case 0xc6: NEED(5); len = BE32(p + 1); h = 5; break;
        case 0xdc: NEED(3); items = BE16(p + 1); h = 3; break;
        case 0xdd: NEED(5); items = BE32(p + 1); h = 5; break;
        case 0xde: NEED(3); items = 2 * BE16(p + 1); h = 3; break;
        case 0xdf: NEED(5); items = 2 * BE32(p + 1); h = 5; break;
        case 0xd4: return n >= 3 ? 3 : 0;
        case 0xd5: return n >= 4 ? 4 : 0;
        case 0xd6: return n >= 6 ? 6 : 0;
        case 0xd7: return n >= 10 ? 10 : 0;
        case 0xd8: return n >= 18 ? 18 : 0;
        case 0xc7: NEED(3); len = p[1] + 1; h = 2; break;
        case 0xc8: NEED(4); len = BE16(p + 1) + 1; h = 3; break;
        case 0xc9: NEED(6); len = BE32(p + 1) + 1; h = 5; break;
        default: fail("bad msgpack reply");
    }
    if (items) {
        size_t off = h;
        for (size_t i = 0; i < items; i++) {
            size_t k = mp_skip(p + off, n - off);
            if (!k) return 0;
            off += k;
        }
        return off;
    }
    return n >= h + len ? h + len : 0;
}

static size_t parse_msgpack(conn_t *c, double t) {
    const unsigned char *p = (const unsigned char *)c->rbuf;
    size_t off = 0, n = c->rlen;
    while (off < n) {
        size_t k = mp_skip(p + off, n - off);
        if (!k) break;
        const unsigned char *m = p + off;
        if (m[0] != 0x94 || m[1] != 0x01) fail("reply is not a msgpack-rpc response");
        uint32_t id;
        size_t idl;
        if (m[2] <= 0x7f) { id = m[2]; idl = 1; }
        else if (m[2] == 0xcc) { id = m[3]; idl = 2; }
        else if (m[2] == 0xcd) { id = BE16(m + 3); idl = 3; }
        else if (m[2] == 0xce) { id = BE32(m + 3); idl = 5; }
        else fail("bad msgpack-rpc msgid");
        int is_error = m[2 + idl] != 0xc0;
        if (!checked) check_first((const char *)m, k);
        completed(c, (int)id, is_error, t);
        off += k;
    }
    return off;
}

static size_t parse_framed(conn_t *c, double t) {
    const unsigned char *p = (const unsigned char *)c->rbuf;
    size_t off = 0, n = c->rlen;
    while (n - off >= 4) {
        const unsigned char *q = p + off;
        size_t len = little ? ((size_t)q[3] << 24 | q[2] << 16 | q[1] << 8 | q[0]) : BE32(q);
        if (n - off - 4 < len) break;
        const char *body = (const char *)q + 4;
        if (!checked) check_first(body, len);
        int s, is_error;
        if (proto == LEGACY) {
            if (!c->outstanding) fail("a reply nobody asked for");
            s = c->order[c->ohead];
            c->ohead = (c->ohead + 1) % nslots;
            is_error = memmem(body, len, "\"out\":\"error\"", 13) != NULL;
        } else {
            const char *id = memmem(body, len, "\"id\":", 5);
            if (!id) fail("reply without an id");
            s = atoi(id + 5);
            is_error = memmem(body, len, "\"error\"", 7) != NULL;
        }
        completed(c, s, is_error, t);
        off += 4 + len;
    }
    return off;
}

static void on_readable(conn_t *c, double t) {
    for (;;) {
        if (c->rcap - c->rlen < 65536) {
            c->rcap = c->rcap * 2 + 65536;
            c->rbuf = realloc(c->rbuf, c->rcap);
            if (!c->rbuf) die("out of memory");
        }
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            die("recv");
        }
        if (n == 0) fail("the server closed a connection");
        c->rlen += n;
        size_t used = proto == MSGPACK ? parse_msgpack(c, t) : parse_framed(c, t);
        if (used) {
            memmove(c->rbuf, c->rbuf + used, c->rlen - used);
            c->rlen -= used;
        }
        if ((size_t)n < 65536) break;
    }
}

static void open_conn(conn_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) die("socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(c->fd, F_SETFL, O_NONBLOCK);
    c->sent_at = xmalloc(sizeof(double) * nslots);
    c->free_slots = xmalloc(sizeof(int) * nslots);
    c->order = xmalloc(sizeof(int) * nslots);
    for (int s = 0; s < nslots; s++) c->free_slots[c->nfree++] = nslots - 1 - s;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
}

static double cpu_of(int pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) die("cannot read the server's /proc/PID/stat");
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    /* fields after the name: state(3) ... utime(14) stime(15) */
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        fail("cannot parse /proc/PID/stat");
    return (double)(ut + st) / sysconf(_SC_CLK_TCK);
}

static double self_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "--once")) { once = 1; continue; }
        if (!v) { fprintf(stderr, "loadgen: %s needs a value\n", o); return 2; }
        i++;
        if (!strcmp(o, "--port")) port = atoi(v);
        else if (!strcmp(o, "--connections")) nconn = atoi(v);
        else if (!strcmp(o, "--inflight")) inflight = atoi(v);
        else if (!strcmp(o, "--duration")) duration = atof(v);
        else if (!strcmp(o, "--warmup")) warmup = atof(v);
        else if (!strcmp(o, "--rate")) rate = atof(v);
        else if (!strcmp(o, "--method")) method = v;
        else if (!strcmp(o, "--arg")) arg = v;
        else if (!strcmp(o, "--expect")) expect = v;
        else if (!strcmp(o, "--cpu-pid")) cpu_pid = atoi(v);
        else if (!strcmp(o, "--byteorder")) little = !strcmp(v, "little");
        else if (!strcmp(o, "--proto")) {
            if (!strcmp(v, "json")) proto = JSON;
            else if (!strcmp(v, "legacy")) proto = LEGACY;
            else if (!strcmp(v, "msgpack")) proto = MSGPACK;
            else { fprintf(stderr, "loadgen: unknown --proto %s\n", v); return 2; }
        } else { fprintf(stderr, "loadgen: unknown option %s\n", o); return 2; }
    }
    if (!port || nconn < 1 || inflight < 1) { fprintf(stderr, "loadgen: --port is required\n"); return 2; }
    nslots = rate > 0 ? 65536 : inflight;
    build_frames();
    epfd = epoll_create1(0);
    if (epfd < 0) die("epoll_create1");
    conns = xmalloc(sizeof(conn_t) * nconn);
    for (int i = 0; i < nconn; i++) open_conn(&conns[i]);

    /* One call on the first connection before anything else: the reply is checked. (With
       --once the first reply of the run itself is: the call may be a long one.) */
    struct epoll_event evs[256];
    if (!once) {
        send_call(&conns[0], now_s());
        flush(&conns[0]);
    }
    double deadline = now_s() + 30;
    while (!once && (!checked || conns[0].outstanding)) {
        if (now_s() > deadline) fail("no reply to the first call within 30 s");
        int n = epoll_wait(epfd, evs, 256, 1000);
        for (int i = 0; i < n; i++) on_readable(evs[i].data.ptr, now_s());
    }
    if (errors) fail("the first call was answered with an error");
    total_done = errors = 0;

    double start = now_s();
    if (once) { window_start = start; window_end = 1e300; }
    else { window_start = start + warmup; window_end = window_start + duration; }
    double interval = rate > 0 ? nconn / rate : 0;
    for (int i = 0; i < nconn; i++) {
        conn_t *c = &conns[i];
        if (rate > 0) c->next_send = start + interval * i / nconn;
        else for (int k = 0; k < inflight; k++) send_call(c, start);
        flush(c);
    }
    double cpu0 = 0, mine0 = 0, opened = 0;
    int window_open = 0;
    double hard_end = once ? start + 600 : window_end + 10;
    for (;;) {
        double t = now_s();
        if (!window_open && t >= window_start) {
            window_open = 1;
            opened = t;
            if (cpu_pid) cpu0 = cpu_of(cpu_pid);
            mine0 = self_cpu();
        }
        int busy = 0;
        for (int i = 0; i < nconn; i++) busy += conns[i].outstanding;
        if (once && !busy) break;
        if (!once && t >= window_end && (rate == 0 || !busy)) break;
        if (t >= hard_end) fail("replies still missing 10 s after the window closed");
        int timeout = 100;
        if (rate > 0) {
            double next = 1e300;
            for (int i = 0; i < nconn; i++) {
                conn_t *c = &conns[i];
                while (c->next_send <= t && c->next_send < window_end) {
                    send_call(c, c->next_send);
                    c->next_send += interval;
                }
                if (c->wlen && !c->want_out) flush(c);
                if (c->next_send < window_end && c->next_send < next) next = c->next_send;
            }
            double wait = next - now_s();
            timeout = next == 1e300 ? 50 : wait <= 0 ? 0 : (int)(wait * 1000);
        } else if (!window_open) {
            int w = (int)((window_start - t) * 1000) + 1;
            timeout = w < timeout ? w : timeout;
        } else if (t < window_end) {
            int w = (int)((window_end - t) * 1000) + 1;
            timeout = w < timeout ? w : timeout;
        }
        int n = epoll_wait(epfd, evs, 256, timeout);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        t = now_s();
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c, t);
            if (evs[i].events & EPOLLOUT) flush(c);
        }
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->wlen && !c->want_out) flush(c);
        }
    }
    double closed = now_s();
    double cpu = cpu_pid ? cpu_of(cpu_pid) - cpu0 : 0, mine = self_cpu() - mine0;
    double seconds = once ? closed - start : rate > 0 ? duration : closed - opened;
    uint64_t calls = once ? total_done : counted;
    printf("{\"calls\": %llu, \"seconds\": %.6f, \"calls_per_s\": %.1f, \"p50_us\": %.1f, "
           "\"p90_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, \"max_us\": %.1f, "
           "\"errors\": %llu, \"cpu_us_per_call\": %.3f, \"loadgen_cpu_us_per_call\": %.3f}\n",
           (unsigned long long)calls, seconds, calls / seconds, percentile(0.5), percentile(0.9),
           percentile(0.99), percentile(0.999), max_lat * 1e6, (unsigned long long)errors,
           calls && cpu_pid ? cpu * 1e6 / calls : 0.0, calls ? mine * 1e6 / calls : 0.0);
    return 0;
}
