"""A thread-per-connection server whose threads may be busy in the application, away from any
socket call: `busy_server.py PORT`. Lines on a connection: `busy MS` -> the thread works MS
milliseconds (a sleep, away from the sockets), then answers `done`; `echo TEXT` -> `TEXT` at
once. Prints `ready` once it listens."""
import socket
import sys
import threading
import time

port = int(sys.argv[1])
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", port))
listener.listen(8)
print("ready", flush=True)


def serve(conn):
    for line in conn.makefile("rb"):
        cmd, _, arg = line.decode().strip().partition(" ")
        if cmd == "busy":
            time.sleep(int(arg) / 1000)
            conn.sendall(b"done\n")
        elif cmd == "echo":
            conn.sendall(f"{arg}\n".encode())
    conn.close()


while True:
    c, _ = listener.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
