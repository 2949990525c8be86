"""Clients that check every reply a server gives, for the servers of tests/tests/servers.rs.

    check_clients.py echo HOST PORT CONNS ROUNDS
        CONNS connections at once, each sending ROUNDS messages of 1 to 6,000 random bytes and
        reading each back whole before the next; every byte must come back, in order.
    check_clients.py http HOST PORT CONNS REQUESTS keepalive|close
        GET /SIZE/TAG (tests/js/http_server.js); every body must be SIZE bytes of TAG repeated.
        keepalive: one connection per client thread; close: a new connection per request.
    check_clients.py static HOST PORT CONNS REQUESTS keepalive|close [PAUSE_MS]
        GET of the files /index.txt names (each named by the SHA-256 of its content, as
        `make_docroot` writes them), every body checked against its name; PAUSE_MS between
        requests. Says `started` once every client thread got its first reply.
        A kept-alive connection the server closed or reset is counted and the
        request retried once on a new one, as clients do. Prints one line per client thread:
        `conn I pid P ok N lost P1,P2` or `conn I pid P FAIL ...` (P: the X-Pid header, the
        server process that answered last; lost: the processes whose connections were lost,
        `-` if none), and the summary only if all passed.
    check_clients.py make_docroot DIR FILES
        Writes FILES files of 0 to 200,000 bytes into DIR, named by their SHA-256, and
        DIR/index.txt listing them.
    check_clients.py memcached HOST PORT CONNS OPS
        set then get of OPS keys per connection (text protocol), values of 1 to 20,000 random
        bytes; every get must return the value set.

Prints `ok KIND conns=.. requests=.. bytes=.. sha256=..` (the SHA-256 of everything the
server sent, in a fixed order), or `FAIL ...` lines and exits 1. Timeouts: 20 s per reply.
"""
import hashlib
import http.client
import os
import random
import socket
import sys
import threading
import time

TIMEOUT = 20


def recv_exact(s, n):
    chunks, got = [], 0
    while got < n:
        c = s.recv(min(65536, n - got))
        if not c:
            raise EOFError(f"connection closed after {got} of {n} bytes")
        chunks.append(c)
        got += len(c)
    return b"".join(chunks)


def echo(host, port, i, rounds, out):
    rng = random.Random(i)
    s = socket.create_connection((host, port), timeout=TIMEOUT)
    got = []
    for _ in range(rounds):
        msg = rng.randbytes(rng.randint(1, 6000))
        s.sendall(msg)
        back = recv_exact(s, len(msg))
        if back != msg:
            raise ValueError("echoed bytes differ")
        got.append(back)
    s.close()
    out[i] = (rounds, b"".join(got))


def http_client(host, port, i, reqs, mode, out):
    rng = random.Random(i)
    conn = None
    got = []
    for r in range(reqs):
        if conn is None or mode == "close":
            conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
        size = rng.choice([0, 1, 100, 1024, 5000, 70000])
        tag = f"c{i}r{r}"
        headers = {"Connection": "close"} if mode == "close" else {}
        conn.request("GET", f"/{size}/{tag}", headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise ValueError(f"status {resp.status}")
        want = (tag.encode() * (size // len(tag) + 1))[:size]
        if body != want:
            raise ValueError(f"body of /{size}/{tag}: {len(body)} bytes, not the ones sent")
        got.append(body)
        if mode == "close":
            conn.close()
    if conn is not None:
        conn.close()
    out[i] = (reqs, b"".join(got))


def static(host, port, i, reqs, mode, pause_ms, out, index, pids, lost):
    rng = random.Random(i)
    conn = None
    got = []
    pids[i] = "-"
    lost[i] = []
    for _ in range(reqs):
        name = rng.choice(index)
        headers = {"Connection": "close"} if mode == "close" else {}
        for attempt in (0, 1):
            fresh = conn is None or mode == "close"
            if fresh:
                conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
            try:
                conn.request("GET", f"/{name}.bin", headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A kept-alive connection the server closed or lost (a worker that exited or
                # was killed): a client retries an idempotent GET once on a new connection.
                if fresh or attempt:
                    raise
                lost[i].append(pids[i])
                conn.close()
                conn = None
        if pids[i] == "-":
            first_reply()
        pids[i] = resp.getheader("X-Pid", "-")
        if resp.status != 200:
            raise ValueError(f"status {resp.status} for /{name}.bin")
        if hashlib.sha256(body).hexdigest() != name:
            raise ValueError(f"/{name}.bin: {len(body)} bytes that are not the file's")
        got.append(body)
        if mode == "close":
            conn.close()
        if pause_ms:
            time.sleep(pause_ms / 1000)
    if conn is not None:
        conn.close()
    out[i] = (reqs, b"".join(got))


def make_docroot(root, files):
    rng = random.Random(7)
    names = []
    for n in range(files):
        size = rng.choice([0, 1, 1024, 4096, 65536, 200000]) if n else 1024
        data = rng.randbytes(size)
        name = hashlib.sha256(data).hexdigest()
        with open(os.path.join(root, name + ".bin"), "wb") as f:
            f.write(data)
        names.append(name)
    with open(os.path.join(root, "index.txt"), "w") as f:
        f.write("\n".join(names) + "\n")


def memcached(host, port, i, ops, out):
    rng = random.Random(i)
    s = socket.create_connection((host, port), timeout=TIMEOUT)
    f = s.makefile("rb")
    values = {}
    for k in range(ops):
        key = f"c{i}k{k}"
        val = rng.randbytes(rng.randint(1, 20000))
        values[key] = val
        s.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (key.encode(), len(val), val))
        line = f.readline()
        if line != b"STORED\r\n":
            raise ValueError(f"set {key}: {line!r}")
    got = []
    for key, val in values.items():
        s.sendall(b"get %s\r\n" % key.encode())
        head = f.readline().split()
        if len(head) != 4 or head[0] != b"VALUE" or int(head[3]) != len(val):
            raise ValueError(f"get {key}: {head!r}")
        data = f.read(len(val) + 2)
        if data[:-2] != val or data[-2:] != b"\r\n" or f.readline() != b"END\r\n":
            raise ValueError(f"get {key}: the value differs from the one set")
        got.append(data)
    s.close()
    out[i] = (2 * ops, b"".join(got))


def say(line):
    """One whole line (threads print at once: a single write each)."""
    with SAY:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


SAY = threading.Lock()
FIRST = {"left": 0}


def first_reply():
    """A client thread got its first reply: once all have, say `started` (a test acts on the
    server only once every connection is up)."""
    with SAY:
        FIRST["left"] -= 1
        if FIRST["left"] == 0:
            sys.stdout.write("started\n")
            sys.stdout.flush()


def main():
    if sys.argv[1] == "make_docroot":
        make_docroot(sys.argv[2], int(sys.argv[3]))
        return
    kind, host, port, conns, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    extra = sys.argv[6:]
    fn = {"echo": echo, "http": http_client, "memcached": memcached, "static": static}[kind]
    out, errors = {}, []
    pids, lost = {}, {}
    FIRST["left"] = conns
    if kind == "static":
        c = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
        c.request("GET", "/index.txt")
        index = c.getresponse().read().decode().split()
        c.close()
        pause = int(extra[1]) if len(extra) > 1 else 0
        extra = [extra[0], pause]

    def run(i):
        try:
            if kind == "static":
                fn(host, port, i, n, *extra, out, index, pids, lost)
            else:
                fn(host, port, i, n, *extra, out)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            errors.append(f"conn {i}: {type(e).__name__}: {e}")
            if kind == "static":
                say(f"conn {i} pid {pids.get(i, '-')} FAIL {type(e).__name__}: {e}")
        else:
            if kind == "static":
                gone = ",".join(lost[i]) or "-"
                say(f"conn {i} pid {pids[i]} ok {n} lost {gone}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in errors:
        print(f"FAIL {kind} {e}")
    if errors:
        sys.exit(1)
    h = hashlib.sha256()
    total = 0
    for i in range(conns):
        h.update(out[i][1])
        total += len(out[i][1])
    reqs = sum(out[i][0] for i in range(conns))
    print(f"ok {kind} conns={conns} requests={reqs} bytes={total} sha256={h.hexdigest()}")


if __name__ == "__main__":
    main()
