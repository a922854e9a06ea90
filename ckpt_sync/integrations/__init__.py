"""Where frameworks save: torch.distributed.checkpoint (DCP), PyTorch Lightning, the Hugging Face
Trainer and fsspec, and the sync options they share.

May import: ``ckpt_sync.api`` (the public face), ``ckpt_sync.service`` and everything below.
The frameworks themselves are imported only here (and by the training side), never by the core.
"""
