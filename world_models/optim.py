"""LaProp optimiser (Ziyin et al. 2020), as used by DreamerV3 and Drama.

Unlike Adam, LaProp normalises the gradient by the RMS *before* the momentum: per step
    v  = b2 v + (1 - b2) g^2,            v_hat = v / (1 - b2^t)
    m  = b1 m + (1 - b1) g / (sqrt(v_hat) + eps),   m_hat = m / (1 - b1^t)
    p <- p - lr m_hat
with optional decoupled weight decay p <- p (1 - lr wd) applied before the update.

With `lr_in_momentum=True` the update is the reference implementation's (Ziyin et al.'s code,
which Drama uses): the learning rate of each step enters the momentum, and the bias correction
is the EMA of the learning rates,
    m  = b1 m + (1 - b1) lr_t g / (sqrt(v_hat) + eps),   l = b1 l + (1 - b1) lr_t   (l_0 = 0)
    p <- p - (lr_t / l) m                                  (p <- p - m when lr_t = 0)
The two agree for a constant learning rate; under a changing one (a warm-up) the reference
weighs each normalised gradient by the learning rate of its step.
"""
import torch


class LaProp(torch.optim.Optimizer):
    """LaProp: params, lr, betas=(0.9, 0.999), eps=1e-20, weight_decay=0 (decoupled),
    lr_in_momentum=False (True: the reference implementation's update, module docstring).

    State per parameter: `step` (0-d float32 CPU tensor), `exp_avg` (m), `exp_avg_sq` (v), and
    with `lr_in_momentum` `exp_avg_lr` (l, a Python float). Parameters without a gradient are
    skipped (their state is untouched). Saving and restoring goes through torch's
    Optimizer.state_dict / load_state_dict.
    """

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.999), eps: float = 1e-20,
                 weight_decay: float = 0.0, lr_in_momentum: bool = False):
        if not (isinstance(lr, (int, float)) and lr >= 0.0):
            raise ValueError(f"LaProp: lr must be a number >= 0, got {lr!r}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"LaProp: betas must be two numbers in [0, 1), got {betas!r}")
        if not eps >= 0.0:
            raise ValueError(f"LaProp: eps must be >= 0, got {eps!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"LaProp: weight_decay must be >= 0, got {weight_decay!r}")
        if not isinstance(lr_in_momentum, bool):
            raise ValueError(f"LaProp: lr_in_momentum must be True or False, got {lr_in_momentum!r}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        lr_in_momentum=lr_in_momentum)
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("lr_in_momentum", False)

    @torch.no_grad()
    def step(self, closure=None):
        """One LaProp update of every parameter that has a gradient; returns closure()'s loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            eps, wd = group["eps"], group["weight_decay"]
            lr_in_momentum = group.get("lr_in_momentum", False)
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("LaProp does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"].item()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                denom = (v / (1.0 - beta2 ** t)).sqrt_().add_(eps)  # sqrt(v_hat) + eps
                if wd != 0.0:
                    p.mul_(1.0 - lr * wd)
                if lr_in_momentum:
                    state["exp_avg_lr"] = beta1 * state.get("exp_avg_lr", 0.0) + (1.0 - beta1) * lr
                    m.mul_(beta1).addcdiv_(g, denom, value=(1.0 - beta1) * lr)
                    p.add_(m, alpha=-(lr / state["exp_avg_lr"] if lr != 0.0 else 1.0))
                else:
                    m.mul_(beta1).addcdiv_(g, denom, value=1.0 - beta1)
                    p.add_(m, alpha=-lr / (1.0 - beta1 ** t))
        return loss
