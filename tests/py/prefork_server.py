"""A pre-fork echo server: listen, fork N children, each a blocking accept loop with a thread
per connection (gunicorn's sync workers, Apache's prefork, uwsgi take this shape).

Run as `prefork_server.py PORT N`. Prints `ready` once the children run, and `served by PID`
when child PID serves its first connection. SIGTERM stops the children and the parent.
"""
import os
import signal
import socket
import sys
import threading


def echo(conn):
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)


def child(lsock):
    said = False
    while True:
        conn, _ = lsock.accept()
        if not said:
            os.write(1, f"served by {os.getpid()}\n".encode())
            said = True
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", port))
    lsock.listen(128)
    kids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            child(lsock)
            os._exit(0)
        kids.append(pid)

    def stop(*_):
        for k in kids:
            os.kill(k, signal.SIGTERM)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    for _ in kids:
        os.wait()


if __name__ == "__main__":
    main()
