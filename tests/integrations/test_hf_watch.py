"""``watch`` on a Hugging Face Trainer's output_dir while a real Trainer saves into it."""

from __future__ import annotations

from helpers import manifest_ids, start_cli, wait_until
from test_hf import _manifests, _trainer


def test_watch_on_a_trainer_output_dir_commits_one_checkpoint_per_folder_while_training_runs(
    tmp_path, key, repo_url, repo_dir, cli
):
    out = tmp_path / "run"
    out.mkdir()
    log = tmp_path / "watch.log"
    watch = start_cli("watch", str(out), "--to", repo_url, "--settle", "0.5", "--rescan", "2", log_file=log)
    try:
        wait_until(lambda: "watching" in log.read_text(), "watch to start")
        _trainer(out, 6).train()
        wait_until(lambda: len(manifest_ids(repo_dir)) >= 3, "three commits")
    except AssertionError:
        raise AssertionError(log.read_text()) from None
    finally:
        watch.terminate()
        assert watch.wait(timeout=120) == 0, log.read_text()
    # Whatever that watch had seen but not committed yet (an inner file taken for a checkpoint) goes up now.
    cli("watch", str(out), "--to", repo_url, "--once", "--settle", "0.2", check=True)
    got = sorted((m.name, m.kind, m.global_step) for m in _manifests(repo_url))
    assert got == [("checkpoint-2", "dir", 2), ("checkpoint-4", "dir", 4), ("checkpoint-6", "dir", 6)], log.read_text()
