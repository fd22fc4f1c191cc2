"""DARTS-space bench.py: one JSON line per configuration, and its one-line refusals."""

import json

import pytest

from conftest import assert_one_line_error, run_script


def test_small_search_config_prints_one_json_line():
    """The small supernet (C=16, 8 cells, k=4: 299,578 weights, as the paper's code), one timed step."""
    result = run_script(
        "DARTS-space", "bench.py", "--device", "cpu", "--config", "small", "--steps", "1", "--warmup", "0"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["config"], report["C"], report["layers"], report["k"]) == ("small", 16, 8, 4)
    assert report["params"] == 299_578 and report["ops_per_edge"] == 7 and report["lean_ops"] == "on"
    assert report["s_per_step"] > report["s_per_weight_step"] > 0 and report["peak_mem_mb"] > 0
    seconds, weight_seconds = report["s_per_step"], report["s_per_weight_step"]
    assert report["images_per_s"] == pytest.approx(2 * 64 / seconds, abs=0.1), "both batches of a search step"
    # The paper's stage: 25 epochs of 391 steps, the first 10 weight-only.
    stage_h = 391 * (10 * weight_seconds + 15 * seconds) / 3600
    assert report["projected_h"] == pytest.approx(stage_h, abs=0.01)


def test_compile_of_a_search_config_is_one_line():
    result = run_script("DARTS-space", "bench.py", "--device", "cpu", "--config", "small", "--compile")
    assert_one_line_error(result.returncode, result.stderr, "--compile")
