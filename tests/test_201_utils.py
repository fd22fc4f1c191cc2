"""201-space/utils.py: atomic checkpoints, the resumable batch stream and its sampler, meters and top-k accuracy."""

import json
import os
import random
import warnings
from itertools import islice

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from conftest import forbid_host_reads


def test_save_checkpoint_is_atomic_round_trips_with_the_rng_state_and_load_errors_are_user_errors(load_space, tmp_path):
    utils = load_space("201-space", "runkit.utils")
    utils.set_seed(5)
    state = {
        "epoch": 3, "model": {"w": torch.randn(3, 4), "n": torch.tensor(7)}, "args": {"lr": 0.1, "name": "x"},
        "rng": utils.rng_state(), "train_stream": [1, 2],
    }  # fmt: skip
    path = tmp_path / "checkpoint.pt"
    utils.save_checkpoint(state, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no .tmp left over
    expected = (random.random(), np.random.rand(), torch.rand(3))
    back = utils.load_checkpoint(path)
    assert back["epoch"] == 3 and back["args"] == state["args"] and back["train_stream"] == [1, 2]
    for key, t in state["model"].items():
        assert torch.equal(back["model"][key], t)
    utils.set_rng_state(back["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
    state["epoch"] = 4  # overwriting replaces the file in one go
    utils.save_checkpoint(state, path)
    assert utils.load_checkpoint(path)["epoch"] == 4 and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    # A missing or unreadable file is a one-line error.
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage" * 20)
    (tmp_path / "odd.pt").write_bytes(b"\x80\xe3" + b"garbage" * 20)  # torch warns of an unknown pickle protocol 227
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")  # a valid torch file, but not a checkpoint
    cases = {"missing.pt": "no such file", "bad.pt": "not a readable checkpoint"}
    cases |= {"odd.pt": "not a readable checkpoint", "tensor.pt": "not a readable checkpoint"}
    for name, message in cases.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(utils.UserError, match=message):
                utils.load_checkpoint(tmp_path / name)
        assert not caught, f"{name}: the one-line error only, no warning before it"


@pytest.mark.parametrize("space", ["201-space", "DARTS-space"])
def test_save_checkpoint_goes_through_a_temporary_file_so_a_failed_write_keeps_the_previous_one(
    load_space, tmp_path, monkeypatch, space
):
    """os.replace of <path>.tmp: a write dying midway leaves the previous checkpoint loadable, no .tmp left."""
    utils, path = load_space(space, "runkit.utils"), tmp_path / "checkpoint.pt"
    replaced, real_replace = [], os.replace

    def recording_replace(source, target):
        replaced.append((str(source), str(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", recording_replace)
    utils.save_checkpoint({"epoch": 1, "w": torch.arange(5.0)}, path)
    assert replaced == [(f"{path}.tmp", str(path))]

    class DiesMidway:  # the temporary file, whose disk fills after the start of a torch file
        def __init__(self, path, mode):
            self.file = open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            self.file.write(bytes(data)[:100])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(utils, "open", DiesMidway, raising=False)
    with pytest.raises(utils.UserError, match=f"cannot write {path}: No space left on device"):
        utils.save_checkpoint({"epoch": 2, "w": torch.zeros(5)}, path)
    monkeypatch.undo()
    back = utils.load_checkpoint(path)
    assert back["epoch"] == 1 and torch.equal(back["w"], torch.arange(5.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_stream_resumes_exactly_from_a_position_its_passes_cover_the_data_and_reshuffle_unless_told_not_to(load_space):
    streams, ds = load_space("201-space", "runkit.streams"), TensorDataset(torch.arange(23), torch.arange(23) * 10)
    stream = streams.Stream(ds, batch_size=4, seed=3)
    assert len(stream) == stream.batches_per_pass == 6  # ceil(23 / 4)
    for n in (0, 3, 6, 8, 13):
        stream = streams.Stream(ds, batch_size=4, seed=3)
        for _ in range(n):
            next(stream)
        pos = stream.position()
        assert pos == [n // 6, n % 6]
        resumed = streams.Stream(ds, batch_size=4, seed=3, position=tuple(pos))
        for _ in range(8):  # crosses a pass boundary
            a, b = next(stream), next(resumed)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert stream.position() == resumed.position()
    stream, passes = streams.Stream(ds, batch_size=4, seed=3), []
    for _ in range(3):
        batches = list(islice(stream, len(stream)))
        assert [len(b[0]) for b in batches] == [4, 4, 4, 4, 4, 3]
        order = torch.cat([b[0] for b in batches])
        assert sorted(order.tolist()) == list(range(23))
        passes.append(order.tolist())
    assert passes[0] != passes[1] and passes[1] != passes[2]
    # The order depends only on (seed, pass): a second stream repeats it; another seed does not.
    again = streams.Stream(ds, batch_size=4, seed=3)
    assert torch.cat([b[0] for b in islice(again, 6)]).tolist() == passes[0]
    other = streams.Stream(ds, batch_size=4, seed=4)
    assert torch.cat([b[0] for b in islice(other, 6)]).tolist() != passes[0]
    ten = TensorDataset(torch.arange(10), torch.arange(10) * 10)
    stream = streams.Stream(ten, batch_size=3, seed=0, shuffle=False)  # without shuffle: in order
    assert torch.cat([b[0] for b in islice(stream, 4)]).tolist() == list(range(10))


@pytest.mark.parametrize("n, world", [(23, 1), (23, 2), (23, 4), (24, 3)])
def test_epoch_sampler_rank_sharding_covers_all_indices(load_space, n, world):
    streams = load_space("201-space", "runkit.streams")
    shards = [list(streams.EpochSampler(n, seed=7, rank=r, world_size=world)) for r in range(world)]
    per_rank = -(-n // world)
    assert all(len(s) == per_rank for s in shards)
    assert all(len(streams.EpochSampler(n, 7, rank=r, world_size=world)) == per_rank for r in range(world))
    flat = [i for s in shards for i in s]
    assert set(flat) == set(range(n)) and len(flat) - n == per_rank * world - n  # only the padding repeats
    sampler = streams.EpochSampler(n, seed=7, rank=0, world_size=world)  # offsets continue the same pass
    sampler.set_position(0, 2)
    assert list(sampler) == shards[0][2:] and len(sampler) == per_rank - 2


def test_meter_sums_loss_top1_top5_on_the_device(load_space):
    """progress.Meter: loss weighted by batch size, top-1 and top-5 in %, nothing read until result()."""
    progress = load_space("201-space", "runkit.progress")
    # Targets 0 (top-1), 1 (rank 5: top-5 only), 5 (rank 6: neither), 3 (top-1).
    output = torch.tensor([[0.9, 0.1, 0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]])
    output, target = torch.cat([output, torch.eye(6)[3:4]]), torch.tensor([0, 1, 5, 3])
    meter = progress.Meter(torch.device("cpu"))
    with forbid_host_reads():
        meter.update(output, target, torch.tensor(2.0, requires_grad=True) * 1)
        # A non-contiguous view works, and fewer than 5 classes cap top-5 at all of them.
        meter.update(output.t().contiguous().t()[:2], target[:2], torch.tensor(5.0))
    result = meter.result()
    assert result["loss"] == pytest.approx((2.0 * 4 + 5.0 * 2) / 6)
    assert result["acc"] == pytest.approx(100 * 3 / 6) and result["top5"] == pytest.approx(100 * 5 / 6)
    small = progress.Meter(torch.device("cpu"))
    small.update(output[:, :4], torch.tensor([0, 1, 2, 3]), torch.tensor(1.0))
    assert small.result()["top5"] == pytest.approx(100.0)
    # The sums are what a mid-epoch checkpoint stores; a meter rebuilt from them continues exactly.
    again = progress.Meter(torch.device("cpu"), meter.sums.tolist())
    assert again.result() == result


def test_history_is_strict_json_and_drops_epochs_past_a_resume_and_seconds_read_as_clock_time(load_space, tmp_path):
    utils = load_space("201-space", "runkit.utils")
    history = utils.History(tmp_path)
    history.append({"epoch": 0, "valid_loss": float("nan"), "nested": {"x": [1.5, float("inf")]}})
    history.append({"epoch": 1, "valid_loss": 0.5})
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert "NaN" not in lines[0] and "Infinity" not in lines[0]
    assert json.loads(lines[0], parse_constant=lambda name: pytest.fail(f"{name} in history.jsonl")) == {
        "epoch": 0, "valid_loss": None, "nested": {"x": [1.5, None]},
    }  # fmt: skip
    utils.History(tmp_path, start_epoch=1)
    assert [json.loads(line)["epoch"] for line in (tmp_path / "history.jsonl").read_text().splitlines()] == [0]
    assert utils.format_seconds(3725) == "1:02:05"


def test_set_deterministic_fixes_kernels_and_the_cublas_workspace(load_space, monkeypatch):
    utils = load_space("201-space", "runkit.utils")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    try:
        utils.set_deterministic()
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.benchmark is False and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
        utils.set_deterministic()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8", "the user's own setting stays"
    finally:
        torch.use_deterministic_algorithms(False)
