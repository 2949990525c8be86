#!/usr/bin/env python3
"""Writes to a Redis Cluster while its slots move, then checks every value.

    cluster_load.py HOST PORT KEYS STOP_FILE

Sets KEYS keys, round after round (each value names its key and its round), following the
cluster's redirections (redis-py's RedisCluster), and prints `round 1` once the first round is
written. After STOP_FILE appears it finishes the round, reads every key back and prints
`ok rounds=R writes=W keys=K`; a key that does not hold the last value written to it is
printed and the exit status is 1. An error the client cannot recover from (after its retries)
ends it with a traceback and status 1.
"""

import os
import sys

from redis.cluster import ClusterNode, RedisCluster


def main():
    host, port, keys, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    rc = RedisCluster(
        startup_nodes=[ClusterNode(host, port)],
        socket_timeout=10,
        cluster_error_retry_attempts=10,
    )
    last = {}
    writes = 0
    rounds = 0
    while True:
        for i in range(keys):
            key = f"key:{i}"
            value = f"{key}:{rounds}"
            rc.set(key, value)
            last[key] = value
            writes += 1
        rounds += 1
        if rounds == 1:
            print("round 1", flush=True)
        if os.path.exists(stop):
            break
    bad = []
    for key, value in last.items():
        got = rc.get(key)
        if got != value.encode():
            bad.append((key, value, got))
    if bad:
        for key, value, got in bad[:20]:
            print(f"{key}: wrote {value!r}, read {got!r}")
        print(f"{len(bad)} of {len(last)} keys differ")
        return 1
    print(f"ok rounds={rounds} writes={writes} keys={len(last)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
