"""The Hugging Face Trainer integration with a real Trainer and a tiny GPT-2 built from a config (no download)."""

from __future__ import annotations

import json
import os

import pytest

from ckpt_sync.api import open_repository

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


class TokenData(torch.utils.data.Dataset):
    """Random token sequences: a language-model task the tiny model can take steps on."""

    def __init__(self, n=64, length=16, vocab=64):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class FirstStep(transformers.TrainerCallback):
    """Records the first global step this Trainer reaches (after any resume)."""

    def __init__(self):
        self.first = None

    def on_step_end(self, args, state, control, **kw):
        if self.first is None:
            self.first = state.global_step


def _trainer(output_dir, max_steps, callbacks=(), eval_dataset=None, **extra):
    config = transformers.GPT2Config(
        vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    args = transformers.TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        save_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **extra,
    )
    return transformers.Trainer(
        model=model, args=args, train_dataset=TokenData(), eval_dataset=eval_dataset, callbacks=list(callbacks)
    )


def _manifests(repo_url):
    repo = open_repository(repo_url)
    try:
        return [repo.load_manifest(i) for i in repo.manifest_ids()]
    finally:
        repo.provider.close()


def test_each_trainer_checkpoint_is_one_folder_checkpoint_and_a_fresh_host_resumes_from_the_newest(
    tmp_path, key, repo_url, cli
):
    from ckpt_sync.hf import CkptSyncCallback, restore_latest

    out = tmp_path / "run"
    first = _trainer(out, 6, [CkptSyncCallback(repo_url)], save_total_limit=2)
    first.train()
    rows = json.loads(cli("ls", "--json", "--repo", repo_url, check=True).stdout)
    # save_total_limit deleted checkpoint-2 locally; the repository still has every save, each one folder.
    assert sorted((r["name"], r["step"]) for r in rows) == [
        ("checkpoint-2", 2),
        ("checkpoint-4", 4),
        ("checkpoint-6", 6),
    ]
    assert not (out / "checkpoint-2").exists()
    six = next(m for m in _manifests(repo_url) if m.name == "checkpoint-6")
    assert six.kind == "dir" and six.role == "resumable"
    assert {"trainer_state.json", "optimizer.pt", "model.safetensors"} <= {f.path for f in six.files}

    fresh = tmp_path / "fresh-host"
    restored = restore_latest(repo_url, fresh)
    assert restored == fresh / "checkpoint-6"
    for name in ("optimizer.pt", "model.safetensors", "trainer_state.json"):
        assert (restored / name).read_bytes() == (out / "checkpoint-6" / name).read_bytes()
    seen = FirstStep()
    second = _trainer(fresh, 8, [seen, CkptSyncCallback(repo_url)])
    second.train(resume_from_checkpoint=True)
    assert seen.first == 7, "did not continue from step 6"
    assert second.state.global_step == 8
    assert "checkpoint-8" in {m.name for m in _manifests(repo_url)}


def test_restore_latest_on_an_empty_repository_starts_fresh(tmp_path, key, repo_url):
    from ckpt_sync.hf import restore_latest

    assert restore_latest(repo_url, tmp_path / "out") is None


def test_the_best_checkpoint_is_tagged_best(tmp_path, key, repo_url):
    from ckpt_sync.hf import CkptSyncCallback

    trainer = _trainer(
        tmp_path / "run",
        4,
        [CkptSyncCallback(repo_url)],
        eval_strategy="steps",
        eval_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        eval_dataset=TokenData(n=8),
    )
    trainer.train()
    best = os.path.basename(trainer.state.best_model_checkpoint)
    tagged = {m.name for m in _manifests(repo_url) if "best" in m.tags}
    assert best in tagged
    by_name = {m.name: m for m in _manifests(repo_url)}
    assert by_name[best].extra["best_metric"] == pytest.approx(trainer.state.best_metric)
