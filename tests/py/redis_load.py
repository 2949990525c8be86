"""Workloads for tests/tests/redis_complete.rs, against HOST PORT, over raw sockets (RESP), each
printing `ok: ...` lines and exiting non-zero with `FAILED: ...` on the first wrong answer.

  bigvalue HOST PORT MB      SET/GET of an MB-megabyte value (SHA-256 compared), then one
                             pipeline of 10,000 SETs and 10,000 GETs, every reply checked
  checksums HOST PORT N      N keys with values that carry their own SHA-256, written in
                             pipelines of 1,000, read back and verified
  queued HOST PORT N SECS    opens N connections (each must connect within SECS), sends PING on
                             each, then reads every +PONG; counts resets
  slowreader HOST PORT       GETs a 1 MB value 200 times without reading; reports when Redis
                             closes the connection
  partial HOST PORT          sends half a command and waits (to be killed)
"""

import hashlib
import os
import socket
import sys
import time


def fail(msg):
    print("FAILED:", msg, flush=True)
    sys.exit(1)


def cmd(*words):
    out = [b"*%d\r\n" % len(words)]
    for w in words:
        if isinstance(w, str):
            w = w.encode()
        elif isinstance(w, int):
            w = str(w).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(w), w))
    return b"".join(out)


class Reader:
    """Reads RESP replies from a socket."""

    def __init__(self, sock):
        self.s = sock
        self.buf = bytearray()
        self.pos = 0

    def _fill(self):
        b = self.s.recv(1 << 20)
        if not b:
            fail("connection closed by the server")
        if self.pos > (1 << 20):
            del self.buf[: self.pos]
            self.pos = 0
        self.buf += b

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                line = bytes(self.buf[self.pos : i])
                self.pos = i + 2
                return line
            self._fill()

    def _exact(self, n):
        while len(self.buf) - self.pos < n + 2:
            self._fill()
        data = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n + 2
        return data

    def reply(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t in (b"+", b"-", b":"):
            return line
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if t == b"*":
            return [self.reply() for _ in range(int(rest))]
        fail("bad reply line %r" % line)


def connect(host, port, timeout=60):
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def expect(got, want, what):
    if got != want:
        fail("%s: got %r, want %r" % (what, got if not isinstance(got, bytes) or len(got) < 80 else got[:80], want if not isinstance(want, bytes) or len(want) < 80 else want[:80]))


def bigvalue(host, port, mb):
    s = connect(host, port, timeout=120)
    r = Reader(s)
    block = hashlib.sha256(b"big").digest() * 32768  # 1 MiB
    value = block * mb
    s.sendall(cmd("SET", "big", value))
    expect(r.reply(), b"+OK", "SET of %d MB" % mb)
    s.sendall(cmd("GET", "big"))
    got = r.reply()
    expect(hashlib.sha256(got).hexdigest(), hashlib.sha256(value).hexdigest(), "GET of %d MB" % mb)
    print("ok: %d MB value round-trips (SHA-256 equal)" % mb, flush=True)
    n = 10000
    s.sendall(b"".join(cmd("SET", "p%d" % i, "v%d" % (i * 7)) for i in range(n)))
    for i in range(n):
        expect(r.reply(), b"+OK", "pipelined SET %d" % i)
    s.sendall(b"".join(cmd("GET", "p%d" % i) for i in range(n)))
    for i in range(n):
        expect(r.reply(), b"v%d" % (i * 7), "pipelined GET %d" % i)
    print("ok: a pipeline of %d SETs and %d GETs" % (n, n), flush=True)


def value_for(i):
    body = b"value-%d-" % i + bytes((i * 13 + k) % 256 for k in range(64))
    return hashlib.sha256(body).hexdigest().encode() + body


def checksums(host, port, n):
    s = connect(host, port, timeout=120)
    r = Reader(s)
    batch = 1000
    for start in range(0, n, batch):
        idx = range(start, min(n, start + batch))
        s.sendall(b"".join(cmd("SET", "c%d" % i, value_for(i)) for i in idx))
        for i in idx:
            expect(r.reply(), b"+OK", "SET c%d" % i)
    print("ok: %d keys written" % n, flush=True)
    bad = 0
    for start in range(0, n, batch):
        idx = range(start, min(n, start + batch))
        s.sendall(b"".join(cmd("GET", "c%d" % i) for i in idx))
        for i in idx:
            v = r.reply()
            if v is None or hashlib.sha256(v[64:]).hexdigest().encode() != v[:64] or v != value_for(i):
                bad += 1
    if bad:
        fail("%d of %d values came back wrong" % (bad, n))
    print("ok: %d values read back intact" % n, flush=True)


def queued(host, port, n, secs):
    # Redis is busy (DEBUG SLEEP): a PING gets no answer for half a second.
    probe = connect(host, port, timeout=secs)
    probe.sendall(cmd("PING"))
    probe.settimeout(0.5)
    try:
        probe.recv(16)
        fail("Redis answered at once: it is not busy")
    except socket.timeout:
        print("ok: Redis is busy", flush=True)
    # All n connects at once (non-blocking), then wait for every handshake.
    import select
    t0 = time.monotonic()
    socks = []
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex((host, port))
        socks.append(s)
    pending = set(socks)
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLOUT)
    by_fd = {s.fileno(): s for s in socks}
    while pending:
        left = secs - (time.monotonic() - t0)
        if left <= 0:
            fail("%d of %d connections not established within %s s" % (len(pending), n, secs))
        for fd, ev in poller.poll(left * 1000):
            s = by_fd[fd]
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                fail("connect: %s" % os.strerror(err))
            poller.unregister(s)
            pending.discard(s)
    took = time.monotonic() - t0
    for s in socks:
        s.setblocking(True)
    print("ok: %d connections established in %.2f s" % (n, took), flush=True)
    for s in socks:
        s.sendall(cmd("PING"))
    pongs = resets = 0
    for s in socks:
        s.settimeout(60)
        try:
            if Reader(s).reply() == b"+PONG":
                pongs += 1
        except (ConnectionResetError, BrokenPipeError):
            resets += 1
    probe.settimeout(60)
    expect(Reader(probe).reply(), b"+PONG", "the busy probe's PING")
    print("connected_in=%.2f pongs=%d resets=%d" % (took, pongs, resets), flush=True)
    if pongs != n:
        fail("%d of %d connections answered PONG (%d reset)" % (pongs, n, resets))
    print("ok: every queued connection served", flush=True)


def slowreader(host, port):
    s = connect(host, port)
    s.sendall(cmd("SET", "slow", b"x" * (1 << 20)))
    expect(Reader(s).reply(), b"+OK", "SET slow")
    # 200 MB of replies asked for, none read: Redis's output buffer limit must close us.
    s.sendall(b"".join(cmd("GET", "slow") for _ in range(200)))
    time.sleep(0.5)  # let the replies pile up in Redis's output buffer before reading anything
    got = 0
    s.settimeout(30)
    try:
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            got += len(b)
    except ConnectionResetError:
        pass
    if got >= 200 * (1 << 20):
        fail("every reply arrived (%d bytes): the connection was never closed" % got)
    print("ok: closed by the server after %d of %d bytes" % (got, 200 << 20), flush=True)


def partial(host, port):
    s = connect(host, port)
    s.sendall(b"*3\r\n$3\r\nSET\r\n$4\r\nhalf")
    print("sent", flush=True)
    time.sleep(3600)


def main():
    what, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if what == "bigvalue":
        bigvalue(host, port, int(sys.argv[4]))
    elif what == "checksums":
        checksums(host, port, int(sys.argv[4]))
    elif what == "queued":
        queued(host, port, int(sys.argv[4]), float(sys.argv[5]))
    elif what == "slowreader":
        slowreader(host, port)
    elif what == "partial":
        partial(host, port)
    else:
        fail("unknown workload " + what)


main()
