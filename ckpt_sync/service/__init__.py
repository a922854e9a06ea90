"""Running on a host: the sync daemon and its parts.

The ``watch`` daemon, the folder watcher and the framework layouts it knows, the sync worker and
its durable queue, staging (holding files until they are committed), the state-folder lock, the
in-process ``SyncClient``, ``status``, metrics, and the settings every verb and the library
resolve the same way (flag or argument, environment, config file, default).

May import: ``ckpt_sync.transfer`` and everything below it.
"""
