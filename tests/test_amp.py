"""`--amp` in both searches on the CPU."""

import argparse
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_201, assert_one_line_error, run_script

ARCH_ARGS = dict(unrolled=False, reg_type="kl", reg_scale=1e-3, momentum=0.9, weight_decay=3e-4)
ARCH_ARGS = argparse.Namespace(**ARCH_ARGS, arch_learning_rate=3e-4)


def supernet(load_space, space, size=32):
    """A tiny supernet of `space` in train mode and a fixed batch of images."""
    torch.manual_seed(0)
    model = load_space(space, "model_search").Network(*((8, 1, 10, 1) if space == "201-space" else (4, 10, 3, 1)))
    n = 16 if space == "201-space" else 8  # bf16 depthwise convs are slow on CPUs
    x, y = torch.randn(n, 3, size, size), torch.randint(10, (n,))
    return model.train(), x, y


def beta_gradient(model, x, y, amp):
    """d CE / d beta through one Dirichlet draw (seeded, so fp32 and bf16 see the same draw)."""
    model.amp = amp
    torch.manual_seed(1)
    logits = model(x)
    assert logits.dtype == torch.float32  # the loss is always taken in fp32
    grads = torch.autograd.grad(F.cross_entropy(logits, y), model.arch_parameters())
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("space", ["201-space", "DARTS-space"])
def test_amp_runs_the_cells_in_bf16_the_draw_in_fp32_and_its_beta_gradient_points_as_fp32(load_space, space):
    model, x, y = supernet(load_space, space)
    fp32, bf16 = beta_gradient(model, x, y, False), beta_gradient(model, x, y, True)
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    assert not torch.equal(fp32, bf16)  # the cells really ran in bf16
    assert F.cosine_similarity(fp32, bf16, dim=0) > 0.9
    model.amp, seen = True, []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1))
    conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    assert model.arch_weights().dtype == torch.float32
    model(x)
    assert seen and set(seen) == {torch.bfloat16}
    model.amp = False
    model(x)
    assert seen[-1] == torch.float32


@pytest.mark.parametrize("space", ["201-space", "DARTS-space"])
def test_bf16_search_steps_learn_with_fp32_states(load_space, space):
    model, x, y = supernet(load_space, space, size=16)
    architect, model.amp = load_space(space, "architect"), True
    arch, weights = architect.Architect(model, ARCH_ARGS), model.weights()
    optimizer = torch.optim.SGD(weights, 0.1, momentum=0.9)
    beta, losses = [b.detach().clone() for b in model.arch_parameters()], []
    for _ in range(20 if space == "201-space" else 8):  # the DARTS supernet fits the batch sooner
        arch.step(x, y, x, y, 0.1, optimizer)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward(inputs=weights)
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0], losses
    assert all(not torch.equal(b, a) for b, a in zip(beta, model.arch_parameters()))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    states = [t for group in (arch.optimizer.state, optimizer.state) for s in group.values() for t in s.values()]
    assert all(t.dtype == torch.float32 for t in states if torch.is_tensor(t) and t.is_floating_point())


@pytest.mark.parametrize("lean", [True, False])
def test_memory_saving_ops_under_autocast_match_the_plain_ops(load_space, lean):
    """SepConv (recomputing `DepthwisePointwise`) and max pool under bf16 autocast, lean or plain, vs fp32."""
    operations = load_space("DARTS-space", "operations")
    torch.manual_seed(0)
    probe = torch.randn(12, 12)
    for name in ("sep_conv_3x3", "dil_conv_5x5", "max_pool_3x3"):
        op = operations.search_op(name, 8, 2).train()
        for module in op.modules():
            if hasattr(module, "lean"):
                module.lean = lean
        x = torch.randn(4, 8, 12, 12, requires_grad=True)
        scale, results = torch.tensor(0.7, requires_grad=True), []
        for amp in (False, True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                out = op(F.relu(x) if op.expects_relu else x, scale)
            inputs = [x, scale, *op.parameters()]
            # A fixed random projection: a plain sum or norm of a BatchNorm output has no x gradient.
            grads = torch.autograd.grad((out.float() * probe[: out.shape[-1], : out.shape[-1]]).sum(), inputs)
            assert all(g.dtype == i.dtype for g, i in zip(grads, inputs)), name  # fp32 gradients for fp32 leaves
            results.append((out.float(), grads))
        (out32, grads32), (out16, grads16) = results
        torch.testing.assert_close(out16, out32, atol=0.05, rtol=0.05)
        for g16, g32 in zip(grads16, grads32):
            assert F.cosine_similarity(g16.flatten(), g32.flatten(), dim=0) > 0.98, name


def test_lean_ops_off_computes_the_same_supernet(load_space):
    model, x, y = supernet(load_space, "DARTS-space")
    results = []
    for lean in (True, False):
        model.use_lean_ops(lean)
        assert {m.lean for m in model.modules() if hasattr(m, "lean")} == {lean}
        results.append(beta_gradient(model, x, y, False))
    torch.testing.assert_close(results[0], results[1], atol=1e-6, rtol=1e-4)


DARTS_SEARCH = """--dataset synthetic --layers 3 --init_channels 8 --batch_size 8 --stage_epochs 1 1 --stage_k 4 2
--warmup_epochs 0 --max_steps 3 --device cpu --workers 0 --lean_ops off --image_size 16""".split()


@pytest.mark.parametrize("space", ["201-space", "DARTS-space"])
def test_search_script_with_amp_learns(tmp_path, load_space, space):
    """With bf16 units the search learns under --amp (DARTS: plain ops); without, --amp is refused before writing."""
    save = tmp_path / "run"
    flags = [*TINY_201, "--epochs", "3", "--benchmark", "none"] if space == "201-space" else DARTS_SEARCH
    result = run_script(space, "train_search.py", *flags, "--amp", "--save", save)
    if not load_space(space, "runkit.accel").cpu_has_bf16():
        assert_one_line_error(result.returncode, result.stderr, "--amp on a CPU without bf16 units")
        assert not save.exists()
        return
    assert result.returncode == 0, result.stderr
    history = [json.loads(line) for line in (save / "history.jsonl").read_text().splitlines()]
    if space == "201-space":
        assert history[-1]["train_loss"] < history[0]["train_loss"] and (save / "genotype.json").is_file()
        assert json.loads((save / "args.json").read_text())["amp"] is True
    else:  # beta moved away from its start near 0
        assert [h["stage"] for h in history] == [0, 1] and all(h["alpha_max"] > 1.0 for h in history)
