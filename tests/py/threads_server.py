"""A threaded server under the shim: wake-ups that come from another thread.

Run as `threads_server.py PORT`; the client is `threads_server.py client HOST PORT`. The server
prints one line per check, `ok NAME ...` or `FAIL NAME ...`, then `done`.

1. ctl: thread W blocks in epoll_wait on a set of ours; the main thread accepts a connection
   whose data is already there and adds it to W's set. Linux wakes W at once (ep_insert);
   W must see the new fd within 200 ms, not at its next timer or its 10 s timeout.
2. shutdown: W blocks in epoll_wait on a connection; the main thread calls shutdown(SHUT_RD).
   Linux wakes W with EPOLLIN|EPOLLRDHUP.
3. poll: the same as 2 with W blocked in poll() instead of epoll_wait.
"""
import os
import select
import socket
import sys
import threading
import time

# Blocking system calls a waiter sits in: poll, epoll_wait, ppoll, epoll_pwait, epoll_pwait2.
BLOCKING = {"7", "232", "271", "281", "441"}


def blocked(tid):
    """Whether thread `tid` of this process sleeps in one of the BLOCKING system calls."""
    try:
        with open(f"/proc/self/task/{tid}/syscall") as f:
            nr = f.read().split()[0]
        with open(f"/proc/self/task/{tid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return nr in BLOCKING and state == "S"


def switches(tid):
    try:
        with open(f"/proc/self/task/{tid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def settled(tid):
    """Waits until thread `tid` has stayed blocked, not woken once, for 50 ms: it is in a long
    wait (not one that ends at a stack timer due now). False if that never happens in 10 s."""
    deadline = time.monotonic() + 10
    last, quiet = None, 0
    while time.monotonic() < deadline:
        now = switches(tid) if blocked(tid) else None
        quiet = quiet + 1 if now is not None and now == last else 0
        if quiet >= 5:
            return True
        last = now
        time.sleep(0.01)
    return False


class Waiter(threading.Thread):
    """Blocks in `wait()` (up to 10 s) once started; `result` is (when it returned, what)."""

    def __init__(self, wait):
        super().__init__(daemon=True)
        self.wait, self.tid, self.result = wait, None, None

    def run(self):
        self.tid = threading.get_native_id()
        got = self.wait()
        self.result = (time.monotonic(), got)

    def start_blocked(self):
        self.start()
        deadline = time.monotonic() + 10
        while self.tid is None or not blocked(self.tid):
            if self.result is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True


def check(name, waiter, acted, want):
    """The waiter must have returned `want`ed events within 200 ms of the other thread's act
    at `acted` (Linux: at once; a waiter that sleeps to its timeout or a timer takes longer)."""
    waiter.join(12)
    if waiter.result is None:
        print(f"FAIL {name}: the waiter never returned", flush=True)
        return
    end, got = waiter.result
    secs = end - acted
    print(f"{name}: woke {secs:.3f} s after the other thread acted", flush=True)
    if secs < 0.2 and want(got):
        print(f"ok {name}", flush=True)
    else:
        print(f"FAIL {name}: woke after {secs:.3f} s with {got!r}", flush=True)


def server(port):
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", port))
    lsock.listen(16)
    print("ready", flush=True)
    ctl, _ = lsock.accept()

    # 1. EPOLL_CTL_ADD of a ready fd from another thread.
    ep = select.epoll()
    ep.register(ctl.fileno(), select.EPOLLIN)
    w = Waiter(lambda: ep.poll(10))
    if not w.start_blocked():
        print("FAIL ctl: the waiter did not block", flush=True)
    ctl.sendall(b"1")  # the client connects and sends "x"
    b, _ = lsock.accept()
    b.recv(1, socket.MSG_PEEK)  # its data is here
    if not settled(w.tid):
        print("FAIL ctl: the waiter did not settle", flush=True)
    acted = time.monotonic()
    ep.register(b.fileno(), select.EPOLLIN)
    check("ctl", w, acted, lambda ev: any(fd == b.fileno() for fd, _ in ev))

    # 2. and 3. shutdown(SHUT_RD) from another thread, the waiter in epoll_wait, then in poll().
    rdhup = select.EPOLLIN | select.EPOLLRDHUP
    for name in ("shutdown", "poll"):
        c, _ = lsock.accept()
        if name == "shutdown":
            waitset = select.epoll()
            waitset.register(c.fileno(), rdhup)
            w = Waiter(lambda: waitset.poll(10))
        else:
            waitset = select.poll()
            waitset.register(c.fileno(), select.POLLIN | select.POLLRDHUP)
            w = Waiter(lambda: waitset.poll(10000))
        if not w.start_blocked() or not settled(w.tid):
            print(f"FAIL {name}: the waiter did not block", flush=True)
        acted = time.monotonic()
        c.shutdown(socket.SHUT_RD)
        fd = c.fileno()
        check(name, w, acted, lambda ev: any(f == fd and e & rdhup == rdhup for f, e in ev))

    ctl.sendall(b"2")
    print("done", flush=True)


def client(host, port):
    ctl = socket.create_connection((host, port))
    assert ctl.recv(1) == b"1"
    b = socket.create_connection((host, port))
    b.sendall(b"x")
    c = socket.create_connection((host, port))
    d = socket.create_connection((host, port))
    assert ctl.recv(1) == b"2"
    for s in (ctl, b, c, d):
        s.close()


if __name__ == "__main__":
    if sys.argv[1] == "client":
        client(sys.argv[2], int(sys.argv[3]))
    else:
        server(int(sys.argv[1]))
