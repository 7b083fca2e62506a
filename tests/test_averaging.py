"""The moving average of a network's weights that predictions use."""

import pytest
import torch
from torch import nn

from napari_sizeloss.averaging import WARMUP, WeightAverage


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def average_share(n, decay):
    """The share of the newest weights in the n-th update, by hand: 1 - min(decay, (1+n)/(10+n))."""
    return 1 - min(decay, (1 + n) / (WARMUP + n))


def expected_average(states, decay):
    """The recursion by hand over state dicts: a_1 = w_1; a_n = a_{n-1} + share_n (w_n - a_{n-1}); counters copied."""
    avg = {k: v.clone().double() for k, v in states[0].items()}
    for n, state in enumerate(states[1:], start=2):
        for k, v in state.items():
            avg[k] = avg[k] + average_share(n, decay) * (v.double() - avg[k]) if v.is_floating_point() else v.clone().double()
    return avg


def test_average_follows_the_warmed_up_recursion_over_weights_and_batch_norm_statistics():
    net = small_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    states = [{k: v.clone() for k, v in net.state_dict().items()}]
    average = WeightAverage(net, decay=0.9)
    for step in range(25):
        opt.zero_grad()
        x = torch.randn(3, 1, 8, 8) + step * 0.1
        net(x).square().mean().backward()  # train mode: batch norm's running statistics move too
        opt.step()
        average.update()
        states.append({k: v.clone() for k, v in net.state_dict().items()})
    want = expected_average(states, 0.9)
    got = average.model.state_dict()
    for key, value in want.items():
        torch.testing.assert_close(got[key].double(), value, rtol=1e-5, atol=1e-6, msg=key)
    # it is an average, not the last weights: a wrong (copying) implementation fails here
    last = net.state_dict()
    assert not torch.allclose(got["0.weight"], last["0.weight"], atol=1e-4)
    assert got["1.num_batches_tracked"].item() == 25  # counters copied, not averaged
    assert average.updates == 26


def test_warmup_weights_then_decay():
    average = WeightAverage(small_net(), decay=0.95)
    assert average.weight() == pytest.approx(1 - 3 / 12)  # the second update: the newest weights weigh most
    average.updates = 1000
    assert average.weight() == pytest.approx(0.05)


def test_the_copy_is_separate_untrained_and_keeps_the_memory_layout():
    net = small_net().to(memory_format=torch.channels_last)
    net[0].weight.grad = torch.ones_like(net[0].weight)
    average = WeightAverage(net, decay=0.9)
    copy = average.model
    assert copy is not net and not copy.training
    assert all(p.grad is None and not p.requires_grad for p in copy.parameters())
    assert copy[0].weight.is_contiguous(memory_format=torch.channels_last)
    before = copy[0].weight.clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    torch.testing.assert_close(copy[0].weight, before)  # untouched until update()
    average.update()
    torch.testing.assert_close(copy[0].weight, before + average_share(2, 0.9))


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_decay_outside_zero_one_is_refused(decay):
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(small_net(), decay)
