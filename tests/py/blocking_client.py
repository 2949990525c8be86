"""The client of blocking_server.py: `blocking_client.py HOST PORT [CONNS]`.

CONNS connections (8 by default) at once, connection k:
    HELLO k; GET (k*1001) 100000; GET (k*7919) 3000000; ECHO (1+37k); ECHO (1000000+k);
    k == 0 also: L2 (the server's second listener: after its idle accept timed out the server
    says CONNECT; the connection made then stays silent and must be closed by the server after
    the listener's SO_RCVTIMEO, which it inherited);
    then by k % 4:
    0, 3: shutdown(SHUT_WR): the server sees the end of the stream, says BYE and closes;
    1: ARM (the server sets the connection's SO_RCVTIMEO to 250, 300 or 350 ms), then WAIT
       and silence: the server's recv fails with EAGAIN after that SO_RCVTIMEO, it says
       TIMEOUT and closes;
    2: ARM, then 10 bytes of a 32-byte header and silence: the server's recv(32, MSG_WAITALL)
       returns those 10 bytes after its SO_RCVTIMEO, it says PARTIAL 10 and closes.
Then a last connection sends QUIT and waits for BYE (the server has joined its threads).

Every byte received is checked (SHA-256 against what the server must send); the timings the
client sees are put in classes as the server does. It prints one line per check, per connection
in order (`conn K: ...`), `timing ...` lines with the raw figures, `FAIL ...` for anything
wrong, and exits 1 if anything was. A server that does not answer within 15 s is a failure,
not a hang.
"""
import hashlib
import socket
import sys
import threading
import time

from blocking_server import (
    HEADER,
    L2_TIMEOUT_MS,
    conn_timeout_ms,
    file_bytes,
    timing_class,
)

PATIENCE = 15  # seconds without an answer before a connection gives up
FILE = file_bytes()
lines = {}
timings = []
failures = []


class Fail(Exception):
    pass


def sha(data):
    return hashlib.sha256(data).hexdigest()[:16]


def recv_exact(s, n, what):
    buf = bytearray()
    while len(buf) < n:
        try:
            part = s.recv(min(n - len(buf), 1 << 20))
        except socket.timeout:
            raise Fail(f"no answer within {PATIENCE} s while {what} ({len(buf)} of {n} bytes)")
        if not part:
            raise Fail(f"end of stream while {what} ({len(buf)} of {n} bytes)")
        buf += part
    return bytes(buf)


def reply(s, what):
    return recv_exact(s, HEADER, what).decode().rstrip()


def expect_eof(s, what):
    try:
        rest = s.recv(1)
    except socket.timeout:
        raise Fail(f"the server did not close within {PATIENCE} s after {what}")
    if rest:
        raise Fail(f"more data after {what}: {rest!r}")


def request(s, text):
    s.sendall(text.encode().ljust(HEADER))


def conn(host, port, k):
    out = lines.setdefault(k, [])
    s = socket.create_connection((host, port), timeout=PATIENCE)
    try:
        request(s, f"HELLO {k}")
        for off, n in ((k * 1001, 100_000), (k * 7919, 3_000_000)):
            request(s, f"GET {off} {n}")
            head = reply(s, f"waiting for GET {n}'s header")
            if head != f"DATA {n}":
                raise Fail(f"GET {n}: header {head!r}")
            got = recv_exact(s, n, f"receiving GET {n}")
            want = FILE[off:off + n]
            verdict = "as expected" if got == want else f"expected {sha(want)}"
            out.append(f"GET {n} at {off}: sha256 {sha(got)} {verdict}")
            if got != want:
                failures.append(f"conn {k}: GET {n} at {off}: wrong bytes")
        for n in (1 + 37 * k, 1_000_000 + k):
            payload = FILE[n % 1000:][:n] if n < len(FILE) else FILE
            request(s, f"ECHO {n}")
            s.sendall(payload)
            got = recv_exact(s, n, f"receiving ECHO {n}")
            verdict = "as expected" if got == payload else f"expected {sha(payload)}"
            out.append(f"ECHO {n}: sha256 {sha(got)} {verdict}")
            if got != payload:
                failures.append(f"conn {k}: ECHO {n}: wrong bytes")
        if k == 0:
            second_listener(s, host, port, out)
        role = k % 4
        tmo = conn_timeout_ms(k)
        if role in (0, 3):
            s.shutdown(socket.SHUT_WR)
            out.append(f"half-closed, the server says {reply(s, 'waiting for BYE')!r}")
            expect_eof(s, "BYE")
        else:
            # From before ARM: the server's silent recv begins after it said ARMED.
            t0 = time.monotonic()
            request(s, "ARM")
            if reply(s, "waiting for ARMED") != "ARMED":
                raise Fail("not ARMED")
            if role == 1:
                request(s, "WAIT")
            else:
                s.sendall(b"GET 0 100".ljust(10))
            said = reply(s, "silent, waiting for the server's timeout")
            ms = (time.monotonic() - t0) * 1000
            timings.append(f"timing conn {k} silent {ms:.1f} ms (SO_RCVTIMEO {tmo} ms)")
            out.append(f"silent: the server says {said!r} after {timing_class(ms, tmo)}")
            expect_eof(s, said)
        out.append("closed by the server")
    except Fail as e:
        failures.append(f"conn {k}: {e}")
    except OSError as e:  # a reset among them
        failures.append(f"conn {k}: {e!r}")
    finally:
        s.close()


def second_listener(s, host, port, out):
    request(s, "L2")
    if reply(s, "waiting for CONNECT (the second listener's idle accept)") != "CONNECT":
        raise Fail("no CONNECT")
    # From before the connect: the server's timer starts once it accepted, so the time seen
    # here is never shorter than its timeout (from after the connect, a client that lost its
    # CPU for a few ms in between would see it early).
    t0 = time.monotonic()
    a = socket.create_connection((host, port + 1), timeout=PATIENCE)
    try:
        expect_eof(a, "connecting to the second listener and staying silent")
    finally:
        a.close()
    ms = (time.monotonic() - t0) * 1000
    timings.append(f"timing l2 conn silent {ms:.1f} ms (SO_RCVTIMEO {L2_TIMEOUT_MS} ms)")
    out.append(f"second listener's connection closed by the server after "
               f"{timing_class(ms, L2_TIMEOUT_MS)}")
    if reply(s, "waiting for L2 DONE") != "L2 DONE":
        raise Fail("no L2 DONE")


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    threads = [threading.Thread(target=conn, args=(host, port, k)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(n):
        for line in lines.get(k, []):
            print(f"conn {k}: {line}")
    for t in timings:
        print(t)
    for f in failures:
        print(f"FAIL {f}", flush=True)
    try:
        q = socket.create_connection((host, port), timeout=60)
        try:
            request(q, "QUIT")
            said = reply(q, "waiting for the server's BYE to QUIT")
            print(f"quit: the server says {said!r}")
        finally:
            q.close()
    except (Fail, OSError) as e:
        print(f"FAIL quit: {e!r}")
        failures.append(f"quit: {e!r}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
