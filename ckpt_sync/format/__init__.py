"""The repository format: what is stored and how it is read back, checked.

Crypto and the AES binding, chunk encoding and cut points, file digests, keys and key entries and
their authentication, manifests (with path safety and checkpoint-name parsing), the repository
(chunks, manifests, config and settings), the order of checkpoints, selections, resolving an id,
a name or ``latest`` to a manifest, lock objects, and what a checkpoint file holds.

May import: the shared modules, ``ckpt_sync.fs`` and ``ckpt_sync.providers``. It touches only the
store: this host's state (caches, records) is passed in.
"""
