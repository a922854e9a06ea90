"""Moving checkpoints between this host and a repository, and keeping the repository in shape.

Push, restore (pull) and the chunk cache folder pulls on one host can share, the lazy reader,
verify, repair, copy, prune and retention, forget, tags, stats, transfer counters, opening a
repository with this host's state (the manifest cache, the record of the newest checkpoint seen,
the record of damaged chunks).

May import: ``ckpt_sync.format`` and everything below it.
"""
