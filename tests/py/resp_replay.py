"""Sends RESP commands (one per line of a file, words split on spaces, `\\n` in a word is a
newline, `{big:N}` is N bytes) pipelined to HOST PORT, ends with QUIT, and writes every byte the
server sent back to stdout, raw. Used to compare the stack's Redis with the kernel's byte for
byte (tests/tests/shim_redis.rs)."""

import socket
import sys


def word(w):
    if w.startswith("{big:") and w.endswith("}"):
        n = int(w[5:-1])
        return bytes((i * 7 + 3) % 251 for i in range(n))
    return w.replace("\\n", "\n").encode()


def resp(words):
    out = [b"*%d\r\n" % len(words)]
    for w in words:
        out.append(b"$%d\r\n%s\r\n" % (len(w), w))
    return b"".join(out)


def main():
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    cmds = [l.split() for l in open(path) if l.strip() and not l.startswith("#")]
    payload = b"".join(resp([word(w) for w in c]) for c in cmds) + resp([b"QUIT"])
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(payload)
    got = []
    while True:
        b = s.recv(65536)
        if not b:
            break
        got.append(b)
    sys.stdout.buffer.write(b"".join(got))


main()
