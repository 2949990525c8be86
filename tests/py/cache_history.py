"""A history checker for Redis served with the GET cache (MTCP_REDIS_CACHE): many clients doing
GET/SET/DEL/SET PX/INCR/MULTI/EVAL on a few keys at once, through the stack and through the
kernel side, each operation recorded with its start and end (CLOCK_MONOTONIC, which every process
on the machine shares); then every read is checked against the writes: it must return a value
Redis could have returned at some instant between its start and its end.

  worker HOST PORT ID SECONDS [RELAY...]
      random operations on keys k0..k3 (values) and c0..c1 (counters) for SECONDS; prints one
      JSON record per operation. With RELAY (a command, e.g. `ip netns exec NS python3 THIS
      relay HOST2 PORT2`), every write goes to HOST:PORT and is followed by a GET of the same
      key through the relay: a read that starts after the write was acknowledged (the pattern a
      cache that invalidates late gets wrong).
  relay HOST PORT
      reads RESP requests, one per line of stdin (words separated by spaces), sends each to
      HOST:PORT and prints the reply as JSON.
  check FILE...
      checks the records; prints `ok: N reads, M writes checked` or one `VIOLATION: ...` line per
      wrong read (at most 20) and exits 1.
  causal HOST PORT N RELAY...
      N rounds of: GET k through the relay (twice: the cache fills and answers), SET k to a new
      value at HOST:PORT, GET k through the relay, which must return the new value. Prints
      `ok: N rounds` or `STALE: ...` and exits 1.

Reads are checked with the usual rule for a register whose writes are unique: a read that returns
the value of write W is wrong if W started after the read ended, or another write of the key
started after W ended and ended before the read started (W was overwritten before the read), or
W set a TTL that had run out before the read started. A read of nil is wrong if some write began
after every earlier delete, expiry or the start, and ended before the read started. Counters: a
GET must not return less than an INCR that ended before it started returned, nor more than the
INCRs that started before it ended could have made.
"""

import bisect
import json
import random
import shlex
import socket
import subprocess
import sys
import time

VALUE_KEYS = ["k0", "k1", "k2", "k3"]
COUNTERS = ["c0", "c1"]
# Milliseconds: TTLs of SET PX, and the slack allowed around an expiry.
TTL_MIN, TTL_MAX, EXPIRY_SLACK = 15, 60, 3


def now():
    return time.monotonic_ns()


def cmd(*words):
    out = [b"*%d\r\n" % len(words)]
    for w in words:
        if isinstance(w, str):
            w = w.encode()
        elif isinstance(w, int):
            w = str(w).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(w), w))
    return b"".join(out)


class Conn:
    def __init__(self, host, port):
        self.s = socket.create_connection((host, int(port)), timeout=10)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return {"error": rest.decode()}
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise ValueError("unexpected reply %r" % line)

    def call(self, *words):
        self.s.sendall(cmd(*words))
        return self.reply()


class Relay:
    """A Conn in another network namespace: a `relay` process spoken to over pipes."""

    def __init__(self, argv):
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self.p.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError("relay did not start: %r" % line)

    def call(self, *words):
        self.p.stdin.write((" ".join(str(w) for w in words) + "\n").encode())
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise EOFError("relay exited")
        return json.loads(line)


def record(out, t0, t1, wid, op, key, arg, result):
    out.write(json.dumps([t0, t1, wid, op, key, arg, result]) + "\n")


def worker(host, port, wid, seconds, relay_argv):
    c = Conn(host, port)
    relay = Relay(relay_argv) if relay_argv else None
    out = sys.stdout
    end = time.monotonic() + float(seconds)
    seq = 0
    rnd = random.Random("%s:%d" % (wid, time.time_ns()))
    while time.monotonic() < end:
        seq += 1
        val = "%s:%d" % (wid, seq)
        # A worker with a relay only writes (and reads through the relay).
        r = rnd.random() if relay is None else 0.85 + 0.15 * rnd.random()
        key = rnd.choice(VALUE_KEYS)
        t0 = now()
        if r < 0.80:
            res = c.call("GET", key)
            record(out, t0, now(), wid, "get", key, None, res)
            continue
        if r < 0.85:
            ck = rnd.choice(COUNTERS)
            res = c.call("GET", ck)
            record(out, t0, now(), wid, "get", ck, None, res)
            continue
        if r < 0.90:
            res = c.call("SET", key, val)
            record(out, t0, now(), wid, "set", key, val, res)
        elif r < 0.93:
            res = c.call("DEL", key)
            record(out, t0, now(), wid, "del", key, None, res)
        elif r < 0.95:
            ttl = rnd.randint(TTL_MIN, TTL_MAX)
            res = c.call("SET", key, val, "PX", ttl)
            record(out, t0, now(), wid, "setpx", key, [val, ttl], res)
        elif r < 0.97:
            ck = rnd.choice(COUNTERS)
            res = c.call("INCR", ck)
            record(out, t0, now(), wid, "incr", ck, None, res)
            if rnd.random() < 0.5:
                t2 = now()
                got = c.call("GET", ck)
                record(out, t2, now(), wid, "get", ck, None, got)
            key = None
        elif r < 0.985:
            other = rnd.choice(VALUE_KEYS)
            c.s.sendall(cmd("MULTI") + cmd("SET", key, val) + cmd("SET", other, val + "m") + cmd("EXEC"))
            replies = [c.reply() for _ in range(4)]
            t1 = now()
            record(out, t0, t1, wid, "set", key, val, replies[3])
            if other != key:
                record(out, t0, t1, wid, "set", other, val + "m", replies[3])
            else:
                # The transaction's second SET wins; its first value was never visible.
                record(out, t0, t1, wid, "set", key, val + "m", replies[3])
                record(out, t0, t1, wid, "hidden", key, val, None)
        else:
            res = c.call("EVAL", "return redis.call('SET', KEYS[1], ARGV[1])", 1, key, val)
            record(out, t0, now(), wid, "set", key, val, res)
        if relay is not None and key is not None:
            t2 = now()
            got = relay.call("GET", key)
            record(out, t2, now(), wid + "r", "get", key, None, got)
    out.flush()


def relay_main(host, port):
    c = Conn(host, port)
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        print(json.dumps(c.call(*words)), flush=True)


class PrefixMax:
    """max(value) over the items whose sort key is below a bound, for many bounds."""

    def __init__(self, items):
        items = sorted(items)
        self.keys = [k for k, _ in items]
        self.maxes = []
        m = None
        for _, v in items:
            m = v if m is None or v > m else m
            self.maxes.append(m)

    def below(self, bound, default):
        i = bisect.bisect_left(self.keys, bound)
        return self.maxes[i - 1] if i > 0 else default


def check(files):
    recs = []
    for f in files:
        with open(f) as fh:
            for line in fh:
                line = line.strip()
                if line.startswith("["):
                    recs.append(json.loads(line))
    writes, reads, incrs = {}, [], {}
    values = {}
    for t0, t1, wid, op, key, arg, res in recs:
        if op == "get":
            reads.append((t0, t1, wid, key, res))
        elif op in ("set", "setpx"):
            val, ttl = (arg, None) if op == "set" else (arg[0], arg[1])
            if res not in ("OK", ["OK", "OK"]):
                continue
            w = (t0, t1, val, ttl)
            writes.setdefault(key, []).append(w)
            values[(key, val)] = w
        elif op == "hidden":
            values[(key, arg)] = None
        elif op == "del":
            writes.setdefault(key, []).append((t0, t1, None, None))
        elif op == "incr":
            incrs.setdefault(key, []).append((t0, t1, res))
    slack = EXPIRY_SLACK * 1_000_000
    # Per key: the latest start among writes (any) that ended before t; among SETs alone; the
    # latest end among deletes/expiries that began before t.
    any_write = {k: PrefixMax([(b, a) for a, b, _, _ in ws]) for k, ws in writes.items()}
    sets = {k: PrefixMax([(b, a) for a, b, v, _ in ws if v is not None]) for k, ws in writes.items()}
    gone = {}
    for k, ws in writes.items():
        g = [(-1, -1)]
        for a, b, val, ttl in ws:
            if val is None:
                g.append((a, b))
            elif ttl is not None:
                g.append((a + ttl * 1_000_000 - slack, b + ttl * 1_000_000 + slack))
        gone[k] = PrefixMax(g)
    incr_done = {k: PrefixMax([(b, n) for a, b, n in v]) for k, v in incrs.items()}
    incr_started = {k: PrefixMax([(a, n) for a, b, n in v]) for k, v in incrs.items()}
    empty = PrefixMax([])
    bad = []
    for t0, t1, wid, key, res in reads:
        if key in COUNTERS:
            floor = incr_done.get(key, empty).below(t0, 0)
            ceil = incr_started.get(key, empty).below(t1, 0)
            got = 0 if res is None else int(res)
            if got < floor or got > ceil:
                bad.append("%s read %s=%s in [%d, %d]: counters allow %d..%d"
                           % (wid, key, res, t0, t1, floor, ceil))
            continue
        if res is not None:
            w = values.get((key, res))
            if w is None:
                bad.append("%s read %s=%r, a value no acknowledged write made visible" % (wid, key, res))
                continue
            wt0, wt1, _, ttl = w
            if wt0 >= t1:
                bad.append("%s read %s=%r in [%d, %d] before its write began at %d"
                           % (wid, key, res, t0, t1, wt0))
                continue
            latest = any_write[key].below(t0, -1)
            if latest > wt1:
                bad.append("%s read %s=%r in [%d, %d], but a write of the key began at %d, after "
                           "this value's write [%d, %d] ended, and ended before the read began"
                           % (wid, key, res, t0, t1, latest, wt0, wt1))
                continue
            if ttl is not None and t0 > wt1 + ttl * 1_000_000 + slack:
                bad.append("%s read %s=%r in [%d, %d], expired at the latest at %d (stale by %.3f ms)"
                           % (wid, key, res, t0, t1, wt1 + ttl * 1_000_000,
                              (t0 - wt1 - ttl * 1_000_000) / 1e6))
            continue
        # nil: some delete, expiry or the start began before the read ended, and no SET began
        # after it ended and ended before the read began.
        last_set = sets.get(key, empty).below(t0, -2)
        if gone.get(key, PrefixMax([(-1, -1)])).below(t1, -2) < last_set:
            bad.append("%s read %s=nil in [%d, %d], but a SET that began at %d had made it exist"
                       % (wid, key, t0, t1, last_set))
    for line in bad[:20]:
        print("VIOLATION:", line)
    nw = sum(len(v) for v in writes.values()) + sum(len(v) for v in incrs.values())
    if bad:
        print("FAILED: %d of %d reads wrong" % (len(bad), len(reads)))
        sys.exit(1)
    print("ok: %d reads, %d writes checked" % (len(reads), nw))


def causal(host, port, n, relay_argv):
    c = Conn(host, port)
    relay = Relay(relay_argv)
    for i in range(int(n)):
        val = "v%d" % i
        relay.call("GET", "causal")
        relay.call("GET", "causal")
        if c.call("SET", "causal", val) != "OK":
            print("FAILED: SET")
            sys.exit(1)
        got = relay.call("GET", "causal")
        if got != val:
            print("STALE: round %d: GET after SET %s returned %r" % (i, val, got))
            sys.exit(1)
    print("ok: %s rounds" % n)


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "worker":
        worker(args[0], args[1], args[2], args[3], args[4:])
    elif mode == "relay":
        relay_main(args[0], args[1])
    elif mode == "check":
        check(args)
    elif mode == "causal":
        causal(args[0], args[1], args[2], args[3:])
    else:
        sys.exit("unknown mode " + shlex.quote(mode))


if __name__ == "__main__":
    main()
