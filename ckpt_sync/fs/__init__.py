"""Local files: everything that touches this host's disk durably, in one place.

Atomic writes (a temp name beside the target, fsync, rename, fsync of the folder), the temp-name
scheme every writer uses (and that a folder scan recognises), holding a file until it is uploaded,
unbuffered (O_DIRECT) chunk and restore writes, and which files a checkpoint folder holds.

May import: the shared modules at the top of ``ckpt_sync`` (errors, owners, ...), nothing else.
"""
