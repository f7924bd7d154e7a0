"""strata: train models that do not fit in memory, from PyTorch.

    import strata
    engine, optimizer, _, scheduler = strata.initialize(model=model, config=ds_config)

See docs/python.md.
"""
import torch  # noqa: F401  (the extension casts torch.Tensor: torch first)

from . import _clip  # noqa: F401 (torch's clip_grad_norm_ reaches the engines: Note [torch's gradient clipping])
from . import errors, optim
from ._deferred import DeferredParameter, Init
from ._stand_ins import materialize
from ._gathered import GatheredParameters
from ._strata import __version__
from ._guard import register_external_parameter
from ._units import set_leaf_modules
from ._ds_args import add_config_arguments
from .engine import Engine, initialize
from .fsdp import (CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard, get_model_state_dict,
                   get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict)
from .sharded import ShardedOptimizer
from .errors import (CannotFitError, ConfigError, NotFoundError, NotImplementedByStrata, PeerError, StrataError,
                     StrataIOError, UsageError)

__all__ = ["initialize", "add_config_arguments", "Engine", "Init", "materialize", "DeferredParameter", "GatheredParameters", "register_external_parameter", "set_leaf_modules", "fully_shard", "get_model_state_dict", "set_model_state_dict", "get_optimizer_state_dict", "set_optimizer_state_dict", "MixedPrecisionPolicy", "OffloadPolicy", "CPUOffloadPolicy", "optim", "ShardedOptimizer", "errors", "StrataError", "ConfigError", "CannotFitError", "StrataIOError",
           "NotFoundError", "PeerError", "UsageError", "NotImplementedByStrata", "__version__"]
