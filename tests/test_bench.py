"""bench.py of both folders: one JSON line (per configuration) with the step time, its two parts, peak memory and
weight count, its progress on stderr, and its one-line refusals."""

import argparse
import json
import subprocess

import pytest
import torch

from conftest import assert_one_line_error, run_script


def test_201_bench_prints_one_json_line_and_its_progress(load_space):
    model_search = load_space("201-space", "model_search")
    argv = "bench.py --device cpu --init_channels 4 --layers 1 --batch_size 4 --steps 3 --threads 1".split()
    result = run_script("201-space", *argv)
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


def test_201_each_part_of_a_step_is_timed_on_its_own_after_the_warm_up(load_space, monkeypatch, capsys):
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


def test_darts_small_search_config_prints_one_json_line_and_its_progress():
    """The small supernet (C=16, 8 cells, k=4: 299,578 weights, as the paper's code), one timed step."""
    result = run_script("DARTS-space", *"bench.py --device cpu --config small --steps 1 --warmup 0".split())
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.strip().splitlines()  # stdout holds the JSON line alone
    report = json.loads(line)
    assert (report["config"], report["C"], report["layers"], report["k"]) == ("small", 16, 8, 4)
    assert report["params"] == 299_578 and report["ops_per_edge"] == 7 and report["lean_ops"] == "on"
    assert report["s_per_weight_step"] > 0 and report["peak_mem_mb"] > 0
    # The search step is the sum of its printed parts (arithmetic, not timing), so never below its weight step.
    seconds, weight_seconds = report["s_per_step"], report["s_per_weight_step"]
    assert seconds == pytest.approx(report["s_per_arch_step"] + weight_seconds, abs=1e-9) and seconds >= weight_seconds
    assert report["images_per_s"] == pytest.approx(2 * 64 / seconds, abs=0.1), "both batches of a search step"
    # The paper's stage: 25 epochs of 391 steps, the first 10 weight-only.
    stage_h = 391 * (10 * weight_seconds + 15 * seconds) / 3600
    assert report["projected_h"] == pytest.approx(stage_h, abs=0.01)
    progress = result.stderr.strip().splitlines()
    assert progress[0].startswith("bench.py: small on ") and "0 warm-up and 1 timed steps" in progress[0]
    assert progress[1].startswith("bench.py: small: step 1/1 (timed) done, ") and progress[1].endswith(" s elapsed")


def test_darts_each_part_of_a_step_is_timed_on_its_own_after_the_warm_up(load_space, monkeypatch, capsys):
    """A clock that the parts move by known amounts: warm-up steps count nowhere, each part gets its own mean."""
    bench = load_space("DARTS-space", "bench")
    clock, calls = [0.0], []

    def part(name, seconds):
        def run():
            calls.append(name)
            step = (len(calls) - 1) // 2  # 0-based index of this call's step
            clock[0] += 100.0 if step < 1 else seconds * step  # the warm-up step is slow; then 1x, 2x

        return run

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    args, parts = argparse.Namespace(warmup=1, steps=2), {"arch": part("arch", 3.0), "weight": part("weight", 1.0)}
    seconds = bench.time_steps("small", parts, torch.device("cpu"), args)
    assert seconds == {"arch": 4.5, "weight": 1.5}  # the means of 3, 6 and 1, 2
    assert calls == ["arch", "weight"] * 3  # in order, each step
    err = capsys.readouterr().err
    assert "small: step 1/3 (warm-up) done, 200.0 s elapsed" in err
    assert "small: step 3/3 (timed) done, 212.0 s elapsed" in err


def test_each_configuration_runs_in_a_child_that_gets_gpu_only_when_given(load_space, monkeypatch, capsys):
    """The children write to the user's streams themselves; `--gpu` reaches them only when it was given."""
    bench, children = load_space("DARTS-space", "bench"), []

    def run(command, **kwargs):
        children.append((command, kwargs))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(bench.subprocess, "run", run)
    bench.main(["--device", "cpu", "--steps", "1"])
    configs = [command[command.index("--config") + 1] for command, _ in children]
    assert configs == "paper_stage1 paper_stage2 small eval".split()
    assert all("--gpu" not in command and kwargs == {} for command, kwargs in children)  # nothing captured
    assert "configuration 1/4: paper_stage1" in capsys.readouterr().err

    children.clear()  # a CUDA machine stood in for: the parent checks --device and --gpu before any child
    monkeypatch.setattr(bench.utils, "resolve_device", lambda name, gpu=None: torch.device("cuda", gpu or 0))
    bench.main(["--device", "cuda", "--gpu", "1", "--compile"])
    [(command, _)] = children  # --compile measures the eval configuration alone
    assert command[command.index("--gpu") + 1] == "1" and "--compile" in command


@pytest.mark.parametrize(
    "flags, expected", [(["--gpu", "0"], "--gpu 0"), (["--config", "small", "--compile"], "--compile")]
)  # --gpu off CUDA, before any child; --compile of a search configuration
def test_gpu_off_cuda_and_compile_of_a_search_config_are_one_line(flags, expected):
    result = run_script("DARTS-space", "bench.py", "--device", "cpu", *flags)
    assert_one_line_error(result.returncode, result.stderr, expected)
