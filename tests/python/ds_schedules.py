"""DeepSpeed's learning-rate schedulers, written here from DeepSpeed's documented
formulas (deepspeed/runtime/lr_schedules.py) and its stepping protocol, as the
reference for strata's "scheduler" config block: a scheduler sets the optimizer's lr
when it is built (its value at last_batch_iteration = -1), and DeepSpeed's engine calls
step() after every applied optimizer step. Plain PyTorch optimizers; nothing of strata.
"""
import math


class _Schedule:
    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.it = -1
        self._apply()

    def step(self):
        self.it += 1
        self._apply()

    def _apply(self):
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr(self.it)
            betas = self.betas(self.it)
            if betas is not None:
                g["betas"] = betas

    def betas(self, it):
        return None


def _gamma(it, warmup, kind):
    warmup = max(2, warmup)
    return math.log(it + 1) / math.log(warmup) if kind == "log" else it / warmup


class WarmupLR(_Schedule):
    def __init__(self, optimizer, warmup_min_lr=0.0, warmup_max_lr=0.001, warmup_num_steps=1000, warmup_type="log"):
        self.lo, self.hi, self.w, self.kind = warmup_min_lr, warmup_max_lr, warmup_num_steps, warmup_type
        super().__init__(optimizer)

    def after_warmup(self, it):
        return 1.0

    def lr(self, it):
        if it < 0:
            return self.lo
        g = _gamma(it, self.w, self.kind) if it < max(2, self.w) else self.after_warmup(it)
        return self.lo + (self.hi - self.lo) * g


class WarmupDecayLR(WarmupLR):
    def __init__(self, optimizer, total_num_steps, **kw):
        self.total = total_num_steps
        super().__init__(optimizer, **kw)

    def after_warmup(self, it):
        w = max(2, self.w)
        return max(0.0, (self.total - it) / max(1.0, self.total - w))


class WarmupCosineLR(_Schedule):
    def __init__(self, optimizer, total_num_steps, warmup_min_ratio=0.0, warmup_num_steps=1000, cos_min_ratio=0.0001,
                 warmup_type="log"):
        self.total, self.r0, self.w, self.c, self.kind = (total_num_steps, warmup_min_ratio, max(2, warmup_num_steps),
                                                          cos_min_ratio, warmup_type)
        self.peak = optimizer.param_groups[0]["lr"]
        super().__init__(optimizer)

    def lr(self, it):
        if it < 0:
            return 0.0
        if it < self.w:
            ratio = self.r0 + _gamma(it, self.w, self.kind) * (1 - self.r0)
        else:
            cos = (1 + math.cos(math.pi * (it - self.w + 1) / (self.total - self.w))) / 2
            ratio = max(0.0, self.c + (1 - self.c) * cos)
        return self.peak * ratio


class OneCycle(_Schedule):
    def __init__(self, optimizer, cycle_min_lr, cycle_max_lr, decay_lr_rate=0.0, cycle_first_step_size=2000,
                 cycle_second_step_size=None, decay_step_size=0, cycle_momentum=True, cycle_min_mom=0.8,
                 cycle_max_mom=0.9, decay_mom_rate=0.0):
        second = cycle_first_step_size if cycle_second_step_size is None else cycle_second_step_size
        self.total = float(cycle_first_step_size + second)
        self.ratio = cycle_first_step_size / self.total
        self.lo, self.hi, self.rate, self.decay = cycle_min_lr, cycle_max_lr, decay_lr_rate, decay_step_size
        self.momentum, self.mlo, self.mhi, self.mrate = cycle_momentum, cycle_min_mom, cycle_max_mom, decay_mom_rate
        super().__init__(optimizer)

    def _scale(self, it):
        b = it + 1
        x = 1.0 + b / self.total - math.floor(1 + b / self.total)
        return x / self.ratio if x <= self.ratio else (x - 1) / (self.ratio - 1)

    def lr(self, it):
        if it < self.total:
            return self.lo + (self.hi - self.lo) * self._scale(it)
        if self.decay == 0 or self.rate == 0:
            return self.lo
        return self.lo / (1 + self.rate * (it - self.total + 1) / self.decay)

    def betas(self, it):
        if not self.momentum:
            return None
        if it < 0:
            return (self.mlo, 0.99)
        if it < self.total:
            return (self.mhi - (self.mhi - self.mlo) * self._scale(it), 0.99)
        if self.decay == 0 or self.mrate == 0:
            return (self.mhi, 0.99)
        return (self.mhi * (1 + self.mrate * (it - self.total + 1) / self.decay), 0.99)


class LRRangeTest(_Schedule):
    def __init__(self, optimizer, lr_range_test_min_lr=1e-3, lr_range_test_step_size=2000, lr_range_test_step_rate=1.0,
                 lr_range_test_staircase=False):
        self.lo, self.size, self.rate, self.stairs = (lr_range_test_min_lr, lr_range_test_step_size,
                                                      lr_range_test_step_rate, lr_range_test_staircase)
        super().__init__(optimizer)

    def lr(self, it):
        interval = (it + 1) / self.size
        if self.stairs:
            interval = math.floor(interval)
        return self.lo * (1 + self.rate * interval)
