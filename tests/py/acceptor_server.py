"""A server whose acceptor thread is stopped by shutdown() of its listener, as servers that
stop accepting without closing do: `acceptor_server.py PORT`. A control connection on
0.0.0.0:PORT; the served listener on MTCP_ADDR:PORT+1 (the stack's alone under the shim),
where a thread blocks in accept() and greets each client with `hello`. Control lines:
`shut` -> shutdown(SHUT_RD) of the served listener, then `acceptor ended ERRNO, accepting
N` once the acceptor thread has returned (or `acceptor still blocked` after 10 s; N: its
SO_ACCEPTCONN); `listen` -> listen() on it again, a new acceptor, `listening, accepting N`. Prints `ready` once it listens."""
import errno
import os
import socket
import sys
import threading

port = int(sys.argv[1])
addr = os.environ["MTCP_ADDR"].split("/")[0]
control = socket.socket()
control.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
control.bind(("0.0.0.0", port))
control.listen(1)
served = socket.socket()
served.bind((addr, port + 1))
served.listen(8)
ended = []


def acceptor():
    while True:
        try:
            c, _ = served.accept()
        except OSError as e:
            ended.append(errno.errorcode.get(e.errno, str(e.errno)))
            return
        c.sendall(b"hello\n")
        c.close()


thread = threading.Thread(target=acceptor)
thread.start()
print("ready", flush=True)
conn, _ = control.accept()
for line in conn.makefile("rb"):
    cmd = line.decode().strip()
    if cmd == "shut":
        served.shutdown(socket.SHUT_RD)
        thread.join(10)
        answer = f"acceptor ended {ended[-1]}" if not thread.is_alive() else "acceptor still blocked"
        answer += f", accepting {served.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)}"
    elif cmd == "listen":
        served.listen(8)
        thread = threading.Thread(target=acceptor)
        thread.start()
        answer = f"listening, accepting {served.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)}"
    else:
        answer = f"unknown {cmd}"
    conn.sendall(f"{answer}\n".encode())
print("done", flush=True)
