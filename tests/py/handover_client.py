"""The client of handover_server.py: opens N connections, sends a line on each, prints `sent`,
then reads every echo (10 s at most each).

Run as `handover_client.py HOST PORT N`. Prints `conn I ok` or `conn I FAIL ...` per
connection and `ok K of N`; exits 1 unless every line came back.
"""
import socket
import sys


def main():
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    conns = []
    for i in range(n):
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(f"hello {i}\n".encode())
        conns.append(s)
    print("sent", flush=True)
    ok = 0
    for i, s in enumerate(conns):
        want = f"hello {i}\n".encode()
        got = b""
        try:
            while len(got) < len(want):
                more = s.recv(4096)
                if not more:
                    break
                got += more
            if got == want:
                ok += 1
                print(f"conn {i} ok", flush=True)
            else:
                print(f"conn {i} FAIL got {got!r}", flush=True)
        except OSError as e:
            print(f"conn {i} FAIL {type(e).__name__}: {e}", flush=True)
        s.close()
    print(f"ok {ok} of {n}", flush=True)
    sys.exit(0 if ok == n else 1)


if __name__ == "__main__":
    main()
