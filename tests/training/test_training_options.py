"""CheckpointManager's options as groups: every loose keyword still works with its old default, a
group given whole does the same as its keywords, and a group with one of its keywords is refused."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from training_helpers import train

from ckpt_sync.errors import ConfigError, UsageError
from ckpt_sync.training import (
    AsyncWrites,
    BestMetric,
    CheckpointManager,
    Emergency,
    EveryNSteps,
    LocalRetention,
    RemoteSync,
    Triggers,
)
from ckpt_sync.training.options import GROUP_KEYWORDS, UNSET

# The constructor's defaults before the options became groups: a manager built without options has them.
OLD_DEFAULTS: dict[str, Any] = {
    "interval_s": 180,
    "every_n_steps": None,
    "trigger": None,
    "full_every": None,
    "max_keep": 5,
    "retention": None,
    "rotation": "FIFO",
    "backup_dir": None,
    "async_save": True,
    "reuse_snapshot_buffers": True,
    "if_busy": "wait",
    "repo": None,
    "key_file": None,
    "remote_keep": None,
    "remote_retention": None,
    "direct": False,
    "handle_signals": True,
    "on_signal": "raise",
    "exit_code": None,
    "pid_file": None,
}


def _groups(mgr: CheckpointManager) -> dict[str, Any]:
    return {name: getattr(mgr, name) for name in GROUP_KEYWORDS.values()}


def test_every_grouped_keyword_belongs_to_one_group_and_keeps_its_old_default(tmp_path: Path) -> None:
    grouped = [k for cls in GROUP_KEYWORDS for k in cls.KEYWORDS]
    assert len(grouped) == len(set(grouped))  # no keyword in two groups
    params = inspect.signature(CheckpointManager).parameters
    assert {k for k, p in params.items() if p.default is UNSET} == set(grouped) == set(OLD_DEFAULTS) | {"best_metric"}
    assert set(GROUP_KEYWORDS.values()) <= set(params)

    import torch

    with CheckpointManager(tmp_path, model=torch.nn.Linear(2, 2)) as mgr:
        for cls, name in GROUP_KEYWORDS.items():
            group = getattr(mgr, name)
            assert group == cls()
            for keyword, field in cls.KEYWORDS.items():
                if keyword != "best_metric":
                    assert getattr(group, field) == OLD_DEFAULTS[keyword], keyword
        assert mgr.triggers.best_metric == BestMetric()


def test_groups_given_whole_save_and_rotate_as_their_loose_keywords_do(
    tmp_path: Path, tiny: Callable[..., tuple]
) -> None:
    kept = []
    for how in ("keywords", "groups"):
        options: dict[str, Any] = (
            {"interval_s": None, "every_n_steps": 2, "max_keep": 2, "async_save": False, "handle_signals": False}
            if how == "keywords"
            else {
                "triggers": Triggers(interval_s=None, every_n_steps=2),
                "local_retention": LocalRetention(max_keep=2),
                "async_writes": AsyncWrites(enabled=False),
                "emergency": Emergency(handle_signals=False),
            }
        )
        model, opt, sched = tiny()
        with CheckpointManager(
            tmp_path / how, model=model, optimizer=opt, scheduler=sched, session_id="s", **options
        ) as mgr:
            saved = [step for step in range(1, 8) if (train(model, opt, sched), mgr.maybe_save(step, 0))[1]]
        assert saved == [2, 4, 6]
        kept.append(sorted(p.name for p in (tmp_path / how).glob("checkpoint_*.pt")))
    assert kept[0] == kept[1] == ["checkpoint_s_4.pt", "checkpoint_s_6.pt"]


@pytest.mark.parametrize(
    ("group", "keyword"),
    [
        ("triggers", {"interval_s": 180}),  # the old default, given: still a second answer to the same question
        ("triggers", {"trigger": EveryNSteps(3)}),
        ("local_retention", {"retention": None}),
        ("async_writes", {"async_save": False}),
        ("remote_sync", {"repo": "file:///nowhere"}),
        ("emergency", {"on_signal": "exit"}),
    ],
)
def test_a_group_together_with_one_of_its_keywords_is_a_usage_error(
    tmp_path: Path, group: str, keyword: dict[str, Any]
) -> None:
    import torch

    cls = next(c for c, name in GROUP_KEYWORDS.items() if name == group)
    [name] = keyword
    with pytest.raises(UsageError, match=rf"either {group}={cls.__name__}\(\.\.\.\) or {name}=, not both"):
        CheckpointManager(tmp_path, model=torch.nn.Linear(2, 2), **{group: cls()}, **keyword)
    assert not list(tmp_path.iterdir())  # refused before anything was made


def test_a_group_checks_its_values_when_built_with_the_constructors_errors() -> None:
    with pytest.raises(UsageError, match="full_every must be at least 1"):
        Triggers(full_every=0)
    with pytest.raises(ValueError, match="every_n_steps must be at least 1"):
        Triggers(every_n_steps=-1)
    with pytest.raises(ConfigError, match="only FIFO"):
        LocalRetention(rotation="LIFO")
    with pytest.raises(UsageError, match="max_keep must be at least 1"):
        LocalRetention(max_keep=0)
    with pytest.raises(UsageError, match="if_busy must be 'wait' or 'skip'"):
        AsyncWrites(if_busy="later")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="on_signal must be 'raise' or 'exit'"):
        Emergency(on_signal="ignore")  # type: ignore[arg-type]
    assert Triggers(best_metric=None) == Triggers()  # type: ignore[arg-type]  # None: the default, as before
    assert RemoteSync().remote_keep is None


def test_a_group_keyword_takes_only_its_group(tmp_path: Path) -> None:
    import torch

    with pytest.raises(UsageError, match="remote_sync= takes a RemoteSync, not str"):
        CheckpointManager(tmp_path, model=torch.nn.Linear(2, 2), remote_sync="file:///x")  # type: ignore[arg-type]


def test_from_config_a_group_given_whole_wins_over_the_files_settings_of_that_group(
    tmp_path: Path, tiny: Callable[..., tuple]
) -> None:
    toml = tmp_path / "ckpt.toml"
    toml.write_text("[checkpoint_config]\ninterval = 60\nmax_keep = 2\nasync_save = false\n")
    model, opt, _ = tiny()
    with CheckpointManager.from_config(
        toml, tmp_path / "c", model=model, optimizer=opt, local_retention=LocalRetention(max_keep=3),
        every_n_steps=1, handle_signals=False,
    ) as mgr:  # fmt: skip
        for step in range(1, 6):
            mgr.maybe_save(step, 0)
        assert mgr.triggers == Triggers(interval_s=60, every_n_steps=1)  # the file, and the keyword beside it
        assert mgr.async_writes == AsyncWrites(enabled=False)  # the file's, untouched by the retention group
    assert len(list((tmp_path / "c").glob("checkpoint_*.pt"))) == 3  # the group's max_keep, not the file's
