"""AdamW with a warm-up and a cosine or warmup-stable-decay (WSD) learning-rate schedule, from optax pieces.

The schedule is a small plan (`LrPlan`), stored with every checkpoint (its
config and `lr_hold`), so that a resume can tell whether the curve would jump:

  cosine  warm-up, then a cosine from the peak to its floor over `decay_steps`
          (default: train.steps). Extending train.steps on a resume would
          redraw the whole curve, so it is refused unless `decay_steps` keeps
          the old horizon (the rate then stays at its floor past it).
  wsd     warm-up, a stable phase at the peak, and a decay to the floor over
          the last `decay_steps` (default: decay_fraction of train.steps),
          shaped 1 - sqrt (Hägele et al. 2024: best of the shapes they tried).
          Extending a run in its stable phase just moves the decay to the new
          end; extending it later holds the rate it had reached (`lr_hold`)
          until the new decay, which starts from there: never a jump.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from jaxtrain.config import OptimizerConfig
from jaxtrain.errors import JaxtrainError


class ScheduleChange(JaxtrainError):
    """A resume whose settings would make the learning rate jump."""


@dataclasses.dataclass(frozen=True)
class LrPlan:
    kind: str
    peak: float
    floor: float
    warmup: int
    decay_start: int  # cosine: 0 after warm-up (the cosine starts at warmup); wsd: first step of the decay
    decay_end: int  # the step at which the floor is reached
    hold_step: int = -1  # wsd extended after its decay began: from this step on ...
    hold_lr: float = 0.0  # ... the rate starts from here instead of the peak

    def horizon(self) -> tuple:
        return (self.kind, self.warmup, self.decay_start, self.decay_end, self.hold_step)


def plan(cfg: OptimizerConfig, total_steps: int, hold: tuple[int, float] | None = None) -> LrPlan:
    peak, floor = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        end = cfg.decay_steps or total_steps
        return LrPlan("cosine", peak, floor, cfg.warmup_steps, cfg.warmup_steps, max(end, cfg.warmup_steps + 1))
    decay = cfg.decay_steps or max(1, round(cfg.decay_fraction * total_steps))
    start = max(total_steps - decay, cfg.warmup_steps)
    hold_step, hold_lr = hold if hold is not None else (-1, 0.0)
    # the run's last update (step total - 1) is made at the floor: an extension continues from exactly there
    return LrPlan("wsd", peak, floor, cfg.warmup_steps, start, max(total_steps - 1, start + 1), hold_step, hold_lr)


def lr_at(p: LrPlan, step):
    """The learning rate of the update made at `step` (0-based), for a Python int or a traced array."""
    xp = jnp if isinstance(step, jax.Array) else math
    t = step * 1.0
    warm = p.peak * t / max(p.warmup, 1)
    if p.kind == "cosine":
        frac = _clip01((t - p.decay_start) / max(p.decay_end - p.decay_start, 1))
        main = p.floor + (p.peak - p.floor) * 0.5 * (1 + xp.cos(math.pi * frac))
    else:
        level = _where(t >= p.hold_step, p.hold_lr, p.peak) if p.hold_step >= 0 else p.peak
        start = max(p.decay_start, p.hold_step) if p.hold_step >= 0 else p.decay_start
        frac = _clip01((t - start) / max(p.decay_end - start, 1))
        main = p.floor + (level - p.floor) * (1 - xp.sqrt(frac))
    return _where(t < p.warmup, warm, main)


def _clip01(x):
    return jnp.clip(x, 0.0, 1.0) if isinstance(x, jax.Array) else min(max(x, 0.0), 1.0)


def _where(cond, a, b):
    return jnp.where(cond, a, b) if isinstance(cond, jax.Array) else (a if cond else b)


def saved_plan(meta: dict) -> LrPlan:
    """The plan a checkpoint was trained with, from its metadata (fields newer than it take their defaults)."""
    config = meta.get("config") or {}
    names = {f.name for f in dataclasses.fields(OptimizerConfig)}
    opt = OptimizerConfig(**{k: v for k, v in (config.get("optimizer") or {}).items() if k in names})
    hold = meta.get("lr_hold")
    return plan(opt, int((config.get("train") or {}).get("steps", 0)), tuple(hold) if hold else None)


def continue_plan(saved: LrPlan, current: LrPlan, step: int) -> tuple[int, float] | None:
    """Resuming at `step` with `current` after `saved`: None (the current plan continues the curve), a WSD
    hold (step, rate) that does, or ScheduleChange when only the user can decide."""
    if step == 0 or saved.horizon() == current.horizon():
        # the same curve (a changed peak is the user's explicit change: logged by the loop), or none of the
        # saved curve was run yet (an imported model's step-0 checkpoint)
        return None
    if saved.warmup == current.warmup and step <= min(saved.decay_start, current.decay_start):
        return None  # still in warm-up (or a stable phase) under both: the curve so far is the same
    before, after = lr_at(saved, step), lr_at(current, step)
    if current.kind == "wsd":
        return None if math.isclose(before, after, rel_tol=1e-9) else (step, before)
    raise ScheduleChange(
        f"optimizer: the cosine schedule would change at step {step}: the checkpoint's curve decays until step "
        f"{saved.decay_end} (learning rate {before:.3g} now), this run's until step {current.decay_end} (it "
        f"would be {after:.3g}). Keep the curve with optimizer.decay_steps={saved.decay_end} (the rate stays at "
        "its floor after it), or continue with optimizer.schedule=wsd, which extends without a jump.")


def decay_mask(params) -> object:
    """Decay weight matrices only: not embeddings, norms or biases (OLMo / PaLM practice).

    Decided by parameter name (`w*` projections and the untied output head), not by
    rank, because stacked layers give norm scales a leading layer axis.
    """

    def keep(path, leaf) -> bool:
        name = str(getattr(path[-1], "key", path[-1]))
        return name.startswith("w") or name == "head_DxV"

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: OptimizerConfig, total_steps: int, hold: tuple[int, float] | None = None
                   ) -> optax.GradientTransformation:
    lr_plan = plan(cfg, total_steps, hold)
    # Clipping is always in the chain (an infinite threshold when optimizer.grad_clip=0), so switching it
    # changes no optimizer-state structure and a run can resume either way.
    clip = optax.clip_by_global_norm(cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    return optax.chain(clip, optax.adamw(learning_rate=lambda count: lr_at(lr_plan, count), b1=cfg.b1, b2=cfg.b2,
                                         eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask))
