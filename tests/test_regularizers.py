"""A regulariser on beta is one entry of `architect.REGULARIZERS`."""

import json
from argparse import Namespace

import pytest
import torch

from conftest import TINY_201

SEARCH = {
    "201-space": [*TINY_201, "--epochs", "1", "--benchmark", "none"],
    "DARTS-space": (
        "--dataset synthetic --layers 3 --init_channels 8 --batch_size 4 --device cpu --stage_epochs 1 1 --stage_k 4 2 "
        "--warmup_epochs 0 --workers 0 --image_size 16"
    ).split(),
}


@pytest.mark.parametrize("space", ["201-space", "DARTS-space"])
@pytest.mark.parametrize("unrolled", [False, True], ids=["first-order", "unrolled"])
def test_a_new_regulariser_is_one_table_entry(load_space, monkeypatch, tmp_path, restore_logging, space, unrolled):
    architect, train_search = load_space(space, "architect", "train_search")
    monkeypatch.setitem(architect.REGULARIZERS, "l1", lambda model: sum(b.abs().sum() for b in model.arch_parameters()))
    steps, real_step = [], architect.Architect.step

    def recording_step(self, *batches):
        """The real step twice on the same draws: without the term (no update), then with it."""
        grads, update, rng = {}, self.optimizer.step, torch.get_rng_state()

        def capture(key):
            grads[key] = [p.grad.clone() for p in self.model.arch_parameters()]

        beta = [p.detach().clone() for p in self.model.arch_parameters()]
        self.optimizer.step, scale, self.reg_scale = (lambda: capture("plain")), self.reg_scale, 0.0
        real_step(self, *batches)
        torch.set_rng_state(rng)
        self.optimizer.step, self.reg_scale = (lambda: (capture("with"), update())), scale
        real_step(self, *batches)
        self.optimizer.step = update
        # The gradient the architect forms is the loss's plus reg_scale * sign(beta), first or second order.
        expected = [g + 0.25 * b.sign() for g, b in zip(grads["plain"], beta)]
        steps.append(all(torch.allclose(w, e, rtol=1e-5, atol=1e-7) for w, e in zip(grads["with"], expected)))

    monkeypatch.setattr(architect.Architect, "step", recording_step)
    flags = [*SEARCH[space], "--reg_type", "l1", "--reg_scale", "0.25", "--max_steps_per_epoch", "2"]
    train_search.main([*flags, *(["--unrolled"] if unrolled else []), "--save", str(tmp_path / "run")])
    assert steps and all(steps), "the architect took steps with the l1 term's gradient"
    assert json.loads((tmp_path / "run" / "args.json").read_text())["reg_type"] == "l1"


@pytest.mark.parametrize("space", ["201-space", "DARTS-space"])
def test_l2_is_the_papers_adam_weight_decay(load_space, space):
    """The l2 term's gradient is reg_scale * beta, what the paper's Adam(weight_decay=reg_scale) adds."""
    architect, model_search = load_space(space, "architect", "model_search")
    torch.manual_seed(0)
    model = model_search.Network(8, 10, 3, k=2) if space == "DARTS-space" else model_search.Network(4, 1, 10)
    with torch.no_grad():
        for b in model.arch_parameters():
            b.normal_()
    grads = architect.regularizer_grads(model, "l2", 1e-3)
    for g, b in zip(grads, model.arch_parameters()):
        torch.testing.assert_close(g, 1e-3 * b.detach(), rtol=1e-6, atol=0)
    args = dict(unrolled=False, reg_type="l2", reg_scale=1e-3, momentum=0.9, weight_decay=3e-4, arch_learning_rate=6e-4)
    groups = architect.Architect(model, Namespace(**args)).optimizer.param_groups
    assert all(group["weight_decay"] == 0 for group in groups)
