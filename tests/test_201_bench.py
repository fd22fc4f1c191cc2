"""201-space bench.py: one JSON line with the step time, peak memory and weight count."""

import json

from conftest import run_script


def test_bench_prints_one_json_line(load_space):
    model_search = load_space("201-space", "model_search")
    result = run_script(
        "201-space",
        "bench.py",
        "--device",
        "cpu",
        "--init_channels",
        "4",
        "--layers",
        "1",
        "--batch_size",
        "4",
        "--steps",
        "1",
        "--threads",
        "1",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["s_per_step"] > 0 and report["peak_mem_mb"] > 0
    expected = sum(p.numel() for p in model_search.Network(4, 1, 10, 1).weights())
    assert report["params"] == expected == 25054
    assert report["config"] == "C=4,N=1,k=1,batch=4,dirichlet"
