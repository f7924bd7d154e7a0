"""One rank of test_gan.py: a GAN whose generator and discriminator are two strata
engines alive at once in this process, trained with the loop GAN scripts write.

    gan_worker.py STAGE DEVICE NVME_DIR OUT_PT CLIP

The generator's loss flows back through the discriminator, whose engine gets those
gradients too; the discriminator's zero_grad() after the generator's step discards them,
as torch's does. Each rank trains on its share of every batch and writes its losses per
step and both models' consolidated parameters to OUT_PT.<rank>."""
import contextlib
import sys

import torch

import gan_models
import strata

stage, device, nvme, out, clip = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
torch.set_num_threads(1)
G, D = gan_models.make()


def config():
    zero = {"stage": stage, "stage3_param_persistence_threshold": 0}
    if device != "none":
        zero["offload_optimizer"] = {"device": device, "nvme_path": nvme}
        if stage == 3:
            zero["offload_param"] = {"device": device, "nvme_path": nvme}
    return {"train_batch_size": gan_models.ROWS, "zero_optimization": zero, "strata": {"chunk_size": 256},
            "optimizer": {"type": "AdamW", "params": {"lr": gan_models.LR, "weight_decay": gan_models.WD}}}


# Both engines on the same nvme_path, alive together (Note [default job name]).
g_engine, *_ = strata.initialize(model=G, config=config())
d_engine, *_ = strata.initialize(model=D, config=config())
rank, world = g_engine.global_rank, g_engine.world_size


def gathered(params):
    """The clipping's context: at stages 2-3 DeepSpeed's (rank 0 edits, the others take its
    values); at stage 1 none, each rank edits its own replica."""
    return strata.GatheredParameters(params, modifier_rank=0) if stage >= 2 else contextlib.nullcontext()
per = gan_models.ROWS // world
losses = gan_models.train(g_engine, d_engine, g_engine.backward, g_engine.step, d_engine.backward, d_engine.step,
                          d_engine.zero_grad, rows=slice(rank * per, (rank + 1) * per), clip=clip, gathered=gathered)
params = {f"G.{k}": v.reshape(-1).clone() for k, v in g_engine.consolidated_state_dict().items()}
params.update({f"D.{k}": v.reshape(-1).clone() for k, v in d_engine.consolidated_state_dict().items()})
g_engine.close()
d_engine.close()
torch.save({"losses": torch.tensor(losses, dtype=torch.float64), "params": params}, f"{out}.{rank}")
