"""The architecture update of DrNAS: Adam on `beta`, first or second order (`--unrolled`).

First order: grad_beta L_val(w, beta). Second order (DARTS' approximation):
  w' = w - lr * (grad_w L_train(w) + momentum * m + wd * w)
  grad = grad_beta L_val(w', beta) - lr * H v,   v = grad_w' L_val(w', beta)
with the Hessian-vector product H v = grad_beta grad_w L_train by central finite differences, eps = 0.01 / ||v||.
The virtual step is taken in place on the model's own weights and undone afterwards (partial channels, pruning kept).
"""

import contextlib

import torch
import torch.nn.functional as F

# --reg_type: name -> the term on beta (a function of the supernet) added to the arch loss times --reg_scale.
REGULARIZERS = {
    # ||beta||^2 / 2: its gradient times reg_scale is the (coupled) weight decay the paper's code gives Adam
    "l2": lambda model: sum(b.pow(2).sum() for b in model.arch_parameters()) / 2,
    "kl": lambda model: model.kl_regularizer(),  # KL(Dir(alpha) || Dir(1)) summed over the edges: DrNAS Sec. 3.1
}


def regularizer_grads(model, reg_type, reg_scale, budget=None):
    """d/d beta of `reg_scale * REGULARIZERS[reg_type](model)` (+ the `--cost` term), added to either order's."""
    loss = reg_scale * REGULARIZERS[reg_type](model)
    if budget is not None:
        loss = loss + budget.term(model)
    return torch.autograd.grad(loss, model.arch_parameters())


class Architect:
    """Owns the architecture optimizer and performs one architecture step."""

    def __init__(self, model, args, budget=None):
        self.model, self.budget = model, budget  # budget: the --cost term (runkit.budget.Budget), or None
        self.momentum, self.weight_decay = args.momentum, args.weight_decay
        self.unrolled, self.reg_type, self.reg_scale = args.unrolled, args.reg_type, args.reg_scale
        # No weight decay here: the regulariser is a term of the loss (REGULARIZERS).
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=args.arch_learning_rate, betas=(0.5, 0.999))

    def step(self, x_train, y_train, x_valid, y_valid, lr, w_optimizer):
        """One Adam step on beta; weights, their gradients and BN statistics are left untouched."""
        arch = self.model.arch_parameters()
        with batch_stats_only(self.model):
            if self.unrolled:
                grads = self._unrolled_grads(x_train, y_train, x_valid, y_valid, lr, w_optimizer)
            else:
                # Gradients w.r.t. beta only: autograd skips every weight gradient.
                grads = torch.autograd.grad(F.cross_entropy(self.model(x_valid), y_valid), arch)
        reg = regularizer_grads(self.model, self.reg_type, self.reg_scale, self.budget)
        for p, g, r in zip(arch, grads, reg):
            p.grad = g + r
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _unrolled_grads(self, x_train, y_train, x_valid, y_valid, lr, w_optimizer):
        weights, arch = self.model.weights(), self.model.arch_parameters()
        saved = [w.detach().clone() for w in weights]
        # One draw for every L_train (the finite difference compares one function at w +- eps v), a leaf needing a
        # gradient as every forward's draw (one compiled graph); beta's part is carried back through it at the end.
        mix_train = self.model.arch_weights()  # (6, n_kept), graph back to beta
        mix = mix_train.detach().requires_grad_(True)

        # Virtual SGD step w' (as the weight optimizer would take it).
        train_grads = self._grads(F.cross_entropy(self.model(x_train, mix), y_train), weights)
        with torch.no_grad():
            for w, g in zip(weights, train_grads):
                state = w_optimizer.state.get(w, {})
                step = g + self.weight_decay * w
                if "momentum_buffer" in state:
                    step = step + self.momentum * state["momentum_buffer"]
                w.sub_(lr * step)  # in place: the model itself now holds w'

        # Gradients of L_val at w' w.r.t. beta and w'.
        val_grads = self._grads(F.cross_entropy(self.model(x_valid), y_valid), arch + weights)
        d_arch, v = val_grads[: len(arch)], val_grads[len(arch) :]

        # Finite-difference Hessian-vector product around the original weights w, w.r.t. the draw, then to beta.
        eps = 0.01 / torch.sqrt(sum((g * g).sum() for g in v))
        d_mix = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for w, w0, g in zip(weights, saved, v):
                    w.copy_(w0 + sign * eps * g)
            d_mix.append(torch.autograd.grad(F.cross_entropy(self.model(x_train, mix), y_train), mix)[0])
        hvp = torch.autograd.grad(mix_train, arch, grad_outputs=(d_mix[0] - d_mix[1]) / (2 * eps))

        with torch.no_grad():  # back to w
            for w, w0 in zip(weights, saved):
                w.copy_(w0)
        return [da - lr * h for da, h in zip(d_arch, hvp)]

    @staticmethod
    def _grads(loss, params):
        """d loss / d params, zeros for parameters the loss does not reach."""
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@contextlib.contextmanager
def batch_stats_only(model):
    """BatchNorm's running statistics, which belong to the weights' training batches, are put back after the block
    (tracked meanwhile, so that under --compile its forwards are the weight step's graph, not one more variant)."""
    buffers = list(model.buffers())
    saved = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, b0 in zip(buffers, saved):
                b.copy_(b0)
