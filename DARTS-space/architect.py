"""The architecture update of DrNAS: Adam on beta, first order or DARTS second order (not a script).

`Architect(model, args).step(...)` takes one step on beta with a held-out batch (gradient clipped to `grad_clip` when
given, as in the paper's ImageNet search), a regulariser of `REGULARIZERS` added. First order (default): the weights
are frozen for the pass. Second order (`--unrolled`, DARTS Eq. 7-8): with w' = w - lr * (g_train + momentum * m +
wd * w), grad_beta L_val(w', beta) - lr * H dw', H dw' a central finite difference (eps = 0.01 / ||dw'||), computed on
the model itself (weights swapped in and out, BatchNorm statistics restored): no copy is built.
"""

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

# --reg_type: name -> a term on beta (a function of the supernet), added to beta's loss times --reg_scale.
REGULARIZERS = {
    # reg_scale * ||beta||^2 / 2: its gradient, reg_scale * beta, is the (coupled) Adam weight decay of the paper.
    "l2": lambda model: sum(b.pow(2).sum() for b in model.arch_parameters()) / 2,
    # KL(Dir(alpha) || Dir(1)) summed over the edges: the prior of DrNAS Sec. 3.1.
    "kl": lambda model: model.kl_regularizer(),
}


def regularizer_grads(model, reg_type, reg_scale, budget=None):
    """The gradient w.r.t. each architecture parameter of `reg_scale * REGULARIZERS[reg_type](model)`, plus the
    `budget`'s term when given (`--cost`). They do not depend on the weights: they add to either order's gradient."""
    loss = reg_scale * REGULARIZERS[reg_type](model)
    if budget is not None:
        loss = loss + budget.term(model)
    return torch.autograd.grad(loss, model.arch_parameters())


@contextmanager
def frozen(params):
    """`params` need no gradients in a pass: convs skip their weight-gradient kernel, lean ops their recomputation."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


class Architect:
    """One Adam step on `model.arch_parameters()` per call of `step`."""

    def __init__(self, model, args, budget=None, reduce_grads=None, grad_clip=None):
        self.model, self.budget = model, budget  # budget: the --cost term (runkit.budget.Budget), or None
        self.unrolled, self.reg_type, self.reg_scale = args.unrolled, args.reg_type, args.reg_scale
        self.momentum, self.weight_decay = args.momentum, args.weight_decay
        # reduce_grads(arch params): their mean gradient over the torchrun ranks; grad_clip: the ImageNet search's.
        self.reduce_grads, self.grad_clip = reduce_grads, grad_clip
        # No weight decay here: the regulariser is a term of the loss (REGULARIZERS).
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=args.arch_learning_rate, betas=(0.5, 0.999))

    def step(self, x_train, y_train, x_valid, y_valid, lr, w_optimizer):
        """Update beta from a validation batch (and a training batch when unrolled)."""
        arch = self.model.arch_parameters()
        if self.unrolled:
            grads = self._unrolled_grads(x_train, y_train, x_valid, y_valid, lr, w_optimizer)
        else:
            with frozen(self.model.weights()):
                loss = F.cross_entropy(self.model(x_valid), y_valid)
                grads = torch.autograd.grad(loss, arch)
        reg = regularizer_grads(self.model, self.reg_type, self.reg_scale, self.budget)
        for p, g, r in zip(arch, grads, reg):
            p.grad = g + r
        if self.reduce_grads is not None:
            self.reduce_grads(arch)
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(arch, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _unrolled_grads(self, x_train, y_train, x_valid, y_valid, lr, w_optimizer):
        model, weights = self.model, self.model.weights()
        buffers = [b.detach().clone() for b in model.buffers()]  # BatchNorm statistics
        original = [w.detach().clone() for w in weights]

        # One draw for the training loss, for the virtual step and both sides of the finite difference (fresh draws
        # would swamp the tiny difference).
        mix_train = model.arch_weights()  # (2, 14, n_kept), graph back to beta
        mix_fixed = mix_train.detach()

        # Virtual step w' = w - lr * (g + momentum * m + wd * w), like the SGD step.
        g_train = torch.autograd.grad(F.cross_entropy(model(x_train, mix_fixed), y_train), weights)
        with torch.no_grad():
            for w, g in zip(weights, g_train):
                buf = w_optimizer.state.get(w, {}).get("momentum_buffer")
                step = g + self.weight_decay * w
                if buf is not None:
                    step = step + self.momentum * buf
                w.sub_(lr * step)

        # L_val at w': gradient w.r.t. beta (through a fresh draw) and w.r.t. w'.
        arch = model.arch_parameters()
        loss_valid = F.cross_entropy(model(x_valid), y_valid)
        grads = torch.autograd.grad(loss_valid, arch + weights)
        d_arch, d_weights = grads[: len(arch)], grads[len(arch) :]

        # H dw' = (grad_beta L_train(w + eps dw') - grad_beta L_train(w - eps dw')) / 2 eps, via the draw (fixed).
        eps = 0.01 / torch.cat([d.reshape(-1) for d in d_weights]).norm()
        d_mix = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for w, w0, d in zip(weights, original, d_weights):
                    w.copy_(w0 + sign * eps * d)
            mix = mix_fixed.clone().requires_grad_(True)
            with frozen(weights):
                d_mix.append(torch.autograd.grad(F.cross_entropy(model(x_train, mix), y_train), mix)[0])
        hvp = torch.autograd.grad(mix_train, arch, grad_outputs=(d_mix[0] - d_mix[1]) / (2 * eps))

        # Put the real weights and BatchNorm statistics back: the unrolled model was virtual.
        with torch.no_grad():
            for w, w0 in zip(weights, original):
                w.copy_(w0)
            for b, b0 in zip(model.buffers(), buffers):
                b.copy_(b0)
        return [da - lr * h for da, h in zip(d_arch, hvp)]
