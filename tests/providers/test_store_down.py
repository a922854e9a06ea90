"""Training never depends on the store being reachable: a run started while the store is down (a
closed port, or a server that accepts and never answers) resumes from its local checkpoint within
seconds, keeps saving, warns once naming the store, and commits everything once the store answers
again; with nothing local, recover() says so in one line. Real training processes, moto behind a
TCP proxy that goes down and comes back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from faultproxy import FaultProxy
from helpers import wait_until

JOB = r"""
import json, sys, time
started = time.monotonic()
from pathlib import Path
import torch
from ckpt_sync.training import CheckpointManager

folder, repo, last, signals = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 4))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
with CheckpointManager(folder, model=model, optimizer=opt, repo=repo, interval_s=None, every_n_steps=1,
                       max_keep=10, async_save=True, handle_signals=False) as mgr:
    info = mgr.recover()
    first = (info["start_step"] if info else 0) + 1
    print(json.dumps({"resumed_from": info and info["start_step"], "first_step_after": time.monotonic() - started}),
          flush=True)
    for step in range(first, last + 1):
        model(torch.randn(8, 64)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        mgr.maybe_save(step, 0)
    mgr.wait()
    (signals / "saved").touch()
    while not (signals / "go").exists():
        time.sleep(0.05)
print("closed", flush=True)
"""

RECOVER_ONLY = r"""
import sys
import torch
from ckpt_sync.training import CheckpointManager, RecoveryError
model = torch.nn.Linear(4, 4)
with CheckpointManager(sys.argv[1], model=model, repo=sys.argv[2], handle_signals=False) as mgr:
    mgr.recover()
"""


def _job(script: str, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _steps(cli, url: str) -> list[int]:
    listed = json.loads(cli("ls", "--json", "--repo", url, check=True).stdout)
    return sorted(m["step"] for m in listed)


@pytest.mark.s3
@pytest.mark.parametrize("outage", ["closed port", "silent server"])
def test_a_run_started_while_the_store_is_down_resumes_saves_and_commits_when_it_is_back(
    outage, cloud_factory, cli, key, tmp_path
):
    cloud = cloud_factory("s3")
    url = cloud.url(cloud.new_bucket(), "run")
    moto_port = int(cloud.env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    with FaultProxy(moto_port, stall_seconds=None) as proxy:
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url}
        folder = tmp_path / "checkpoints"
        signals = tmp_path / "signals"
        signals.mkdir()
        (signals / "go").touch()
        first = _job(JOB, str(folder), url, "3", str(signals), env=env)  # the store up: steps 1-3 committed
        out, err = first.communicate(timeout=600)
        assert first.returncode == 0, err
        assert _steps(cli, url) == [1, 2, 3]

        if outage == "closed port":
            proxy.down = True  # every connection refused
        else:
            proxy.fault_rate, proxy.faults = 1.0, ("stall",)  # accepted, then silence
        (signals / "saved").unlink()
        (signals / "go").unlink()
        second = _job(JOB, str(folder), url, "6", str(signals), env=env)
        wait_until(lambda: (signals / "saved").exists() or second.poll() is not None, "three saves with the store down")
        assert second.poll() is None, second.communicate()
        assert _steps(cli, url) == [1, 2, 3]  # nothing got through
        proxy.down, proxy.fault_rate = False, 0.0  # the store is back
        (signals / "go").touch()
        out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err
    report = json.loads(out.splitlines()[0])
    assert report["resumed_from"] == 3
    print(f"\n[{outage}] first training step {report['first_step_after']:.2f}s after the process started")
    warnings = [ln for ln in err.splitlines() if "cannot reach" in ln]
    assert len(warnings) == 1 and url in warnings[0] and "queued" in warnings[0], err
    assert "Traceback" not in err
    assert _steps(cli, url) == [1, 2, 3, 4, 5, 6]  # every save of the outage committed once it was back
    cli("verify", "--read-data", "--repo", url, check=True)


@pytest.mark.s3
def test_recover_with_nothing_local_and_the_store_down_says_so_in_one_line(cloud_factory, key, tmp_path):
    cloud = cloud_factory("s3")
    url = cloud.url(cloud.new_bucket(), "run")
    moto_port = int(cloud.env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    with FaultProxy(moto_port) as proxy:
        proxy.down = True
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url}
        started = time.monotonic()
        job = _job(RECOVER_ONLY, str(tmp_path / "empty"), url, env=env)
        _out, err = job.communicate(timeout=600)
    assert job.returncode != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("ckpt_sync.training.errors.RecoveryError:") and url in last, err
    assert "no checkpoint to resume from" in last and "repo=None" in last
    assert "During handling of the above exception" not in err  # one error, not a chain
    print(f"\nrecover() gave up after {time.monotonic() - started:.1f}s")


def _closed_port_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from servers import free_port

    for name, value in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)


def test_lightning_resumes_from_its_local_checkpoint_while_the_store_is_down(monkeypatch, key, tmp_path):
    import torch

    from ckpt_sync.errors import OperationFailed
    from ckpt_sync.lightning import latest_path

    _closed_port_env(monkeypatch)
    url = "s3://unreachable-bucket/run"
    with pytest.raises(OperationFailed, match=r"no checkpoint in .* cannot be read"):
        latest_path(url, tmp_path / "empty")
    folder = tmp_path / "ckpts"
    folder.mkdir()
    torch.save({"global_step": 12, "epoch": 0, "state_dict": {}}, folder / "epoch=0-step=12.ckpt")
    assert latest_path(url, folder) == str(folder / "epoch=0-step=12.ckpt")


def test_hugging_face_restore_latest_leaves_resuming_to_the_trainer_while_the_store_is_down(monkeypatch, key, tmp_path):
    from ckpt_sync.errors import OperationFailed
    from ckpt_sync.hf import restore_latest

    _closed_port_env(monkeypatch)
    url = "s3://unreachable-bucket/run"
    with pytest.raises(OperationFailed, match=r"no checkpoint in .* cannot be read"):
        restore_latest(url, tmp_path / "out")
    (tmp_path / "out" / "checkpoint-40").mkdir(parents=True)
    assert restore_latest(url, tmp_path / "out") is None  # the Trainer finds checkpoint-40 itself
