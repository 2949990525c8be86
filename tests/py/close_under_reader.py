"""A server that closes a connection while another of its threads is blocked reading it, then
accepts the next connection (which may get the same fd number): `close_under_reader.py PORT`.
The reader must not take the next connection's data. For the first client connection a thread
blocks in recv(); once it sleeps, the main thread closes the fd (os.close, as a C server
would), accepts the second connection, reads its line and answers `main read LINE`. After the
first client closes its end, it answers `reader ended RESULT` on the second connection (the
reader's recv on a socket closed under it: end of stream on Linux, where the socket lives on
until the call returns; EBADF under the shim, which closes it at once). Prints `ready` once it
listens."""
import errno
import os
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
first, _ = listener.accept()
result = []
tid = []


def reader():
    tid.append(threading.get_native_id())
    try:
        data = first.recv(100)
        result.append("eof" if data == b"" else f"data {data!r}")
    except OSError as e:
        result.append(errno.errorcode.get(e.errno, str(e.errno)))


thread = threading.Thread(target=reader)
thread.start()
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    if tid:
        with open(f"/proc/self/task/{tid[0]}/stat") as f:
            if f.read().rsplit(") ", 1)[1].startswith("S"):
                break
    time.sleep(0.001)
number = first.fileno()
os.close(number)
first.detach()
second, _ = listener.accept()
print(f"first fd {number}, second fd {second.fileno()}", flush=True)
line = second.makefile("rb").readline().decode().strip()
second.sendall(f"main read {line}\n".encode())
thread.join(20)
second.sendall(f"reader ended {result[0] if result else 'never'}\n".encode())
second.close()
