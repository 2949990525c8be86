"""Redis's "Protocol desync regression" case against HOST PORT, ROUNDS times: a client sends a
malformed request and keeps writing until the server's reset stops it, then reads what the
server said. Redis answers `-ERR Protocol error...` and closes with the client's data unread;
Linux sends the reply in Redis's write and the reset at its close, so the reply is read ahead
of the reset every time. Prints `N of ROUNDS rounds read the error`."""

import socket
import sys

host, port, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
payload = b"A" * 1024 + b"\n"
read = 0
for i in range(rounds):
    s = socket.create_connection((host, port), timeout=30)
    s.sendall([b"\x00", b"*\x00", b"$\x00"][i % 3])
    try:
        while True:
            s.sendall(payload)
    except OSError:
        pass
    got = b""
    try:
        while b"\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    except OSError:
        pass
    s.close()
    if b"Protocol error" in got:
        read += 1
    else:
        print(f"round {i}: read {got!r}")
print(f"{read} of {rounds} rounds read the error")
