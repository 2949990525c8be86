"""A server that runs a child process for every request, as servers that shell out do:
`spawn_server.py PORT`. It accepts one connection; for each line it reads it runs /bin/true
with subprocess.run (CPython starts it with vfork, and the child closes every fd from 3 up
with close_range before exec) and answers `ok N RC`. Prints `ready` once it listens."""
import socket
import subprocess
import sys

port = int(sys.argv[1])
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", port))
listener.listen(8)
print("ready", flush=True)
conn, _ = listener.accept()
n = 0
for line in conn.makefile("rb"):
    rc = subprocess.run(["/bin/true"]).returncode
    n += 1
    conn.sendall(f"ok {n} {rc}\n".encode())
conn.close()
print(f"served {n}", flush=True)
