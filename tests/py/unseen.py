"""What the shim cannot see, as a Go program or an io_uring server does it: listen(2) made as a
raw system call on a flagged port, and an io_uring set up. Run as `unseen.py PORT`; prints
`ready` once both are done, then waits for SIGTERM."""
import ctypes
import signal
import socket
import sys

SYS_LISTEN = 50
SYS_IO_URING_SETUP = 425

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
if libc.syscall(ctypes.c_long(SYS_LISTEN), ctypes.c_long(s.fileno()), ctypes.c_long(16)) != 0:
    sys.exit(f"listen: errno {ctypes.get_errno()}")
params = ctypes.create_string_buffer(120)
ring = libc.syscall(ctypes.c_long(SYS_IO_URING_SETUP), ctypes.c_long(4), params)
if ring < 0:
    sys.exit(f"io_uring_setup: errno {ctypes.get_errno()}")
print("ready", flush=True)
signal.sigwait({signal.SIGTERM})
