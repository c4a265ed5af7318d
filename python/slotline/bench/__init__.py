"""``python -m slotline.bench`` (``--help``, ``--json PATH``): slotline's LMCache
plug-ins beside LMCache's own clients, in one run, interleaved, against a standalone
redis-server and a Redis Cluster of three masters (``--topology``, default both).

Peers (``--peers``, default all that can run here):

- ``native``: slotline's native plug-in (multiprocess mode). Through LMCache's
  ``NativeConnectorL2Adapter`` (built by its ``native_plugin`` factory, store / load /
  lookup-and-lock tasks with TensorMemoryObjs) when lmcache is importable, else the
  plug-in's own submit / drain API.
- ``resp``: LMCache's built-in ``resp`` adapter (its C++ client) in the same
  ``NativeConnectorL2Adapter`` harness; only when lmcache and its C++ extension import.
- ``valkey``: LMCache's built-in ``valkey`` adapter (valkey-glide's sync client,
  ``cluster_mode`` on the cluster) in the same harness; only when lmcache and
  ``valkey-glide-sync`` import (``pip install valkey-glide-sync``).
- ``connector``: slotline's remote connector (single-process mode). Through LMCache's
  ``RemoteBackend`` built by ``CreateStorageBackends`` with MemoryObjs from its
  ``LocalCPUBackend`` when lmcache is importable, else the engine calls it makes.
- ``redis``: what LMCache's ``redis://`` connector does (two keys per chunk, one
  GET / SET per key, concurrent over a pool): LMCache's own connector in a
  ``RemoteBackend`` when lmcache is importable, else the same calls with redis-py's
  asyncio client.

Each configuration ``SIZE:COUNT[:MB]`` (``--sizes 2k:128,4m:8:1024``) moves about MB
(default ``--target-mb``) MiB per peer and operation in batches of COUNT chunks of
SIZE bytes. Each peer is warmed up once (``--warmup`` untimed batches) and its keys
(LMCache's key objects) are built before timing. ``--gc freeze`` / ``off`` keep
Python's collector from scanning the setup's objects (LMCache and torch) while
timing, for every peer.
For each round, peers take turns (interleaved), the order rotated by one from round
to round: FLUSHALL and MEMORY PURGE on every master (so each PUT of fresh keys pays
the same first-touch page faults in the server, whoever ran before), PUT every batch
(fresh keys: ``put``), PUT them again (``overwrite``), GET every batch, EXISTS every
batch (keys/s only; repeated until at least 256 batches are timed). The JSON records
each round's order and the keys on the masters when each peer's PUT began (0).
``resp`` and ``redis`` talk to one standalone server: skipped on the cluster (noted).
``--inflight K`` keeps up to K batches in flight through LMCache's adapter (peers
native, resp, valkey, null), as its server does with several workers; the
peer ``null`` (LMCache's adapter over a plug-in without I/O, only on request) shows
the harness's own cost: ``null / resp`` is the largest ratio any plug-in can reach.
Results are medians over ``--runs`` rounds; ratios of slotline's peers to the others
are computed within each round, then their median (``ratio_runs``: each round's).
Every row also gives, per batch, the wall time, the CPU of this process (all its
threads: harness, LMCache, the client's own threads) and, when the bench started the
servers, the redis-servers' CPU (from /proc): with one batch in flight, ``null``'s
wall time plus a peer's server CPU is a floor under that peer's wall time, whatever
its client costs.
Without ``--url`` / ``--cluster-url`` the servers are started on free loopback ports
and stopped after.
"""
