"""The DARTS-space networks, ImageNet settings and schedules of the paper, and refusals that write nothing."""

import json
import math
import re
from argparse import Namespace

import pytest
import torch
import torch.nn as nn

from conftest import TINY_DARTS_TRAIN, assert_one_line_error, popen_script, run_script

TINY_TRAIN = [*TINY_DARTS_TRAIN, "--dataset", "synthetic", "--layers", "5", "--max_steps_per_epoch", "1"]


def test_eval_cell_pools_end_in_an_affine_free_batchnorm_that_normalises_the_pooled_map(load_space):
    model, genotypes, operations = load_space("DARTS-space", "model", "genotypes", "operations")
    net, after_pool = model.NetworkCIFAR(8, 10, 5, False, genotypes.DrNAS_cifar10), set()
    for cell in net.cells:
        for (name, _), op in zip(cell.genotype_edges, cell.ops):
            if name.endswith("pool_3x3"):
                pool, bn = op
                after_pool.add(id(bn))
                kind = nn.MaxPool2d if name.startswith("max") else nn.AvgPool2d
                assert isinstance(pool, kind) and pool.kernel_size in (3, (3, 3))
                assert isinstance(bn, nn.BatchNorm2d) and not bn.affine
                assert bn.num_features == cell.preprocess1.bn.num_features
    assert after_pool  # DrNAS_cifar10 has a max pool in its reduction cell
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.affine == (id(m) not in after_pool) for m in norms)
    # In training mode a pool op's output has zero mean and unit variance per channel (batch statistics).
    torch.manual_seed(0)
    x = 3 * torch.randn(4, 6, 8, 8) + 2
    for name in ("max_pool_3x3", "avg_pool_3x3"):
        out = operations.OPS[name](6, 2, True)(x)
        torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(6), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.var((0, 2, 3), unbiased=False), torch.ones(6), atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    "network,args,batchnorms,params",
    [("NetworkCIFAR", (36, 10, 20), 299, 4_099_294), ("NetworkImageNet", (48, 1000, 14), 214, 5_726_368)],
)
def test_published_networks_have_the_papers_batchnorm_layers_and_size(load_space, network, args, batchnorms, params):
    model, genotypes = load_space("DARTS-space", "model", "genotypes")
    genotype = genotypes.DrNAS_cifar10 if network == "NetworkCIFAR" else genotypes.DrNAS_imagenet
    net = getattr(model, network)(*args, True, genotype)  # with the auxiliary head
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == batchnorms and model.param_count(net) == params


def test_resuming_another_network_or_arch_is_one_line_and_writes_nothing(tmp_path):
    """A checkpoint whose tensors do not fit the network (e.g. pools saved without BatchNorm) is refused; a refused
    --resume (other --arch) changes no file of the run, genotype.json included."""
    run = tmp_path / "run"
    done = run_script("DARTS-space", "train.py", *TINY_TRAIN, "--save", run)
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    # The layout of checkpoints written before pools had their BatchNorm: no pool statistics.
    pool_bn = re.compile(r"\.ops\.\d+\.1\.(running_mean|running_var|num_batches_tracked)$")
    stripped = {k: v for k, v in ckpt["task"]["model"].items() if not pool_bn.search(k)}
    assert len(stripped) < len(ckpt["task"]["model"])
    ckpt["task"]["model"] = stripped
    del ckpt["epochs"]  # nor the run's length, by which a finished run is told apart (and not resumed)
    old = tmp_path / "old" / "checkpoint.pt"
    old.parent.mkdir()
    torch.save(ckpt, old)
    before, run_files = old.read_bytes(), {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    other_net = popen_script("DARTS-space", "train.py", *TINY_TRAIN, "--resume", old)
    other_arch = popen_script(
        "DARTS-space", "train.py", *TINY_TRAIN, "--arch", "DARTS_V2", "--resume", run / "checkpoint.pt"
    )
    _, err = other_net.communicate(timeout=300)
    assert_one_line_error(other_net.returncode, err, str(old), "earlier version")
    assert sorted(p.name for p in old.parent.iterdir()) == ["checkpoint.pt"] and old.read_bytes() == before
    _, err = other_arch.communicate(timeout=300)
    assert other_arch.returncode != 0 and "--arch" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == run_files


def test_imagenet_search_stems_end_at_three_times_C_and_the_weight_count_is_the_papers(load_space):
    model_search = load_space("DARTS-space", "model_search")
    net = model_search.Network(48, 1000, 14, k=6, imagenet=True)
    convs = [m for m in (*net.stem0, *net.stem1) if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [
        (3, 72, (2, 2)), (72, 144, (2, 2)), (144, 144, (2, 2)),
    ]  # fmt: skip
    assert isinstance(net.stem1[0], nn.ReLU)
    first, second = net.cells[0], net.cells[1]
    assert isinstance(first.preprocess0, type(net.cells[5].preprocess0))  # FactorizedReduce after a reduction
    assert first.preprocess0.conv_1.in_channels == first.preprocess1.conv.in_channels == 144
    assert second.preprocess0.conv.in_channels == 144 and net(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    count = sum(p.numel() for p in net.weights())
    assert count == 3_642_896
    assert not {id(p) for p in net.arch_parameters()} & {id(p) for p in net.weights()}  # beta is not a weight
    C3 = 3 * 48  # conv weights + affine BatchNorm (weight, bias) of each stem layer
    imagenet_stems = 3 * (C3 // 2) * 9 + 2 * (C3 // 2) + (C3 // 2) * C3 * 9 + 2 * C3 + C3 * C3 * 9 + 2 * C3
    cifar = model_search.Network(48, 1000, 14, k=6, imagenet=False)
    assert count - sum(p.numel() for p in cifar.weights()) == imagenet_stems - 3 * C3 * 9 - 2 * C3  # the CIFAR stem


def test_architect_clips_beta_gradient_to_grad_clip(load_space):
    model_search, architect = load_space("DARTS-space", "model_search", "architect")
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(10, (4,))
    norms, args = {}, Namespace(unrolled=False, reg_type="l2", reg_scale=0.0, momentum=0.9, weight_decay=3e-4)
    args.arch_learning_rate = 1e-3
    for clip in (None, 1e-4):
        torch.manual_seed(1)
        net = model_search.Network(4, 10, 3, k=1)
        arch, optimizer = architect.Architect(net, args, grad_clip=clip), torch.optim.SGD(net.weights(), 0.1)
        torch.manual_seed(2)
        arch.step(x, y, x, y, 0.1, optimizer)
        # After one Adam step (beta1 = 0.5) exp_avg = 0.5 * the gradient Adam received.
        states = arch.optimizer.state.values()
        norms[clip] = 2 * torch.cat([s["exp_avg"].flatten() for s in states]).norm().item()
    assert norms[None] > 1e-3  # the raw gradient is far larger than the clip
    assert norms[1e-4] == pytest.approx(1e-4, rel=1e-4)


def test_imagenet_search_and_evaluation_transforms(load_space, tiny_imagenet):
    datasets, T = load_space("DARTS-space", "datasets"), pytest.importorskip("torchvision.transforms")
    train, arch, classes = datasets.imagenet_datasets(tiny_imagenet, 224, search=True)
    assert classes == 3
    for dataset in (train, arch):
        kinds = [type(t) for t in dataset.transform.transforms]
        assert kinds == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
        assert dataset.transform.transforms[0].size == (224, 224)
    assert dataset[0][0].shape == (3, 224, 224)
    train_tf, val_tf = datasets.imagenet_transforms(224)
    kinds = [type(t) for t in train_tf.transforms]
    assert kinds == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ColorJitter, T.ToTensor, T.Normalize]
    jitter = train_tf.transforms[2]
    assert (jitter.brightness, jitter.contrast, jitter.saturation) == ((0.6, 1.4),) * 3 and jitter.hue == (-0.2, 0.2)
    assert [type(t) for t in val_tf.transforms] == [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]
    assert val_tf.transforms[0].size == 256 and val_tf.transforms[1].size == (224, 224)
    normalize = val_tf.transforms[-1]
    assert list(normalize.mean) == [0.485, 0.456, 0.406] and list(normalize.std) == [0.229, 0.224, 0.225]


def test_imagenet_search_run_clips_beta_gradient(tmp_path, tiny_imagenet):
    run = tmp_path / "run"
    argv = "--image_size 32 --layers 5 --init_channels 8 --batch_size 3 --stage_epochs 1 1 --stage_k 4 2"
    argv += " --warmup_epochs 0 --max_steps_per_epoch 2 --device cpu --workers 0 --grad_clip 1e-9 --reg_scale 0"
    result = run_script(
        "DARTS-space", "train_search_imagenet.py", "--data", tiny_imagenet, *argv.split(), "--save", run
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["task"]["architect"]["state"]
    # exp_avg mixes the received gradients with weights summing to below 1: its norm stays under the clip.
    assert all(s["exp_avg"].norm() <= 1e-9 * 1.001 for s in state.values()) and len(state) == 2


def paper_lr(epoch, epochs, lr0, batch_size):
    """The learning rate of the paper's train_imagenet.py (linear scheduler) in `epoch`."""
    if epoch < 5 and batch_size > 256:
        return lr0 * (epoch + 1) / 5
    if epochs - epoch > 5:
        return lr0 * (epochs - 5 - epoch) / (epochs - 5)
    return lr0 * (epochs - epoch) / (5 * (epochs - 5))


@pytest.mark.parametrize("batch_size", [768, 256, 64])
def test_train_imagenet_linear_schedule_every_epoch(load_space, batch_size):
    script = load_space("DARTS-space", "train_imagenet")
    args = script.get_parser().parse_args(["--batch_size", str(batch_size)])
    for e in range(250):
        assert args.learning_rate * script.lr_factor(e, args) == pytest.approx(paper_lr(e, 250, 0.5, batch_size)), e
    assert script.lr_factor(249, args) == pytest.approx(1 / (5 * 245))  # the last epoch is not at 0


def test_train_imagenet_cosine_alternative(load_space):
    script = load_space("DARTS-space", "train_imagenet")
    args = script.get_parser().parse_args(["--lr_scheduler", "cosine", "--epochs", "20"])
    expected = [(e + 1) / 5 if e < 5 else 0.5 * (1 + math.cos(math.pi * e / 20)) for e in range(20)]
    assert [script.lr_factor(e, args) for e in range(20)] == pytest.approx(expected)


IMAGENET_DEFAULTS = {
    "train_search_imagenet": dict(
        batch_size=512, learning_rate=0.5, learning_rate_min=0.0, lr_warmup_epochs=5, arch_learning_rate=6e-3,
        init_channels=48, layers=14, seed=0, stage_epochs=[25, 25], stage_k=[6, 3], stage_keep=[7, 4], warmup_epochs=10,
        grad_clip=5.0, momentum=0.9, weight_decay=3e-4, reg_type="l2", reg_scale=1e-3,
    ),
    "train_imagenet": dict(
        epochs=250, batch_size=768, learning_rate=0.5, weight_decay=3e-5, label_smoothing=0.1, auxiliary_weight=0.4,
        init_channels=48, layers=14, lr_scheduler="linear", warmup_epochs=5, drop_path_prob=0.0, grad_clip=5.0,
        momentum=0.9, arch="DrNAS_imagenet", seed=0,
    ),
}  # fmt: skip


@pytest.mark.parametrize("script", sorted(IMAGENET_DEFAULTS))
def test_imagenet_defaults_are_the_papers(load_space, script):
    args = vars(load_space("DARTS-space", script).get_parser().parse_args([]))
    assert {key: args[key] for key in IMAGENET_DEFAULTS[script]} == IMAGENET_DEFAULTS[script]


def test_train_imagenet_history_holds_the_papers_learning_rates(tmp_path, tiny_imagenet):
    argv = "--image_size 32 --layers 5 --init_channels 4 --epochs 12 --learning_rate 0.5 --max_steps_per_epoch 1"
    argv = ["train_imagenet.py", "--data", tiny_imagenet, *argv.split(), "--device", "cpu", "--workers", "0"]
    procs = {b: popen_script("DARTS-space", *argv, "--batch_size", b, "--save", tmp_path / str(b)) for b in (300, 64)}
    for batch, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        history = [json.loads(line) for line in (tmp_path / str(batch) / "history.jsonl").read_text().splitlines()]
        assert [h["lr"] for h in history] == pytest.approx([paper_lr(e, 12, 0.5, batch) for e in range(12)])


def test_missing_data_and_resume_are_refused_before_writing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ("train.py", "--data", empty, "--save", tmp_path / "a"),
        ("train.py", "--resume", tmp_path / "missing.pt", "--save", tmp_path / "b"),
        ("train_search.py", "--data", empty, "--save", tmp_path / "run"),
    ]
    procs = [popen_script("DARTS-space", *case, "--device", "cpu") for case in cases]
    for proc, expected in zip(procs, ("not found", "no such file", "not found")):
        _, err = proc.communicate(timeout=300)
        assert_one_line_error(proc.returncode, err, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"] and not any(empty.iterdir())
