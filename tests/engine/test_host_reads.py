"""No host reads in the training loop, and one per evaluation, proven on the meta device.

A tensor on the meta device has a shape and no data, so the training loop runs there as it would
on a GPU, minus the arithmetic, and engine.host_reads counts every place where the host would wait
for the device: a value read, a copy to the host, an op whose output shape depends on the data, a
blocking upload. Whether the loop reads is a property of its code path, not of the numbers, so
meta proves it without a GPU. Where a read happens anyway, the counter hands back a placeholder
(0, False, zeros) and the run goes on; the metrics are all 0 there, which the stop_when below uses
to end one member early.

The minibatch sampler draws its indices on the host (a CPU generator: meta has none) and uploads
them with non_blocking=True: on meta that states the intent, and on CUDA engine.train.to_device
pins the memory first, so the upload does not wait for the GPU.
"""

from __future__ import annotations

import torch

from engine.host_reads import HostReads

META = torch.device("meta")


def test_the_counter_sees_every_kind_of_host_read_and_nothing_else() -> None:
    x = torch.ones(4, 3, device=META)
    host = torch.arange(4)
    with HostReads() as reads:
        kept = (x * 2 + 1).sum(0)[host[:3].to(META, non_blocking=True)]  # arithmetic, an integer index
        torch.stack([x, x]).softmax(-1).argmax(-1)
        host.tolist(), float(host[0])  # host tensors are the host's own
    assert reads.count == 0 and kept.shape == (3,)
    reads_of = {
        "item": lambda: x[0, 0].item(),
        "float": lambda: float(x[0, 0]),
        "bool": lambda: bool(x[0, 0] > 0),
        "int index": lambda: [1, 2][x.long()[0, 0]],
        "tolist": lambda: x.tolist(),
        "cpu": lambda: x.cpu(),
        "to cpu": lambda: x.to("cpu"),
        "copy to host": lambda: torch.empty(4, 3).copy_(x),
        "equal": lambda: torch.equal(x, x),
        "allclose": lambda: torch.allclose(x, x),
        "nonzero": lambda: x.nonzero(),
        "masked_select": lambda: x.masked_select(x > 0),
        "boolean index": lambda: x[x[:, 0] > 0],
        "boolean assignment": lambda: x.__setitem__(x > 0, 0.0),
        "tensor of a list": lambda: torch.tensor([1, 2], device=META),
        "as_tensor of a list": lambda: torch.as_tensor([1.0], device=META),
        "blocking upload": lambda: host.to(META),
        "blocking copy_ upload": lambda: torch.empty(4, device=META).copy_(host),
    }
    for name, read in reads_of.items():
        with HostReads() as reads:
            read()
        assert reads.count == 1, (name, reads.summary())
        assert reads.reads[0].site.startswith("test_host_reads.py:"), (name, reads.reads[0])
    # the placeholders keep the code running with the right shapes
    with HostReads():
        assert x[x[:, 0] > 0].shape == (0, 3) and x.cpu().shape == (4, 3) and x.nonzero().shape == (0, 2)
