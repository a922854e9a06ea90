"""``watch`` knows the folder checkpoints frameworks write: one folder = one checkpoint, with its step,
committed only once complete; inner files and symlinks are never checkpoints of their own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

from helpers import make_torch_checkpoint

from ckpt_sync.api import open_repository


def _manifests(repo_url):
    repo = open_repository(repo_url)
    return sorted((repo.load_manifest(i) for i in repo.manifest_ids()), key=lambda m: m.name)


def _watch_once(cli, folder, repo_url):
    return cli("watch", str(folder), "--to", repo_url, "--once", "--settle", "0.2", check=True)


def _deepspeed_save(out, step):
    """What DeepSpeed's save_checkpoint leaves: global_stepN/ with the rank files, then ``latest`` naming it."""
    tag = out / f"global_step{step}"
    make_torch_checkpoint(tag / "mp_rank_00_model_states.pt", seed=step, step=step)
    make_torch_checkpoint(tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt", seed=step + 1)
    (out / "latest").write_text(f"global_step{step}")


def test_deepspeed_global_step_folders_are_one_checkpoint_each_with_their_step(tmp_path, key, repo_url, cli):
    out = tmp_path / "ds"
    _deepspeed_save(out, 2)
    _deepspeed_save(out, 4)
    (out / "zero_to_fp32.py").write_text("# DeepSpeed's conversion script\n")
    # A save still in progress: its files are there, ``latest`` does not name it yet.
    make_torch_checkpoint(out / "global_step6" / "mp_rank_00_model_states.pt", seed=6)
    proc = _watch_once(cli, out, repo_url)
    got = _manifests(repo_url)
    assert [(m.name, m.kind, m.global_step) for m in got] == [("global_step2", "dir", 2), ("global_step4", "dir", 4)]
    assert sorted(f.path for f in got[0].files) == [
        "mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
    ]
    assert all(m.role == "resumable" for m in got)  # the manifest's role (ckpt_sync.manifest)
    assert "global_step6" in proc.stderr and "incomplete" in proc.stderr
    # DeepSpeed finishes step 6: the next run commits it, as one folder.
    make_torch_checkpoint(out / "global_step6" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", seed=7)
    (out / "latest").write_text("global_step6")
    _watch_once(cli, out, repo_url)
    assert [m.name for m in _manifests(repo_url)] == ["global_step2", "global_step4", "global_step6"]


def test_a_trainer_checkpoint_folder_waits_for_its_trainer_state_and_is_never_split(tmp_path, key, repo_url, cli):
    out = tmp_path / "hf"
    ck = out / "checkpoint-3"
    make_torch_checkpoint(ck / "model.safetensors", seed=1)  # content does not matter to the watcher
    make_torch_checkpoint(ck / "optimizer.pt", seed=2)
    make_torch_checkpoint(ck / "rng_state.pth", seed=3)
    proc = _watch_once(cli, out, repo_url)
    assert _manifests(repo_url) == [], "a Trainer checkpoint without trainer_state.json was committed"
    assert "checkpoint-3" in proc.stderr and "trainer_state.json" in proc.stderr
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": 3, "epoch": 0.5, "best_metric": None}))
    _watch_once(cli, out, repo_url)
    (m,) = _manifests(repo_url)
    assert (m.name, m.kind, m.global_step, m.epoch) == ("checkpoint-3", "dir", 3, 0.5)
    files = sorted(f.path for f in m.files)
    assert files == ["model.safetensors", "optimizer.pt", "rng_state.pth", "trainer_state.json"]
    assert m.role == "resumable"


def test_symlinked_aliases_are_not_separate_checkpoints(tmp_path, key, repo_url, cli):
    out = tmp_path / "lightning"
    make_torch_checkpoint(out / "epoch=1-step=20.ckpt", seed=1)
    os.symlink("epoch=1-step=20.ckpt", out / "last.ckpt")  # ModelCheckpoint(save_last="link")
    os.symlink("epoch=1-step=20.ckpt", out / "latest-rank0.pt")  # Composer's alias
    _watch_once(cli, out, repo_url)
    (m,) = _manifests(repo_url)
    assert (m.name, m.global_step, m.epoch) == ("epoch=1-step=20.ckpt", 20, 1)


DCP_TWO_HOSTS = textwrap.dedent(
    """
    import os, sys
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    import torch.multiprocessing as mp

    def rank_main(rank, root, port):
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
        torch.manual_seed(rank)
        state = {f"layer{rank}": torch.randn(64, 64)}  # each rank owns its own shard
        # Each rank's own disk: the coordinator's .metadata names both ranks' shard files.
        dcp.save(state, checkpoint_id=os.path.join(root, f"host{rank}", "step_100"))
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(rank_main, args=(sys.argv[1], int(sys.argv[2])), nprocs=2)
    """
)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dcp_folder_missing_a_shard_on_this_host_is_not_committed(tmp_path, key, repo_url, cli):
    script = tmp_path / "save.py"
    script.write_text(DCP_TWO_HOSTS)
    subprocess.run([sys.executable, str(script), str(tmp_path), str(_free_port())], check=True, timeout=300)
    host0 = tmp_path / "host0"
    assert sorted(os.listdir(host0 / "step_100")) == [".metadata", "__0_0.distcp"]
    proc = _watch_once(cli, host0, repo_url)
    assert _manifests(repo_url) == [], "a DCP checkpoint missing rank 1's shard was committed"
    warnings = [line for line in proc.stderr.splitlines() if "incomplete" in line]
    assert len(warnings) == 1, proc.stderr
    assert "__1_0.distcp" in warnings[0] and "ckpt_sync.dcp.Writer" in warnings[0]
    # Once the other host's shard is there too (copied over), the folder is complete and committed whole.
    shutil.copy2(tmp_path / "host1" / "step_100" / "__1_0.distcp", host0 / "step_100")
    _watch_once(cli, host0, repo_url)
    (m,) = _manifests(repo_url)
    assert (m.name, m.global_step) == ("step_100", 100)
    assert sorted(f.path for f in m.files) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
