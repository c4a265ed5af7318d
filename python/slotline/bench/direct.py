"""Peers driven through the plug-ins' own APIs (no LMCache needed), and redis-py doing
what LMCache's redis:// connector does."""

from __future__ import annotations

import asyncio

from slotline.bench.common import (
    LoopThread,
    Peer,
    PluginWaiter,
    check,
    lmcache_meta,
    random_chunks,
)
from slotline.native_plugin import SlotlineNativePlugin


class NativeDirect(Peer):
    """slotline's native plug-in through its own submit / drain API (layout raw)."""

    name, via = "native", "plug-in API"

    def __init__(self, url, size, count, settings):
        super().__init__(url, size, count, settings)
        self.p = SlotlineNativePlugin(url=url, **settings)
        self.w = PluginWaiter(self.p)
        self.src = [memoryview(b) for b in random_chunks(size, count)]
        self.dst = [memoryview(bytearray(size)) for _ in range(count)]

    def make_keys(self, batch):
        return ["bench/native@00000000@0@%x" % (batch * self.count + i)
                for i in range(self.count)]

    def put(self, batch):
        _, ok, err, _ = self.w.wait(self.p.submit_batch_set(self.keys(batch), self.src))
        check(ok, "native put: %s" % err)

    def get(self, batch):
        _, ok, err, flags = self.w.wait(self.p.submit_batch_get(self.keys(batch), self.dst))
        check(ok and (flags is None or all(flags)), "native get: %s %s" % (err, flags))

    def exists(self, batch):
        _, ok, err, flags = self.w.wait(self.p.submit_batch_exists(self.keys(batch)))
        check(ok and flags is not None and all(flags), "native exists: %s" % err)

    def close(self):
        self.p.close()


class ConnectorDirect(Peer):
    """The engine calls slotline's connector makes, without LMCache."""

    name, via = "connector", "engine calls"

    def __init__(self, url, size, count, settings):
        super().__init__(url, size, count, settings)
        from slotline import Client, config_text
        self.c = Client(config_text({"url": url, **settings}, default_layout="lmcache"))
        self.w = PluginWaiter(self.c)
        self.src = [memoryview(b) for b in random_chunks(size, count)]
        self.dst = [memoryview(bytearray(size)) for _ in range(count)]
        self.metas = [lmcache_meta(size)] * count

    def make_keys(self, batch):
        return ["bench/connector@1@0@%x@bfloat16" % (batch * self.count + i)
                for i in range(self.count)]

    def put(self, batch):
        _, ok, err, _ = self.w.wait(self.c.submit_put(self.keys(batch), self.src, self.metas))
        check(ok, "connector put: %s" % err)

    def get(self, batch):
        _, ok, err, fetched = self.w.wait(self.c.submit_fetch(self.keys(batch), False))
        check(ok, "connector get: %s" % err)
        hits = sum(1 for i in range(self.count) if fetched.copy_into(i, self.dst[i]))
        fetched.release()
        check(hits == self.count, "connector get: %d hits" % hits)

    def exists(self, batch):
        _, ok, err, n = self.w.wait(self.c.submit_contains_prefix(self.keys(batch)))
        check(ok and n == self.count, "connector exists: %s %s" % (err, n))

    def close(self):
        self.c.close()


class RedisPyDirect(Peer):
    """LMCache's redis:// connector's calls with redis-py's asyncio client: per chunk
    SET K+"kv_bytes" then K+"metadata"; GET K+"metadata" then K+"kv_bytes"; EXISTS
    K+"metadata" one key after the other; chunks concurrent over a 150-connection pool."""

    name, via = "redis", "redis-py asyncio"

    def __init__(self, url, size, count, settings):
        super().__init__(url, size, count, settings)
        import redis.asyncio as aredis
        self.lt = LoopThread()
        self.r = aredis.Redis.from_pool(
            aredis.ConnectionPool.from_url(url, max_connections=150))
        self.src = [bytes(b) for b in random_chunks(size, count)]
        self.dst = [memoryview(bytearray(size)) for _ in range(count)]
        self.meta = lmcache_meta(size)

    def make_keys(self, batch):
        return ["bench/redis@1@0@%x@bfloat16" % (batch * self.count + i)
                for i in range(self.count)]

    def put(self, batch):
        async def one(k, v):
            await self.r.set(k + "kv_bytes", v)
            await self.r.set(k + "metadata", self.meta)

        async def all_():
            await asyncio.gather(*(one(k, v) for k, v in zip(self.keys(batch), self.src)))

        self.lt.run(all_())

    def get(self, batch):
        async def one(k, dst):
            if await self.r.get(k + "metadata") is None:
                return False
            v = await self.r.get(k + "kv_bytes")
            if v is None or len(v) != len(dst):
                return False
            dst[:] = v
            return True

        async def all_():
            pairs = zip(self.keys(batch), self.dst)
            return await asyncio.gather(*(one(k, d) for k, d in pairs))

        check(all(self.lt.run(all_())), "redis get: misses")

    def exists(self, batch):
        async def prefix():
            n = 0
            for k in self.keys(batch):
                if not await self.r.exists(k + "metadata"):
                    break
                n += 1
            return n

        check(self.lt.run(prefix()) == self.count, "redis exists: misses")

    def close(self):
        self.lt.run(self.r.aclose())
        self.lt.stop()
