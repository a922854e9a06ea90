"""kill -9 of ``watch`` at random points while a trainer saves and rotates: nothing lost, duplicated
or torn, and the repository verifies (tests/fault_campaign.py; the full run is marked slow)."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from fault_campaign import run_campaign


def test_a_few_kills_of_watch_lose_duplicate_and_tear_nothing(tmp_path, key):
    figures = run_campaign(tmp_path, kills=4, s3_share=0.0, interval=0.4)
    assert figures.kills >= 3 and figures.written >= 10, asdict(figures)
    assert figures.ok(), json.dumps(asdict(figures), indent=1)


@pytest.mark.slow
@pytest.mark.s3
def test_thirty_kills_half_against_s3_through_a_flaky_proxy(tmp_path, key):
    figures = run_campaign(tmp_path, kills=30, s3_share=0.5)
    print(json.dumps(asdict(figures), indent=1))
    assert figures.kills >= 25 and figures.kills_s3 >= 12, asdict(figures)
    assert figures.ok(), json.dumps(asdict(figures), indent=1)
