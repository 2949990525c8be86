"""A listener on `::` for the shim's IPv6 tests.

`v6_listener.py dual PORT`: IPV6_V6ONLY off (Linux's default, said on the first line), bound to
`::`; prints `listening`, then answers each connection with one line of what its calls say (the
address accept gave, getpeername, getsockname, the socket's family, SO_DOMAIN) and closes it.

`v6_listener.py v6only PORT`: IPV6_V6ONLY on, twice (a server retrying): bind to `::` and listen,
printing `listening` or `errno N` each time.
"""

import socket
import sys

mode, port = sys.argv[1], int(sys.argv[2])

if mode == "v6only":
    for _ in range(2):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(("::", port))
        try:
            s.listen()
            print("listening", flush=True)
        except OSError as e:
            print("errno", e.errno, flush=True)
        s.close()
    sys.exit(0)

s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
print("v6only", s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY), flush=True)
s.bind(("::", port))
s.listen()
print("listening", flush=True)
while True:
    c, peer = s.accept()
    name = c.getsockname()
    line = (
        f"accept={peer[0]} flowinfo={peer[2]} scope_id={peer[3]} "
        f"peername={c.getpeername()[0]} sockname={name[0]}:{name[1]} "
        f"family={c.family.name} domain={c.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)}\n"
    )
    c.sendall(line.encode())
    c.close()
