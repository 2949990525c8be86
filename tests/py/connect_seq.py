"""connect() as a program sees it, one line per case, for the kernel and the shim to be compared.

`connect_seq.py SERVER OPEN_PORT CLOSED_PORT SILENT_ADDR SILENT_HOST`: SERVER listens on
OPEN_PORT and answers each connection's line with the same line (`connect_seq.py serve PORT`,
which prints `listening` once it does); nothing listens on CLOSED_PORT; nobody has SILENT_ADDR
(its ARP goes unanswered); SILENT_HOST answers ARP and nothing else (its host drops what it
would send from that address). Addresses and ports that differ between runs (the
local port, the server's address) are printed as what they are to the program: the family,
whether the port is ephemeral.
"""

import ctypes
import errno
import select
import signal
import socket
import struct
import sys
import time

if sys.argv[1] == "serve":
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", int(sys.argv[2])))
    ls.listen(16)
    print("listening", flush=True)
    while True:
        c, _ = ls.accept()
        line = c.recv(64)
        if line:
            c.sendall(line)
        c.close()

server, open_port, closed_port, silent, silent_host = (
    sys.argv[1],
    int(sys.argv[2]),
    int(sys.argv[3]),
    sys.argv[4],
    sys.argv[5],
)


def name(e):
    return errno.errorcode.get(e, str(e)) if e else "0"


def out(*a):
    print(*a, flush=True)


def ephemeral(port):
    return 32768 <= port < 61000


def peer(s):
    """getpeername as a program tests whether a connect completed: ok, or the errno."""
    try:
        s.getpeername()
        return "ok"
    except OSError as e:
        return name(e.errno)


# Blocking connect to a listener: 0, the names, data both ways.
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
out("blocking connect", name(s.connect_ex((server, open_port))))
host, port = s.getsockname()
out("getsockname family", s.family.name, "ephemeral", ephemeral(port))
out("getpeername", s.getpeername() == (server, open_port))
s.sendall(b"hello\n")
out("echo", s.recv(64))
out("connect again", name(s.connect_ex((server, open_port))))
# The stack runs now: its own fds are out of the application's way (the next socket gets the
# number the kernel would give it).
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
out("a new socket's fd", t.fileno())
t.close()
s.close()

# Options set before connect() hold on the connection: SO_RCVTIMEO ends a blocking recv that
# gets nothing (the server waits for a line first).
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, b"\x00" * 8 + (300000).to_bytes(8, "little"))
out("connect with SO_RCVTIMEO set before", name(s.connect_ex((server, open_port))))
t = time.monotonic()
try:
    s.recv(64)
    r = "data"
except OSError as e:
    r = name(e.errno)
out("recv with nothing sent", r, "after the timeout", 0.25 < time.monotonic() - t < 2)
s.close()

# connect() with AF_UNSPEC disconnects: the connection is reset, received data unread is
# dropped, ECONNRESET is pending (poll says so, the first read takes it), then reads are
# ENOTCONN; connect() again starts a new connection on the same socket.
def unconnect(s):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    unspec = (ctypes.c_ubyte * 16)()
    r = libc.connect(s.fileno(), unspec, 16)
    return name(ctypes.get_errno()) if r else "0"


s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.connect((server, open_port))
s.sendall(b"unspec\n")
p = select.poll()
p.register(s, select.POLLIN)
p.poll(5000)
out("connect(AF_UNSPEC) with the echo unread", unconnect(s))
p = select.poll()
p.register(s, select.POLLIN | select.POLLOUT | select.POLLRDHUP)
out("after it: poll", [e for _, e in p.poll(0)], "getpeername", peer(s))
a = s.getsockname()
out("after it: getsockname: wildcard", a[0] == "0.0.0.0", "ephemeral", ephemeral(a[1]))
for _ in range(2):
    try:
        r = s.recv(64)
    except OSError as e:
        r = name(e.errno)
    out("after it: recv", r)
out("after it: poll", [e for _, e in p.poll(0)], "SO_ERROR", name(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
out("connect again", name(s.connect_ex((server, open_port))), "getpeername", peer(s))
s.sendall(b"again\n")
out("echo", s.recv(64))
s.close()

# TCP_CORK set before connect() holds a partial segment back (Linux: up to 200 ms) until it
# is lifted: the echo does not come within 50 ms, then comes once uncorked.
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
out("connect with TCP_CORK set before", name(s.connect_ex((server, open_port))))
s.sendall(b"corked\n")
p = select.poll()
p.register(s, select.POLLIN)
out("corked: the echo within 50 ms", bool(p.poll(50)))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
out("uncorked: the echo", s.recv(64), "TCP_CORK", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK))
s.close()

# An AF_INET6 socket: a v4-mapped address connects as IPv4; with IPV6_V6ONLY the address is
# unreachable.
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
out("v4-mapped connect", name(s.connect_ex(("::ffff:" + server, open_port))))
s.close()
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
out("v4-mapped connect, IPV6_V6ONLY", name(s.connect_ex(("::ffff:" + server, open_port))))
s.close()

# The subnet's broadcast address (the tests' subnets are /24s): unreachable for TCP.
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
out("connect to the subnet's broadcast address", name(s.connect_ex((server.rsplit(".", 1)[0] + ".255", open_port))))
s.close()

# MSG_FASTOPEN: a connect and a send in one call. Blocking: the bytes are sent (after the
# handshake when there is no cookie), and the echo comes back; non-blocking: EINPROGRESS, the
# handshake started and nothing sent, as without a cookie.
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
n = s.sendto(b"tfo\n", socket.MSG_FASTOPEN, (server, open_port))
out("sendto MSG_FASTOPEN", n, s.recv(64))


def fast_open_again(s, what, address=True):
    """Another MSG_FASTOPEN send on `s`: Linux connects first, so a connected socket says
    EISCONN, one still connecting EALREADY, a failed one without an address EINVAL."""
    try:
        if address:
            s.sendto(b"again\n", socket.MSG_FASTOPEN, (server, open_port))
        else:
            s.send(b"again\n", socket.MSG_FASTOPEN)
        r = "sent"
    except OSError as e:
        r = name(e.errno)
    out("MSG_FASTOPEN " + what, r)


fast_open_again(s, "sendto on the connected socket")
fast_open_again(s, "send on the connected socket", address=False)
s.close()
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setblocking(False)
try:
    s.sendto(b"tfo\n", socket.MSG_FASTOPEN, (server, open_port))
    r = "sent"
except OSError as e:
    r = name(e.errno)
out("nonblocking sendto MSG_FASTOPEN", r)
p = select.poll()
p.register(s, select.POLLOUT)
p.poll(5000)
fast_open_again(s, "sendto once the handshake is done")
s.close()

# Refused. connect() told the error: the socket is unconnected (recv ENOTCONN, writable and
# hung up).
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
out("blocking connect to a closed port", name(s.connect_ex((server, closed_port))))
s.setblocking(False)
try:
    s.recv(16)
    r = "data"
except OSError as e:
    r = name(e.errno)
p = select.poll()
p.register(s, select.POLLIN | select.POLLOUT | select.POLLRDHUP)
out("after the refusal: recv", r, "poll", [e for _, e in p.poll(0)])
fast_open_again(s, "send after the refusal", address=False)
s.close()

def nonblocking(port, what):
    """A non-blocking connect to `port`: its answer, what poll says, SO_ERROR."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    out("nonblocking connect" + what, name(s.connect_ex((server, port))))
    p = select.poll()
    p.register(s, select.POLLOUT)
    ev = p.poll(5000)
    out("poll", [(e & (select.POLLOUT | select.POLLERR | select.POLLHUP)) for _, e in ev])
    out("SO_ERROR", name(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
    return s


# Non-blocking: EINPROGRESS, POLLOUT, SO_ERROR 0, then connect() again (0 once, then EISCONN).
s = nonblocking(open_port, "")
out("connect again", name(s.connect_ex((server, open_port))))
out("connect again", name(s.connect_ex((server, open_port))))
s.close()

# Non-blocking to a closed port: the error once, by SO_ERROR; connect() then finds the
# connection failed with its error taken (ECONNABORTED), and the next one starts anew.
s = nonblocking(closed_port, " to a closed port")
out("SO_ERROR again", name(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
out("getpeername after the refusal", peer(s))
a = s.getsockname()
out("getsockname after the refusal: wildcard", a[0] == "0.0.0.0", "ephemeral", ephemeral(a[1]))
out("connect again", name(s.connect_ex((server, closed_port))))
out("connect again", name(s.connect_ex((server, closed_port))))
s.close()

# Blocking with SO_SNDTIMEO to nobody: EINPROGRESS after the timeout; then EALREADY.
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, b"\x00" * 8 + (300000).to_bytes(8, "little"))
t = time.monotonic()
r = s.connect_ex((silent, open_port))
took = time.monotonic() - t
out("blocking connect to nobody, SO_SNDTIMEO 300 ms", name(r), "after the timeout", 0.25 < took < 2)
out("getpeername while connecting", peer(s))
out("connect again", name(s.connect_ex((silent, open_port))))
fast_open_again(s, "sendto while connecting")
s.close()

# Added to an epoll set before connect() (as nginx adds an upstream socket), edge-triggered:
# the connection's events come through that entry (writable, then the echo and the end).
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setblocking(False)
ep = select.epoll()
ep.register(s.fileno(), select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET)
out("added to epoll before connect: connect", name(s.connect_ex((server, open_port))))
ev = ep.poll(5)
out("epoll", [e & (select.EPOLLIN | select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP) for _, e in ev])
s.send(b"epoll\n")
got = b""
while ep.poll(5):
    try:
        chunk = s.recv(64)
    except BlockingIOError:
        continue
    if not chunk:
        break
    got += chunk
out("echo through epoll", got)
ep.close()
s.close()

# Non-blocking to nobody (its ARP goes unanswered): EHOSTUNREACH once the neighbour is given up
# (Linux: 3 ARP requests a second apart).
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setblocking(False)
t = time.monotonic()
out("nonblocking connect to nobody", name(s.connect_ex((silent, open_port))))
p = select.poll()
p.register(s, select.POLLOUT)
ev = p.poll(20000)
took = time.monotonic() - t
# (POLLERR only: Linux reports the unreachable host as a hard error that closes the socket,
# POLLOUT|POLLERR|POLLHUP, or, when the error finds the socket busy in a system call, as a
# soft one that leaves it connecting, POLLERR alone.)
out("poll", [(e & select.POLLERR) for _, e in ev])
out("SO_ERROR", name(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)), "within 6 s", took < 6)
s.close()

# A host that never answers, with TCP_SYNCNT 1: ETIMEDOUT after the SYN and one retransmission
# (1 s, then 2 s more).
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, 1)
t = time.monotonic()
r = s.connect_ex((silent_host, open_port))
took = time.monotonic() - t
out("blocking connect to a silent host, TCP_SYNCNT 1", name(r), "after 3 s", 2.5 < took < 5)
s.close()

# A signal handler runs during a blocking connect(). libc's connect() is called directly
# (Python's socket.connect retries EINTR itself). Without SA_RESTART: EINTR, the handshake goes
# on (SO_ERROR 0), a second blocking connect() waits for it (ETIMEDOUT at 3 s, as if never
# interrupted), and a third starts a new one. With SA_RESTART (and no other handler without
# it: SIGINT's is set to the default): the call goes on as if no signal came.
libc = ctypes.CDLL(None, use_errno=True)


def raw_connect(s, addr):
    ip, port = addr
    sin = struct.pack("<HH4s8x", socket.AF_INET, socket.htons(port), socket.inet_aton(ip))
    buf = ctypes.create_string_buffer(sin, len(sin))
    r = libc.connect(s.fileno(), buf, len(sin))
    return ctypes.get_errno() if r < 0 else 0


alarms = []
signal.signal(signal.SIGALRM, lambda *_: alarms.append(1))
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, 1)
t = time.monotonic()
signal.setitimer(signal.ITIMER_REAL, 0.5)
r = raw_connect(s, (silent_host, open_port))
out("blocking connect, SIGALRM at 0.5 s", name(r), "at once", time.monotonic() - t < 1.5)
out("SO_ERROR", name(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
r = raw_connect(s, (silent_host, open_port))
took = time.monotonic() - t
out("blocking connect again", name(r), "at 3 s", 2.5 < took < 5)
s.setblocking(False)
out("connect after it failed", name(raw_connect(s, (silent_host, open_port))))
s.close()
signal.siginterrupt(signal.SIGALRM, False)
signal.signal(signal.SIGINT, signal.SIG_DFL)
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, 1)
t = time.monotonic()
signal.setitimer(signal.ITIMER_REAL, 0.5)
r = raw_connect(s, (silent_host, open_port))
took = time.monotonic() - t
out("blocking connect, SIGALRM with SA_RESTART", name(r), "at 3 s", 2.5 < took < 5, "alarms", len(alarms))
s.close()

# A port bound before connect() is the connection's.
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
# (SO_REUSEADDR: the other run's connection from this port may be in TIME-WAIT.)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 40321))
out("bound connect", name(s.connect_ex((server, open_port))))
out("local port", s.getsockname()[1])
# Disconnected with AF_UNSPEC (after its echo: the server has let it go), it connects again
# from the same port to the same peer.
s.sendall(b"first\n")
out("echo", s.recv(64))
out("connect(AF_UNSPEC) on the bound connection", unconnect(s))
out("connect again from the bound port", name(s.connect_ex((server, open_port))), "local port", s.getsockname()[1])
s.sendall(b"bound\n")
out("echo", s.recv(64))
s.close()

# Refused, then connected again to a destination the kernel serves (a listener on loopback),
# non-blocking, in an epoll set all along: the entry follows the socket to its new connection
# (writable, then the data the listener sends).
lo = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
lo.bind(("127.0.0.1", 0))
lo.listen(1)
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setblocking(False)
ep = select.epoll()
ep.register(s.fileno(), select.EPOLLIN | select.EPOLLOUT)
mask = select.EPOLLIN | select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP
out("in epoll, to a closed port", name(s.connect_ex((server, closed_port))))
out("epoll", [(fd == s.fileno(), e & mask) for fd, e in ep.poll(5)])
out("SO_ERROR", name(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
out("connect to loopback", name(s.connect_ex(lo.getsockname())))
out("connect to loopback again", name(s.connect_ex(lo.getsockname())))
ev = ep.poll(5)
out("epoll", [(fd == s.fileno(), e & mask) for fd, e in ev])
c, _ = lo.accept()
c.sendall(b"lo\n")
deadline = time.monotonic() + 5
got = []
while time.monotonic() < deadline and not got:
    got = [(fd == s.fileno(), e & mask) for fd, e in ep.poll(1) if e & select.EPOLLIN]
out("epoll with the listener's data", got, s.recv(64))
c.close()
lo.close()
ep.close()
s.close()
out("done")
