"""redis-py (Debian's python3-redis) against HOST PORT: what a Python application does with
Redis, every result checked. Prints one line per check and `redis-py: all checks passed`."""

import asyncio
import hashlib
import sys
import threading

import redis
import redis.asyncio as aredis

host, port = sys.argv[1], int(sys.argv[2])
r = redis.Redis(host=host, port=port, socket_timeout=30)
r2 = redis.Redis(host=host, port=port, socket_timeout=30)


def check(name, cond):
    if not cond:
        print("FAILED:", name)
        sys.exit(1)
    print("ok:", name)


check("ping", r.ping())
r.set("greeting", "hi")
check("get", r.get("greeting") == b"hi")

# A pipeline of 1,000 commands, without and with MULTI.
p = r.pipeline(transaction=False)
for i in range(1000):
    p.set("k%d" % i, i)
check("pipeline of 1000 SETs", all(p.execute()))
p = r.pipeline()
for i in range(1000):
    p.get("k%d" % i)
check("transactional pipeline of 1000 GETs",
      p.execute() == [str(i).encode() for i in range(1000)])

# WATCH: a write by another client between WATCH and EXEC aborts the transaction.
r.set("w", "start")
with r.pipeline() as p:
    p.watch("w")
    r2.set("w", "changed-by-another-client")
    p.multi()
    p.set("w", "mine")
    try:
        p.execute()
        aborted = False
    except redis.WatchError:
        aborted = True
check("WATCH aborts EXEC after a concurrent write", aborted)
check("the concurrent write stands", r.get("w") == b"changed-by-another-client")

# Pub/sub.
ps = r.pubsub()
ps.subscribe("chan")
ps.get_message(timeout=5)  # the subscribe confirmation
check("publish reaches 1 subscriber", r2.publish("chan", "payload") == 1)
msg = None
for _ in range(50):
    msg = ps.get_message(timeout=0.2)
    if msg:
        break
check("subscriber gets the message", msg and msg["data"] == b"payload")
ps.close()

# A 10 MB value, checksummed.
blob = hashlib.sha256(b"seed").digest() * (10 * 1024 * 1024 // 32)
r.set("blob", blob)
check("10 MB value round-trips", hashlib.sha256(r.get("blob")).digest() ==
      hashlib.sha256(blob).digest())

# 50 threads sharing a connection pool.
pool = redis.ConnectionPool(host=host, port=port, max_connections=50)
errors = []


def worker(n):
    c = redis.Redis(connection_pool=pool)
    try:
        for i in range(100):
            c.incr("t%d" % n)
    except Exception as e:  # noqa: BLE001 - reported below
        errors.append(repr(e))


ts = [threading.Thread(target=worker, args=(n,)) for n in range(50)]
for t in ts:
    t.start()
for t in ts:
    t.join()
check("50 threads x 100 INCRs, no error", not errors)
check("every thread's counter is 100",
      all(r.get("t%d" % n) == b"100" for n in range(50)))


# asyncio: 100 concurrent clients.
async def amain():
    clients = [aredis.Redis(host=host, port=port) for _ in range(100)]

    async def one(i, c):
        for _ in range(50):
            await c.incr("a%d" % i)
        return await c.get("a%d" % i)

    res = await asyncio.gather(*(one(i, c) for i, c in enumerate(clients)))
    for c in clients:
        await c.close()
    return res


check("asyncio: 100 clients x 50 INCRs", asyncio.run(amain()) == [b"50"] * 100)
clients = r.client_list()
check("CLIENT LIST shows this client", any(c["name"] == "" for c in clients))
print("redis-py: all checks passed")
