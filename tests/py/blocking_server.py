"""A classic blocking server, one thread per connection: no selectors, no non-blocking sockets,
no Python timeouts (socket.settimeout makes a socket non-blocking). Deadlines are SO_RCVTIMEO,
set as a packed timeval, as a C server sets them.

Run as `blocking_server.py PORT`: it listens on PORT (the main listener) and PORT+1 (the second
listener). The client is `blocking_client.py`, whose docstring describes the protocol. Every
request is a 32-byte header read with recv(32, MSG_WAITALL):

    HELLO k       first request of a connection (read by the accepting thread)
    GET off n     n bytes of the deterministic file from offset off, by os.sendfile
    ECHO n        then n bytes, read with recv(n, MSG_WAITALL) and sent back with sendall
    ARM           set the connection's SO_RCVTIMEO to its short value (250, 300 or 350 ms;
                  until then it is 5 s, set once accepted), say ARMED: the
                  client knows when the server's next recv began
    WAIT          (armed) the client stays silent: the server's recv fails with EAGAIN after
                  the short SO_RCVTIMEO
    L2            on the second listener: an idle accept (EAGAIN after its SO_RCVTIMEO), then an
                  accepted connection that inherited that timeout and stays silent
    QUIT          (a connection of its own) join every thread, an idle accept on the main
                  listener, count the sockets still open, exit

The server prints one line per event on stdout, deterministic for a given client (`conn K: ...`
per connection, in that connection's order; timings as classes, "about 300 ms", or "N ms, not
about 300 ms"), and `timing ...` lines with the raw figures (not compared), then `done`.
"""
import errno
import os
import socket
import struct
import sys
import threading
import time

HEADER = 32
FILE_SIZE = 4_000_000
# SO_RCVTIMEO of a connection between requests (set once accepted), of the second listener
# (its connection inherits it), of the main listener's idle check at the end (it has none while
# it serves).
SERVE_TIMEOUT_MS = 5000
L2_TIMEOUT_MS = 250
IDLE_ACCEPT_MS = 300
# A timeout may end this much before its value (Linux rounds up to the tick; our clock is read
# around the call) or this much after it (a shared, loaded machine).
EARLY_MS, LATE_MS = 2, 150

out_lock = threading.Lock()


def say(line):
    with out_lock:
        print(line, flush=True)


def conn_timeout_ms(k):
    """SO_RCVTIMEO of connection k: 250, 300 or 350 ms (a shim that used one value for all, or
    none, shows)."""
    return 250 + 50 * (k % 3)


def file_bytes():
    """The deterministic file: SHA-256 of b"block %d" for block 0, 1, ... (the client computes
    the same)."""
    import hashlib

    blocks = (hashlib.sha256(b"block %d" % i).digest() for i in range(FILE_SIZE // 32 + 1))
    return b"".join(blocks)[:FILE_SIZE]


def timeval(ms):
    return struct.pack("ll", ms // 1000, (ms % 1000) * 1000)


def set_rcvtimeo(s, ms):
    """setsockopt(SO_RCVTIMEO): "" or what failed (an event, not an exception: the run goes on
    and shows what else differs)."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(ms))
        return ""
    except OSError as e:
        return f" (setsockopt failed: {errno.errorcode.get(e.errno, e.errno)})"


def rcvtimeo(s):
    """getsockopt(SO_RCVTIMEO): "N ms" or what failed."""
    try:
        raw = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)
    except OSError as e:
        return f"getsockopt failed: {errno.errorcode.get(e.errno, e.errno)}"
    sec, usec = struct.unpack("ll", raw)
    return f"{sec * 1000 + usec // 1000} ms"


def timing_class(ms, want):
    if want - EARLY_MS <= ms <= want + LATE_MS:
        return f"about {want} ms"
    return f"{ms:.0f} ms, not about {want} ms"


def header(s):
    """One 32-byte request header by recv(32, MSG_WAITALL): (words, elapsed ms), or (None,
    elapsed) at the end of the stream, or (bytes, elapsed) if fewer than 32 bytes came before
    the timeout; EAGAIN raises BlockingIOError."""
    t0 = time.monotonic()
    data = s.recv(HEADER, socket.MSG_WAITALL)
    ms = (time.monotonic() - t0) * 1000
    if not data:
        return None, ms
    if len(data) < HEADER:
        return data, ms
    return data.decode().split(), ms


def recv_timeout(s, what, want_ms, tag):
    """A recv that must fail with EAGAIN after about want_ms: the event line."""
    t0 = time.monotonic()
    try:
        got = s.recv(HEADER, socket.MSG_WAITALL)
        ms = (time.monotonic() - t0) * 1000
        return f"{what}: recv returned {len(got)} bytes after {ms:.0f} ms, not EAGAIN"
    except BlockingIOError:
        ms = (time.monotonic() - t0) * 1000
        say(f"timing {tag} recv {ms:.1f} ms (SO_RCVTIMEO {want_ms} ms)")
        return f"{what}: EAGAIN after {timing_class(ms, want_ms)}"


def accept_timeout(lsock, what, want_ms, tag):
    """A blocking accept on an idle listener that must fail with EAGAIN after about want_ms."""
    t0 = time.monotonic()
    try:
        c, _ = lsock.accept()
        c.close()
        return f"{what}: accept returned a connection, not EAGAIN"
    except BlockingIOError:
        ms = (time.monotonic() - t0) * 1000
        say(f"timing {tag} accept {ms:.1f} ms (SO_RCVTIMEO {want_ms} ms)")
        return f"{what}: EAGAIN after {timing_class(ms, want_ms)}"


class Server:
    def __init__(self, port, file_fd):
        self.port = port
        self.file_fd = file_fd
        self.threads = []

    def listen(self):
        self.l1 = socket.socket()
        self.l1.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.l1.bind(("0.0.0.0", self.port))
        self.l1.listen(64)
        self.l2 = socket.socket()
        self.l2.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        failed = set_rcvtimeo(self.l2, L2_TIMEOUT_MS)  # before listen(): it must stay
        self.l2.bind(("0.0.0.0", self.port + 1))
        self.l2.listen(4)
        say(f"listeners: SO_RCVTIMEO {rcvtimeo(self.l1)} and {rcvtimeo(self.l2)}{failed}")
        self.sockets_at_start = open_sockets()

    def serve(self):
        """The accept loop: the first request of each connection is read here, then a thread
        serves it; QUIT ends the loop."""
        while True:
            try:
                c, _ = self.l1.accept()
            except BlockingIOError:
                say("accept: EAGAIN from a listener without SO_RCVTIMEO")
                continue
            inherited = rcvtimeo(c)
            failed = set_rcvtimeo(c, SERVE_TIMEOUT_MS)
            try:
                words, _ = header(c)
            except OSError as e:
                say(f"accept: first request failed: {e!r}")
                c.close()
                continue
            if words == ["QUIT"]:
                return c
            if not isinstance(words, list) or len(words) != 2 or words[0] != "HELLO":
                say(f"accept: unexpected first request {words!r}")
                c.close()
                continue
            k = int(words[1])
            say(f"conn {k}: accepted, SO_RCVTIMEO inherited from the listener: {inherited},"
                f" set to {SERVE_TIMEOUT_MS} ms{failed}")
            t = threading.Thread(target=self.conn, args=(k, c), daemon=True)
            t.k = k
            self.threads.append(t)
            t.start()

    def conn(self, k, c):
        ev = lambda line: say(f"conn {k}: {line}")  # noqa: E731
        try:
            self.requests(k, c, ev)
        except OSError as e:
            ev(f"error {e!r}")
        finally:
            c.close()
            ev("closed")

    def requests(self, k, c, ev):
        # Between requests 5 s (a client busy checking 3 MB on a loaded machine is not a silent
        # one); ARM sets the short one.
        tmo = SERVE_TIMEOUT_MS
        n_requests = 0
        while True:
            try:
                words, ms = header(c)
            except BlockingIOError:
                ev("unexpected EAGAIN between requests")
                return
            if words is None:
                ev(f"end of stream after {n_requests} requests")
                c.sendall(f"BYE {n_requests}".encode().ljust(HEADER))
                return
            if isinstance(words, bytes):
                ev(f"recv(32, MSG_WAITALL) returned {len(words)} bytes after "
                   f"{timing_class(ms, tmo)}")
                say(f"timing conn {k} partial {ms:.1f} ms (SO_RCVTIMEO {tmo} ms)")
                c.sendall(f"PARTIAL {len(words)}".encode().ljust(HEADER))
                return
            n_requests += 1
            cmd = words[0]
            if cmd == "GET":
                off, n = int(words[1]), int(words[2])
                c.sendall(f"DATA {n}".encode().ljust(HEADER))
                sent, calls = 0, 0
                while sent < n:
                    r = os.sendfile(c.fileno(), self.file_fd, off + sent, n - sent)
                    calls += 1
                    if r == 0:
                        break
                    sent += r
                ev(f"GET {n}: sendfile sent {sent} in {calls} call(s)")
            elif cmd == "ECHO":
                n = int(words[1])
                data, calls = b"", 0
                while len(data) < n:
                    part = c.recv(n - len(data), socket.MSG_WAITALL)
                    calls += 1
                    if not part:
                        break
                    data += part
                c.sendall(data)
                ev(f"ECHO {n}: recv(MSG_WAITALL) got {len(data)} in {calls} call(s), "
                   "sent back")
            elif cmd == "ARM":
                tmo = conn_timeout_ms(k)
                failed = set_rcvtimeo(c, tmo)
                ev(f"SO_RCVTIMEO {tmo} ms{failed} reads back {rcvtimeo(c)}")
                c.sendall(b"ARMED".ljust(HEADER))
            elif cmd == "WAIT":
                ev(recv_timeout(c, "silent client", tmo, f"conn {k}"))
                c.sendall(b"TIMEOUT".ljust(HEADER))
                return
            elif cmd == "L2":
                self.second_listener(k, c, ev)
            else:
                ev(f"unknown request {words!r}")
                return

    def second_listener(self, k, c, ev):
        """An idle accept on the second listener, then one accepted connection: it inherited the
        listener's SO_RCVTIMEO, which ends its silent recv."""
        ev(accept_timeout(self.l2, "idle second listener", L2_TIMEOUT_MS, "l2"))
        c.sendall(b"CONNECT".ljust(HEADER))
        for _ in range(20):  # the client connects at once; a loaded machine may take longer
            try:
                a, _ = self.l2.accept()
                break
            except BlockingIOError:
                pass
        else:
            ev("second listener: no connection within 20 timeouts")
            return
        try:
            ev(f"second listener's connection: SO_RCVTIMEO inherited {rcvtimeo(a)}")
            ev(recv_timeout(a, "second listener's silent connection", L2_TIMEOUT_MS,
                            "l2 conn"))
        finally:
            a.close()
        c.sendall(b"L2 DONE".ljust(HEADER))

    def finish(self, q):
        """QUIT: every connection's thread ends, the main listener's idle accept times out, no
        socket of the connections is left open."""
        stuck = []
        deadline = time.monotonic() + 20  # for all of them: a hung server fails in time
        for t in self.threads:
            t.join(max(0, deadline - time.monotonic()))
            if t.is_alive():
                stuck.append(t.k)
        say(f"quit: {len(self.threads)} connections served, threads still running: {stuck}")
        failed = set_rcvtimeo(self.l1, IDLE_ACCEPT_MS)
        if failed:
            say(f"idle main listener: SO_RCVTIMEO {IDLE_ACCEPT_MS} ms{failed}")
        # In a thread of its own: an accept that never times out must not hang the server.
        result = []
        t = threading.Thread(target=lambda: result.append(
            accept_timeout(self.l1, "idle main listener", IDLE_ACCEPT_MS, "l1")), daemon=True)
        t.start()
        t.join(IDLE_ACCEPT_MS / 1000 + 10)
        say(result[0] if result else "idle main listener: accept still blocked after 10 s")
        q.sendall(b"BYE".ljust(HEADER))
        try:
            words, _ = header(q)
            say(f"quit: the client closed: {words is None}")
        except BlockingIOError:
            say("quit: the client did not close")
        q.close()
        left = open_sockets() - self.sockets_at_start
        say(f"fds: {len(left)} sockets open beyond those of the start")
        self.l1.close()
        self.l2.close()
        say("done")
        sys.stdout.flush()
        os._exit(0 if not stuck and result else 1)


def device_socket_inodes():
    """Inodes of the packet and unix sockets in this namespace (/proc/net/packet, /proc/net/unix):
    under the shim, its device's sockets (af_packet's rings, memif's control channel), which it
    opens when a listener is first served. This server has no unix socket of its own."""
    inodes = set()
    for table, column in (("packet", -1), ("unix", 6)):
        try:
            with open(f"/proc/self/net/{table}") as f:
                for line in f.readlines()[1:]:
                    cols = line.split()
                    if len(cols) > abs(column):
                        inodes.add(cols[column])
        except OSError:
            pass
    return inodes


def open_sockets():
    """The fds of this process that are sockets, but the device's (under the shim a stack
    connection's fd is its identity socket)."""
    packet = device_socket_inodes()
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:") and link[len("socket:["):-1] not in packet:
            fds.add(int(fd))
    return fds


def main():
    port = int(sys.argv[1])
    # The file sendfile reads (at explicit offsets, so the threads share its fd), removed at once.
    path = f"/tmp/blocking-server-{os.getpid()}.dat"
    with open(path, "wb") as f:
        f.write(file_bytes())
    file_fd = os.open(path, os.O_RDONLY)
    os.unlink(path)
    server = Server(port, file_fd)
    server.listen()
    say("ready")
    q = server.serve()
    server.finish(q)


if __name__ == "__main__":
    main()
