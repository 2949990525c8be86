"""A pre-fork echo server one of whose children stops listening without ever accepting (an old
worker on `nginx -s reload`): the connections waiting for it must be served by the other.

Run as `handover_server.py PORT [idle]`. Listens, then forks two children: the keeper accepts
in a loop and echoes each connection's line; the quitter never accepts: it waits with the
listener in an epoll set (under the shim its stack runs, takes its share of the connections
and holds them), and on SIGUSR1 closes its listener and prints `closed`. With `idle`, the
quitter looks at the listener once and then neither watches it nor closes it (an nginx worker
that does not get the accept mutex: its listener is out of its epoll set). Prints
`quitter PID` and `keeper PID`, then `ready`. SIGTERM stops the children and the parent.
"""
import os
import select
import signal
import socket
import sys
import threading


def echo(conn):
    with conn:
        data = b""
        while not data.endswith(b"\n"):
            more = conn.recv(4096)
            if not more:
                return
            data += more
        conn.sendall(data)


def keeper(lsock):
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


def quitter(lsock):
    asked = []
    signal.signal(signal.SIGUSR1, lambda *_: asked.append(1))
    # A wait on the listener starts this process's stack; it never accepts.
    waiter = select.poll()
    waiter.register(lsock, select.POLLIN)
    waiter.poll(0)
    if IDLE:
        while True:
            signal.pause()
    watch = select.epoll()
    watch.register(lsock, select.EPOLLIN)
    while not asked:
        signal.pause()
    lsock.close()
    os.write(1, b"closed\n")
    while True:
        signal.pause()


IDLE = len(sys.argv) > 2 and sys.argv[2] == "idle"


def main():
    port = int(sys.argv[1])
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", port))
    lsock.listen(128)
    kids = {}
    for role in (keeper, quitter):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            role(lsock)
            os._exit(0)
        kids[role.__name__] = pid

    def stop(*_):
        for k in kids.values():
            os.kill(k, signal.SIGTERM)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    for name, pid in kids.items():
        print(f"{name} {pid}", flush=True)
    print("ready", flush=True)
    for _ in kids:
        os.wait()


if __name__ == "__main__":
    main()
