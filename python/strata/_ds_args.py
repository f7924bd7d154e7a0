"""DeepSpeed's script-side entry points around initialize: its command-line arguments
(add_config_arguments, initialize(args=...)) and its data loader (initialize's
training_data, engine.deepspeed_io). DeepSpeed's CIFAR-10 tutorial and the scripts built
from it start this way:

    parser = strata.add_config_arguments(argparse.ArgumentParser())
    args = parser.parse_args()            # ... --deepspeed --deepspeed_config ds.json
    engine, optimizer, loader, _ = strata.initialize(args=args, model=net,
                                                     model_parameters=net.parameters(),
                                                     training_data=trainset)
"""
from __future__ import annotations

import argparse

import torch.utils.data

from .errors import ConfigError, NotImplementedByStrata


def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """DeepSpeed's: --deepspeed (a flag scripts test to take the DeepSpeed path) and
    --deepspeed_config (the JSON config initialize(args=...) reads); --deepscale and
    --deepscale_config, their old names, hidden. Returns the parser."""
    group = parser.add_argument_group("DeepSpeed", "DeepSpeed configuration, read by strata.initialize(args=...)")
    group.add_argument("--deepspeed", default=False, action="store_true",
                       help="take the DeepSpeed path (strata's engine) in scripts that test for it")
    group.add_argument("--deepspeed_config", default=None, type=str, help="the DeepSpeed JSON config file")
    group.add_argument("--deepscale", default=False, action="store_true", help=argparse.SUPPRESS)
    group.add_argument("--deepscale_config", default=None, type=str, help=argparse.SUPPRESS)
    return parser


def resolve_config(config, config_params, args):
    """The config initialize() uses: `config`, else `config_params` (DeepSpeed's older
    name), else args.deepspeed_config (or args.deepscale_config). A config in both the
    call and the arguments is refused, as DeepSpeed refuses it: strata would otherwise pick
    one of two files without a word."""
    if config is not None and config_params is not None:
        raise ConfigError("invalid_argument: initialize got both config and config_params (its older name); give one")
    if config is None:
        config = config_params
    from_args = None
    if args is not None:
        from_args = getattr(args, "deepspeed_config", None) or getattr(args, "deepscale_config", None)
    if from_args is not None and config is not None:
        raise ConfigError(f"invalid_argument: a config was given both in the call and in args.deepspeed_config "
                          f"({from_args!r}); give one")
    config = from_args if config is None else config
    if config is None:
        raise ConfigError("invalid_argument: initialize needs a config: config=<path or dict>, or args whose "
                          "deepspeed_config names the file (strata.add_config_arguments adds --deepspeed_config)")
    return config


def refuse_model_parallel(mpu, mesh_param) -> None:
    """DeepSpeed's model-parallel arguments: strata shards data-parallel only."""
    for name, value in (("mpu", mpu), ("mesh_param", mesh_param)):
        if value is not None:
            raise NotImplementedByStrata(f"unimplemented: initialize({name}=...): strata has no model (tensor or "
                                         "pipeline) parallelism; every rank is a data-parallel rank")


def data_loader(dataset, batch_size: int, world: int, rank: int, drop_last: bool, collate_fn=None,
                data_sampler=None, num_workers: int | None = None) -> torch.utils.data.DataLoader:
    """DeepSpeed's DeepSpeedDataLoader as a torch DataLoader: this rank's micro-batches,
    through a DistributedSampler over the data-parallel ranks (shuffled, torch's default
    seed) unless the caller gives a sampler. Host memory is not pinned: pinning needs
    CUDA."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"invalid_argument: the data loader's batch size must be a positive int, got {batch_size!r}")
    if data_sampler is None:
        data_sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=data_sampler, collate_fn=collate_fn,
                                       num_workers=num_workers or 0, drop_last=drop_last)
