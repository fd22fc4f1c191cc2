"""Progressive search of the 201 space: stage hand-over, exact resume in either stage, outputs."""

import math
import re
import shutil

import pytest
import torch

from conftest import TINY_201, read_history, refusal, run_script

TINY = [*TINY_201, "--report_freq", "100"]


def test_enter_stage_widens_every_tensor_and_carries_momentum(load_space):
    ts, ms, architect_module = load_space("201-space", "train_search", "model_search", "architect")
    torch.manual_seed(0)
    args = ts.get_parser(progressive=True).parse_args(["--init_channels", "8"])  # stage 2: k 2, 3 ops kept
    model = ms.Network(C=8, N=1, num_classes=10, k=4)
    architect, optimizer = architect_module.Architect(model, args), ts.sgd(model, args, 0.025)
    for _ in range(2):  # two search steps, so that every weight has an SGD momentum buffer
        batch = (torch.randn(4, 3, 8, 8), torch.randint(10, (4,)))
        ts.search_step(model, architect, optimizer, model.weights(), batch, batch, 0.025, 5.0)
    old_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    old_buffers = {n: b.clone() for n, b in model.named_buffers()}
    params = [(n, p) for n, p in model.named_parameters() if n != "beta"]
    old_momentum = {n: optimizer.state[p]["momentum_buffer"].clone() for n, p in params}
    beta, lr = model.beta, optimizer.param_groups[0]["lr"]
    new_opt = ts.enter_stage(model, optimizer, 1, args)
    assert model.k == 2 and model.beta is beta, "beta keeps its identity (and so its Adam state)"
    assert architect.optimizer.state[beta]["exp_avg"].shape == beta.shape
    assert [g["lr"] for g in new_opt.param_groups] == pytest.approx([lr]), "the learning rate is handed over"
    assert all(len(kept) == 3 for kept in model.kept)
    checked = 0
    for name, module in model.named_modules():
        if not isinstance(module, ms.MixedOp):
            continue
        assert module.kept == model.kept[int(name.split(".")[-1])] and len(module.ops) == 3
        for o, op in zip(module.kept, module.ops):
            if not hasattr(op, "op"):
                continue  # parameter-free ops
            prefix = f"{name}.ops.{o}.op"  # before pruning, op o of PRIMITIVES was the edge's o-th
            conv, bn = op.op[1], op.op[2]
            old, new = module.C // 4, module.C // 2
            assert conv.weight.shape[:2] == (new, new) and bn.running_mean.shape == (new,)
            old_w = old_params[f"{prefix}.1.weight"]  # (old, old, kh, kw)
            assert torch.equal(conv.weight[:old, :old], old_w), "existing channels are kept"
            # Each new channel c copies an old channel: find the map from the output rows.
            index = [next(j for j in range(old) if torch.equal(conv.weight[c, :old], old_w[j])) for c in range(new)]
            assert torch.equal(conv.weight, old_w[index][:, index])
            assert torch.equal(bn.running_mean, old_buffers[f"{prefix}.2.running_mean"][index])
            assert torch.equal(bn.running_var, old_buffers[f"{prefix}.2.running_var"][index])
            buf = new_opt.state[conv.weight]["momentum_buffer"]
            assert torch.equal(buf, old_momentum[f"{prefix}.1.weight"][index][:, index]), "momentum follows channels"
            checked += 1
    assert checked > 0
    # Every weight of the new optimizer is a live parameter with matching momentum shape.
    assert {id(p) for g in new_opt.param_groups for p in g["params"]} == {id(p) for p in model.weights()}
    model(torch.randn(2, 3, 8, 8)).sum().backward()


def test_resume_is_exact_from_either_stage(load_space, tmp_path, monkeypatch):
    tsp, utils, datasets = load_space("201-space", "train_search_progressive", "runkit.utils", "datasets")
    argv = TINY + "--stage_epochs 2 2 --warmup_epochs 1 --stage_k 4 2 --trajectory_samples 0".split()
    saves, real_save = [], utils.save_checkpoint

    def keep_every_epoch(state, path):
        real_save(state, path)
        shutil.copy(path, tmp_path / f"epoch{state['epoch']}.pt")
        saves.append(state["task"]["stage"])

    monkeypatch.setattr(utils, "save_checkpoint", keep_every_epoch)
    tsp.main(argv + ["--save", str(tmp_path / "full")])
    assert saves == [0, 0, 1, 1]
    full_ckpt = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    full = full_ckpt["task"]
    monkeypatch.setattr(utils, "save_checkpoint", real_save)
    # Warm-up: no architecture step in the first epoch of either stage, one per batch in the others.
    steps = -(-int(len(datasets.get_datasets("synthetic", None)[0]) * 0.5) // 32)  # train_portion 0.5, batch 32
    epochs = [torch.load(tmp_path / f"epoch{e}.pt", weights_only=True)["task"] for e in (1, 2, 3, 4)]
    adam_steps = [int(c["architect"]["state"][0]["step"]) if c["architect"]["state"] else 0 for c in epochs]
    assert adam_steps == [0, steps, steps, 2 * steps]
    assert int(full["architect"]["state"][0]["step"]) == (4 - 2) * steps, "(total - warm-up epochs) x steps"
    assert torch.equal(epochs[1]["model"]["beta"], epochs[2]["model"]["beta"]), "beta rests in stage 2's warm-up"
    # One cosine schedule over the 4 epochs of both stages, from 0.025 to 0.001.
    lrs = [record["lr"] for record in read_history(tmp_path / "full")]
    assert lrs == pytest.approx([0.001 + 0.024 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)], rel=1e-9)

    for epoch in (2, 3):  # 2: at the stage boundary (resume prunes and widens); 3: inside stage 2
        run_dir = tmp_path / f"resumed{epoch}"
        run_dir.mkdir()
        shutil.copy(tmp_path / f"epoch{epoch}.pt", run_dir / "checkpoint.pt")
        tsp.main(argv + ["--save", str(run_dir), "--resume", str(run_dir / "checkpoint.pt")])
        resumed_ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        resumed = resumed_ckpt["task"]
        assert resumed_ckpt["epoch"] == full_ckpt["epoch"] == 4 and resumed["model"].keys() == full["model"].keys()
        for key, value in full["model"].items():
            torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=1e-6, msg=key)
        for key in ("exp_avg", "exp_avg_sq"):
            want = full["architect"]["state"][0][key]
            torch.testing.assert_close(resumed["architect"]["state"][0][key], want, rtol=0, atol=1e-6)


def test_progressive_script_runs_both_stages_with_benchmark(tmp_path, nb201_table, load_space):
    run_dir = tmp_path / "run"
    argv = [*TINY, *"--stage_epochs 1 1 --warmup_epochs 0 --trajectory_samples 20".split(), "--benchmark", nb201_table]
    result = run_script("201-space", "train_search_progressive.py", *argv, "--save", run_dir)
    assert result.returncode == 0, result.stderr
    assert "stage 2/2: k=2, 3 ops kept per edge" in result.stdout
    records = read_history(run_dir)
    assert [r["stage"] for r in records] == [0, 1], "history.jsonl counts stages from 0, the log from 1"
    assert re.search(r"epoch 1/2 stage 1 lr .* epoch 2/2 stage 2 lr ", result.stdout, re.S), result.stdout
    for record in records:
        assert set(record["benchmark"]) >= {"cifar10", "cifar100", "ImageNet16-120"}
        assert record["benchmark_note"].endswith("not measured on synthetic")
        for summary in record["trajectory"].values():
            assert summary["min"] <= summary["median"] <= summary["max"]
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)["task"]
    widths = {v.shape[0] for k, v in ckpt["model"].items() if ".edges." in k and k.endswith("running_mean")}
    assert widths == {2, 4, 8}, "every op runs on C/k2 channels in stage 2 (C = 4, 8, 16 per stage)"
    assert (run_dir / "trajectory.png").stat().st_size > 10_000
    genotypes = load_space("201-space", "genotypes")
    arch = genotypes.load_arch(str(run_dir / "genotype.json"))
    assert all(len(kept) == 3 for kept in ckpt["kept"])
    assert [genotypes.PRIMITIVES.index(op) for op in arch.edge_ops()] == [
        max(kept, key=lambda o: ckpt["model"]["beta"][e, o]) for e, kept in enumerate(ckpt["kept"])
    ], "the final cell is the argmax of beta among the kept ops"


@pytest.mark.parametrize(
    "flags, message",
    [(["--stage_k", "2", "4"], "K2 must divide K1"), (["--stage_keep", "3", "4"], "--stage_keep must shrink")],
)
def test_bad_stage_schedule_is_refused(load_space, capsys, tmp_path, restore_logging, flags, message):
    tsp = load_space("201-space", "train_search_progressive")
    # The script's exit: `UserError` caught, one line, no traceback.
    assert message in refusal(capsys, tsp.main, *TINY, *flags, "--save", tmp_path / "run")
