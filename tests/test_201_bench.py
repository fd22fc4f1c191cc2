"""201-space bench.py: one JSON line with the step time, its two parts, peak memory and weight count."""

import json

import pytest
import torch

from conftest import run_script


def test_bench_prints_one_json_line_and_its_progress(load_space):
    model_search = load_space("201-space", "model_search")
    result = run_script(
        *"201-space bench.py --device cpu --init_channels 4 --layers 1 --batch_size 4 --steps 3 --threads 1".split(),
    )
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.strip().splitlines()  # stdout holds the JSON line alone
    report = json.loads(line)
    assert report["s_per_step"] > 0 and report["peak_mem_mb"] > 0
    # The step is the sum of its printed parts (arithmetic, not timing), so never below its weight step.
    assert report["s_per_step"] == pytest.approx(report["s_per_arch_step"] + report["s_per_weight_step"], abs=1e-9)
    assert report["s_per_step"] >= report["s_per_weight_step"]
    expected = sum(p.numel() for p in model_search.Network(4, 1, 10, 1).weights())
    assert report["params"] == expected == 25054 and report["config"] == "C=4,N=1,k=1,batch=4,dirichlet"
    progress = result.stderr.strip().splitlines()
    assert "C=4,N=1,k=1,batch=4,dirichlet" in progress[0] and "2 warm-up and 3 timed" in progress[0]
    steps = [text for text in progress if " done, " in text and " s elapsed" in text]
    assert [text.split("step ")[1].split(" done")[0] for text in steps] == [
        "1/5 (warm-up)", "2/5 (warm-up)", "3/5 (timed)", "4/5 (timed)", "5/5 (timed)",
    ]  # fmt: skip


def test_each_part_of_a_step_is_timed_on_its_own_after_the_warm_up(load_space, monkeypatch, capsys):
    """A clock that the parts move by known amounts: warm-up steps count nowhere, each part gets its own mean."""
    bench = load_space("201-space", "bench")
    clock, calls = [0.0], []

    def part(name, seconds):
        def run(i):
            calls.append((name, i))
            clock[0] += 100.0 if i < 2 else seconds * (i - 1)  # warm-up steps are slow; then 1x, 2x, 3x

        return run

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    seconds = bench.time_steps({"arch": part("arch", 3.0), "weight": part("weight", 1.0)}, 2, 3, torch.device("cpu"))
    assert seconds == {"arch": 6.0, "weight": 2.0}  # the means of 3, 6, 9 and 1, 2, 3
    assert calls == [(name, i) for i in range(5) for name in ("arch", "weight")]  # in order, each step
    assert "step 5/5 (timed) done, 424.0 s elapsed" in capsys.readouterr().err
