"""A pre-fork echo server: listen, fork N children, each a blocking accept loop with a thread
per connection (gunicorn's sync workers, Apache's prefork, uwsgi take this shape).

Run as `prefork_server.py PORT N [select]`. Prints `ready` once the children run, and
`served by PID` when child PID serves its first connection. With `select`, each child waits in
select() on the listener (no timeout) and then accepts, as gunicorn's sync workers do. SIGTERM
stops the children and the parent.
"""
import os
import select
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


def child(lsock, wait_in_select):
    said = False
    if wait_in_select:
        lsock.setblocking(False)
    while True:
        if wait_in_select:
            select.select([lsock], [], [])
            try:
                conn, _ = lsock.accept()
            except BlockingIOError:
                continue  # another child took it
            conn.setblocking(True)
        else:
            conn, _ = lsock.accept()
        if not said:
            os.write(1, f"served by {os.getpid()}\n".encode())
            said = True
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    wait_in_select = len(sys.argv) > 3 and sys.argv[3] == "select"
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", port))
    lsock.listen(128)
    kids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            child(lsock, wait_in_select)
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
