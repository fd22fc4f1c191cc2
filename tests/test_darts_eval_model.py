"""DARTS-space evaluation networks: parameter counts, forward shapes, drop path."""

import pytest
import torch

pytestmark = pytest.mark.quick

# Parameters without the auxiliary head, C=36, 20 cells, 10 classes (DrNAS_cifar10: the
# paper's 4.10M; DARTS_V2: the 3.3M of the DARTS README), and C=48, 14 cells, 1000 classes.
GOLDEN_CIFAR = {
    "DrNAS_cifar10": 4_099_294, "DrNAS_imagenet": 4_048_750, "DARTS_V1": 3_169_414, "DARTS_V2": 3_349_342,
    "PDARTS": 3_433_798, "PC_DARTS_cifar": 3_634_678, "PC_DARTS_image": 3_721_510,
}  # fmt: skip
GOLDEN_IMAGENET = {"DrNAS_imagenet": 5_726_368, "PC_DARTS_image": 5_342_464}


@pytest.mark.parametrize("name", sorted(GOLDEN_CIFAR))
def test_cifar_parameter_count(load_space, name):
    model, genotypes = load_space("DARTS-space", "model", "genotypes")
    net = model.NetworkCIFAR(36, 10, 20, False, genotypes.NAMED[name])
    assert model.param_count(net) == GOLDEN_CIFAR[name]
    # The auxiliary head adds parameters but does not change the reported count.
    with_aux = model.NetworkCIFAR(36, 10, 20, True, genotypes.NAMED[name])
    assert model.param_count(with_aux) == GOLDEN_CIFAR[name]
    assert sum(p.numel() for p in with_aux.parameters()) > GOLDEN_CIFAR[name]


def test_published_sizes(load_space):
    model, genotypes = load_space("DARTS-space", "model", "genotypes")
    assert set(genotypes.NAMED) == set(GOLDEN_CIFAR)
    assert round(GOLDEN_CIFAR["DrNAS_cifar10"] / 1e6, 2) == 4.10
    for name, count in GOLDEN_IMAGENET.items():
        net = model.NetworkImageNet(48, 1000, 14, False, genotypes.NAMED[name])
        assert model.param_count(net) == count
    assert round(GOLDEN_IMAGENET["DrNAS_imagenet"] / 1e6, 2) == 5.73


@pytest.mark.parametrize("network", ["NetworkCIFAR", "NetworkImageNet"])
@pytest.mark.parametrize("auxiliary", [False, True])
def test_forward_shapes(load_space, network, auxiliary):
    model, genotypes = load_space("DARTS-space", "model", "genotypes")
    torch.manual_seed(0)
    if network == "NetworkImageNet":
        net = model.NetworkImageNet(8, 7, 5, auxiliary, genotypes.DrNAS_imagenet)
        size = 224 if auxiliary else 64  # the auxiliary head is sized for 224x224 (a 7x7 map); without it 64 px suffice
        logits, logits_aux = net(torch.randn(2, 3, size, size))
        assert logits.shape == (2, 7) and ((logits_aux.shape == (2, 7)) if auxiliary else logits_aux is None)
        return
    net = model.NetworkCIFAR(8, 10, 5, auxiliary, genotypes.DrNAS_cifar10)
    net.drop_path_prob = 0.2
    logits, logits_aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and ((logits_aux.shape == (2, 10)) if auxiliary else logits_aux is None)
    if auxiliary:
        (logits.sum() + logits_aux.sum()).backward()
        assert all(p.grad is not None for p in net.parameters())
    net.eval()
    assert net(torch.randn(2, 3, 32, 32))[1] is None  # no auxiliary output at test time


def test_drop_path_drops_samples_not_in_eval_nor_on_identities_and_the_shared_relu_is_the_darts_cell(load_space):
    model, genotypes, operations = load_space("DARTS-space", "model", "genotypes", "operations")
    torch.manual_seed(0)
    x = torch.ones(1000, 3, 2, 2, requires_grad=True)
    y = model.drop_path(x * 1.0, 0.25)  # in place, so on an op's output, never a leaf
    kept = y[:, 0, 0, 0] != 0
    # Whole samples are dropped, survivors scaled by 1 / (1 - p), and the mean is kept.
    assert 0.65 < kept.float().mean() < 0.85 and torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75))
    assert (y[~kept] == 0).all()
    y.sum().backward()
    assert x.grad is not None
    torch.manual_seed(0)
    net, x = model.NetworkCIFAR(8, 10, 5, False, genotypes.DrNAS_cifar10), torch.randn(4, 3, 32, 32)
    net.train()
    net(x)  # give BatchNorm running statistics
    net.eval()
    net.drop_path_prob = 0.0
    reference = net(x)[0]
    net.drop_path_prob = 0.5
    assert torch.equal(net(x)[0], reference)
    net.train()  # in training the same input gives different outputs once paths are dropped
    torch.manual_seed(1)
    first = net(x)[0]
    torch.manual_seed(2)
    assert not torch.allclose(first, net(x)[0])
    for cell in net.cells:
        flags = [isinstance(op, operations.Identity) for op in cell.ops]
        assert flags == cell.is_identity
    # The shared ReLU: rectifying each state once for all its ops equals the ops' own ReLUs (the DARTS ops).
    x = torch.randn(2, 3, 32, 32)
    net.eval()  # with the BatchNorm statistics of the training passes above
    shared = net(x)[0]
    assert any(any(cell.takes_relu) for cell in net.cells)
    for cell in net.cells:
        C = cell.preprocess1.conv.out_channels
        for i, ((name, index), op) in enumerate(zip(cell.genotype_edges, cell.ops)):
            stride = 2 if cell.reduction and index < 2 else 1
            own_relu = operations.OPS[name](C, stride, True)  # the default: ReLU inside the op
            own_relu.load_state_dict(op.state_dict())
            own_relu.eval()
            cell.ops[i] = own_relu
        cell.takes_relu = [False] * len(cell.ops)
    assert torch.allclose(net(x)[0], shared, atol=1e-6)
