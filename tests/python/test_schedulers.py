"""A torch.optim.lr_scheduler drives the engine's learning rate through the optimizer
strata.initialize returns: the same losses as plain PyTorch with the same scheduler."""
import torch

import models


def test_lambda_lr_through_initialize_matches_plain_pytorch():
    import strata

    torch.set_num_threads(1)
    decay = lambda step: 0.5 ** step  # noqa: E731
    cfg = {"train_batch_size": 8, "zero_optimization": {"stage": 2},
           "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.01}}}
    engine, opt, _, sched = strata.initialize(model=models.make("gpt"), config=cfg,
                                              lr_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, decay))
    ref = models.make("gpt")
    ropt = torch.optim.AdamW(ref.parameters(), lr=3e-3, weight_decay=0.01)
    rsched = torch.optim.lr_scheduler.LambdaLR(ropt, decay)
    for step in range(4):
        x, y = models.batch("gpt", step, 8)
        loss = models.loss_fn("gpt", engine(x), y)
        engine.backward(loss)
        engine.step()
        ropt.zero_grad()
        rloss = models.loss_fn("gpt", ref(x), y)
        rloss.backward()
        ropt.step()
        rsched.step()
        assert abs(loss.item() - rloss.item()) <= 1e-5 * abs(rloss.item()), step
        assert engine.get_lr() == [rsched.get_last_lr()[0]] == [opt.param_groups[0]["lr"]]
    assert sched.last_epoch == 4
    engine.close()
