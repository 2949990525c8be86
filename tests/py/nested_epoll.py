"""An epoll set inside another epoll set (glib and some libuv users nest theirs): the outer set
must report the inner one when a connection in it has data, and stop once it is drained.

Server: `nested_epoll.py PORT`; client: `nested_epoll.py client HOST PORT`. The server prints
`ok NAME` or `FAIL NAME ...` per check, then `done`."""
import select
import socket
import sys
import time


def client(host, port):
    s = socket.create_connection((host, int(port)), timeout=10)
    s.recv(16)  # "go": the server's sets are ready
    time.sleep(0.05)
    s.sendall(b"ping")
    print(s.recv(64).decode(), flush=True)
    s.close()


def server(port):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(4)
    print("ready", flush=True)
    conn, _ = ls.accept()
    inner = select.epoll()
    inner.register(conn.fileno(), select.EPOLLIN)
    outer = select.epoll()
    outer.register(inner.fileno(), select.EPOLLIN)
    checks = []
    quiet = outer.poll(0.05)
    checks.append(("quiet", quiet == [], quiet))
    conn.sendall(b"go")
    t0 = time.monotonic()
    got = outer.poll(5)
    took = time.monotonic() - t0
    checks.append(("outer", got == [(inner.fileno(), select.EPOLLIN)] and took < 1, (got, took)))
    evs = inner.poll(0)
    checks.append(("inner", evs == [(conn.fileno(), select.EPOLLIN)], evs))
    data = conn.recv(64)
    checks.append(("data", data == b"ping", data))
    drained = outer.poll(0.1)
    checks.append(("drained", drained == [], drained))
    conn.sendall(b"ok nested")
    for name, ok, what in checks:
        print(f"ok {name}" if ok else f"FAIL {name} {what!r}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "client":
        client(sys.argv[2], sys.argv[3])
    else:
        server(int(sys.argv[1]))
