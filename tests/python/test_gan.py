"""Two strata engines alive at once in one process, one's loss flowing back through the
other: a GAN's generator and discriminator, against plain PyTorch, at world sizes 1 and
2 in real processes. Before, the discriminator's zero_grad() did nothing, so its next
step summed in the gradients of the generator's backward (a 2e-2 loss difference by
step 4); and at stage 3 with both on one nvme_path the second engine failed to open its
swap directory, as if another run held it. A WGAN critic's weight clipping (an in-place
edit after each discriminator step) was refused before; it trains as in PyTorch now, at
stage 3 through strata.GatheredParameters."""
import pytest
import torch

import gan_models
from conftest import HERE, run_ranks
from test_initialize import rel


def plain(clip):
    g, d = gan_models.make()
    g_opt = torch.optim.AdamW(g.parameters(), lr=gan_models.LR, weight_decay=gan_models.WD)
    d_opt = torch.optim.AdamW(d.parameters(), lr=gan_models.LR, weight_decay=gan_models.WD)

    def stepper(opt):
        def step():
            opt.step()
            opt.zero_grad()
        return step

    losses = gan_models.train(g, d, torch.Tensor.backward, stepper(g_opt), torch.Tensor.backward, stepper(d_opt),
                              d_opt.zero_grad, clip=clip)
    params = {f"G.{k}": v.detach().reshape(-1) for k, v in g.named_parameters()}
    params.update({f"D.{k}": v.detach().reshape(-1) for k, v in d.named_parameters()})
    return torch.tensor(losses, dtype=torch.float64), params


# clip: a WGAN critic's weight clipping, in place after each discriminator step: at stage
# 1 each rank takes its own edit into its master shard (Note [edited parameters]); at
# stages 2-3 inside strata.GatheredParameters(modifier_rank=0) (Note [gathered parameters]).
@pytest.mark.parametrize("world,stage,device,clip", [(1, 1, "cpu", 0), (1, 2, "cpu", 0), (2, 1, "cpu", 0.05),
                                                     (2, 2, "nvme", 0), (2, 2, "nvme", 0.05), (2, 3, "nvme", 0),
                                                     (2, 3, "nvme", 0.05)])
def test_gan_with_two_engines_matches_plain_pytorch(tmp_path, world, stage, device, clip):
    out = tmp_path / "gan.pt"
    args = [HERE / "gan_worker.py", stage, device, tmp_path, out, clip]
    for rank, (rc, text) in enumerate(run_ranks(world, args)):
        assert rc == 0, f"rank {rank} exited {rc}:\n{text}"
    ranks = [torch.load(f"{out}.{r}") for r in range(world)]
    got = ranks[0]
    losses = sum(r["losses"] for r in ranks) / world  # each rank's mean over its rows
    want_losses, want_params = plain(clip)
    assert torch.allclose(losses, want_losses, rtol=1e-5, atol=0), (losses, want_losses)
    assert got["params"].keys() == want_params.keys()
    for k, v in want_params.items():
        assert rel(got["params"][k], v) <= 1e-5, f"{k}: relative error {rel(got['params'][k], v)}"
