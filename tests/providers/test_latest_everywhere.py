""" "Latest" is the newest resumable training state whatever else lands in the folder or the
repository: roles come from what a file holds, a checkpoint with no training position never
outranks one that has one, a watch's --keep is scoped to its own run, and a problem in the local
target stops a pull instead of restoring something older. On the local store and on S3 (moto)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from ckpt_sync.providers import open_provider
from helpers import make_torch_checkpoint
from store_objects import seal, unseal

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402


def _ls(cli, url: str, *extra: str) -> list[dict]:
    return json.loads(cli("ls", "--json", "--role", "any", "--repo", url, *extra, check=True).stdout)


def _run_files(folder: Path, session: str, steps: list[int], hidden: int = 64) -> list[Path]:
    """Checkpoints as CheckpointManager names and fills them (model, Adam state, global_step)."""
    out = []
    for step in steps:
        out.append(make_torch_checkpoint(folder / f"checkpoint_{session}_{step}.pt", hidden=hidden, seed=step))
        time.sleep(0.01)  # distinct modification times, as a real run has
    return out


def test_a_weights_only_file_beside_the_run_is_model_only_and_never_outranks_it(any_repo_url, cli, key, tmp_path):
    url = any_repo_url
    ckdir = tmp_path / "ckpts"
    run = _run_files(ckdir, "20261115_083000", [100, 200, 300])
    model = torch.nn.Sequential(torch.nn.Linear(48, 48), torch.nn.Linear(48, 8))
    torch.save(model.state_dict(), ckdir / "exported_weights.pt")  # the newest file in the folder
    (ckdir / "notes.pt").write_text("a text file that happens to match *.pt\n")

    cli("watch", str(ckdir), "--once", "--keep", "1", "--settle", "0", "--repo", url, check=True)
    roles = {m["name"]: m["role"] for m in _ls(cli, url)}
    # Kept: the run's newest (the one resumable --keep 1 keeps) and the newest model-only upload
    # (the exported weights); the older steps go, and so does the text file (no position: oldest).
    assert roles == {run[-1].name: "resumable", "exported_weights.pt": "model-only"}, roles
    dest = tmp_path / "fresh-host"
    cli("pull", "--latest", "--repo", url, "--to", str(dest), check=True)
    assert [p.name for p in dest.iterdir()] == [run[-1].name]
    assert (dest / run[-1].name).read_bytes() == run[-1].read_bytes()


def test_a_file_pushed_by_hand_after_the_run_is_never_latest(any_repo_url, cli, key, tmp_path):
    url = any_repo_url
    run = _run_files(tmp_path / "run", "20261115_083000", [10, 20])
    for p in run:
        cli("push", str(p), "--repo", url, check=True)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "train_config.yaml").write_text("lr: 0.001\nbatch: 64\n")
    cli("push", str(extra / "train_config.yaml"), "--repo", url, check=True)
    torch.save(torch.nn.Linear(32, 32).state_dict(), extra / "final_model.pt")
    cli("push", str(extra / "final_model.pt"), "--repo", url, check=True)
    roles = {m["name"]: (m["role"], m["step"]) for m in _ls(cli, url)}
    assert roles["final_model.pt"] == ("model-only", None) and roles["train_config.yaml"] == ("resumable", None)
    listed = json.loads(cli("ls", "--json", "--repo", url, check=True).stdout)
    assert listed[0]["name"] == run[-1].name  # newest first: the run's newest, not the later upload
    dest = tmp_path / "dest"
    cli("pull", "--latest", "--repo", url, "--to", str(dest), check=True)
    assert (dest / run[-1].name).read_bytes() == run[-1].read_bytes() and not (dest / "train_config.yaml").exists()
    # Said explicitly, a position counts: a file pushed as step 30 of the run becomes the newest.
    (extra / "run_state.yaml").write_text("lr: 0.0005\n")
    cli("push", str(extra / "run_state.yaml"), "--step", "30", "--session", "20261115_083000", "--repo", url)
    newest = json.loads(cli("ls", "--json", "--repo", url, check=True).stdout)[0]
    assert (newest["name"], newest["step"], newest["session"]) == ("run_state.yaml", 30, "20261115_083000")


def test_two_runs_watching_into_one_repository_each_keep_their_own_newest(any_repo_url, cli, key, tmp_path):
    url = any_repo_url
    older, newer = tmp_path / "host-a" / "ck", tmp_path / "host-b" / "ck"
    kept = {}
    for round_ in range(3):
        for folder, session in ((older, "20261101_070000"), (newer, "20261120_210000")):
            made = _run_files(folder, session, [10 * round_ + 1, 10 * round_ + 2], hidden=32)
            cli("watch", str(folder), "--once", "--keep", "2", "--settle", "0", "--repo", url, check=True)
            kept[session] = [p.name for p in made]
    names = {m["name"] for m in _ls(cli, url)}
    assert names == {*kept["20261101_070000"], *kept["20261120_210000"]}, names
    # The repository-wide scope is there when asked for: the older run then goes.
    _run_files(newer, "20261120_210000", [31], hidden=32)
    cli("watch", str(newer), "--once", "--keep", "2", "--keep-scope", "repository", "--settle", "0", "--repo", url)
    assert not any(n.startswith("checkpoint_20261101") for n in (m["name"] for m in _ls(cli, url)))
    dry = cli("prune", "--keep", "1", "--dry-run", "--repo", url, check=True)
    assert "session 20261120_210000" in dry.stdout, dry.stdout


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_symlink_where_the_newest_checkpoint_goes_stops_the_pull(kind, any_repo_url, cli, key, tmp_path):
    url = any_repo_url
    if kind == "file":
        run = _run_files(tmp_path / "run", "20261115_083000", [100, 200])
    else:
        run = []
        for step in (100, 200):
            folder = tmp_path / "run" / f"checkpoint-{step}"
            make_torch_checkpoint(folder / "optimizer.pt", hidden=32, seed=step)
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
            run.append(folder)
    for p in run:
        cli("push", str(p), "--repo", url, check=True)
    dest = tmp_path / "dest"
    dest.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"not to be overwritten")
    (dest / run[-1].name).symlink_to(elsewhere)  # e.g. a `last.ckpt`-style link where the newest lands
    proc = cli("pull", "--latest", "--repo", url, "--to", str(dest))
    assert proc.returncode != 0, proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and "symlink" in lines[0] and str(dest / run[-1].name) in lines[0], proc.stderr
    assert "falling back" not in proc.stderr and "unexpected" not in proc.stderr
    assert sorted(p.name for p in dest.iterdir()) == [run[-1].name]  # nothing older was restored
    assert (dest / run[-1].name).is_symlink() and elsewhere.read_bytes() == b"not to be overwritten"


def test_checkpoints_committed_before_roles_came_from_content_get_their_role_rederived(
    any_repo_url, cli, key, tmp_path
):
    """A manifest without extra.role_from (an earlier release) recorded every push as resumable; where
    its file names say weights only, readers and ``ls`` use model-only."""
    url = any_repo_url
    ckpt = _run_files(tmp_path / "run", "20261115_083000", [5])[0]
    cli("push", str(ckpt), "--repo", url, check=True)
    weights = tmp_path / "model.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(weights))
    cli("push", str(weights), "--role", "resumable", "--repo", url, check=True)
    store = open_provider(url, retry=None)
    for info in store.list("manifests/"):  # rewrite both as the earlier release wrote them
        m = json.loads(unseal(key, store.get(info.key)))
        m["role"] = "resumable"
        m["extra"].pop("role_from", None)
        store.put(info.key, seal(key, json.dumps(m).encode()))
    roles = {m["name"]: m["role"] for m in _ls(cli, url)}
    assert roles == {ckpt.name: "resumable", "model.safetensors": "model-only"}
    listed = cli("ls", "--repo", url, check=True).stdout
    assert "model-only" in listed


def test_the_dcp_reader_takes_the_newest_intact_resumable_save(any_repo_url, cli, key, tmp_path):
    """dcp.Reader("latest") skips a newer save with a chunk gone and a newer best-tagged one, as pull
    --latest does, instead of failing the load or loading the best model as the training state."""
    import torch.distributed.checkpoint as dcp

    from ckpt_sync.api import open_repository
    from ckpt_sync.dcp import Reader, Writer
    from ckpt_sync.format.layout import chunk_key

    url = any_repo_url

    def state(step: int) -> dict:
        torch.manual_seed(step)
        return {"weights": torch.randn(96, 96), "optim": {"lr": 0.01 * step}, "step": step}

    for step, tags in ((10, []), (20, []), (30, ["best"])):
        dcp.save(
            state(step), storage_writer=Writer(url, name=f"sharded_{step}", tags=tags, metadata={"global_step": step})
        )
    repo = open_repository(url)
    manifests = {m.name: m for m in repo.manifests()}
    assert {n: m.role for n, m in manifests.items()} == {
        "sharded_10": "resumable",
        "sharded_20": "resumable",
        "sharded_30": "best",
    }
    shared = set().union(*(m.chunk_ids() for n, m in manifests.items() if n != "sharded_20"))
    repo.provider.delete(chunk_key(next(c for c in sorted(manifests["sharded_20"].chunk_ids()) if c not in shared)))

    got = {"weights": torch.zeros(96, 96), "optim": {"lr": 0.0}, "step": -1}
    dcp.load(got, storage_reader=Reader(url))
    assert got["step"] == 10 and torch.equal(got["weights"], state(10)["weights"])
