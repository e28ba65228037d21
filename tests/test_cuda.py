"""The GPU: the compiled Triton kernels of the four scan ops (forward, gradients of a random
projection of every output with respect to every differentiable input, and the one-token steps)
on CUDA against the CPU PyTorch path in float64; every backbone's SequenceModel on CUDA against
the same model on the CPU (fp32 outputs and parameter gradients, and a bf16-autocast forward);
one Drama learner update on CUDA with and without bf16 autocast.

Skipped without a CUDA device, and when conftest.py runs Triton in its interpreter
(RLTS_TRITON_INTERPRET=1): these tests are about the compiled kernels.
"""
import numpy as np
import pytest
import torch

from _backbones import TINY_OPTIONS
from rlts.kernels import interpret_mode, triton_available
from rlts.kernels.linear import linear_scan, linear_scan_step
from rlts.kernels.selective import selective_scan, selective_state_update
from rlts.kernels.softmax import softmax_scan, softmax_scan_step
from rlts.kernels.ssd import ssd_scan, ssd_state_update


def _skip_reason():
    if not torch.cuda.is_available():
        return "needs a CUDA device (the compiled Triton kernels take CUDA tensors)"
    if not triton_available():
        return "needs triton"
    if interpret_mode():
        return "Triton runs in its interpreter (RLTS_TRITON_INTERPRET=1); these tests check the compiled kernels"
    return None


_REASON = _skip_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")

DEV = torch.device("cuda")
CPU = torch.device("cpu")
F64 = torch.float64
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["fp32", "bf16", "fp16"]
LENGTHS = [1, 37, 1000, 4096]

# Allowed max |error| / max(max |reference|, 1), per input dtype: (outputs, gradients), the
# reference being the CPU PyTorch path in float64 on the same (rounded) inputs. The kernels
# accumulate in fp32 whatever the input dtype, but matmuls may run on tf32 tensor cores (the
# SSD kernels' tl.dot always do, as mamba-ssm's; cuBLAS and cuDNN where torch allows it):
# tf32 keeps 10 mantissa bits (unit roundoff 4.9e-4), so fp32 results agree to ~1e-3, not
# ~1e-6. bf16 and fp16 outputs and gradients are rounded to 8 and 11 bits (3.9e-3, 4.9e-4).
# Gradients chain a few more roundings than outputs: twice the tolerance.
TOL = {
    torch.float32: (5e-3, 1e-2),
    torch.bfloat16: (3e-2, 6e-2),
    torch.float16: (1e-2, 2e-2),
}
# Whole models, CUDA against the CPU: fp32 (tf32 matmuls and convolutions, tf32 SSD kernel),
# outputs and parameter gradients; the bf16-autocast forward against the CPU's fp32 one (every
# matmul's inputs and outputs rounded to bf16, through the layers); the learner's losses and
# gradients on one fixed batch.
MODEL_TOL = {"fp32": 1e-2, "grad": 2e-2, "autocast": 1e-1, "learner": 3e-2}
# Errors of a model's gradients are measured against max(max |reference|, GRAD_FLOOR): small
# gradients count relative to their own size, down to this floor.
GRAD_FLOOR = 1e-3


def ids(prefix):
    return lambda v: f"{prefix}{v}"


def assert_close(got, ref, tol, what, floor=1.0):
    """max |got - ref| <= tol * max(max |ref|, floor), got on any device, ref on the CPU."""
    got, ref = got.detach().to(CPU, F64), ref.detach().to(CPU, F64)
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    err = (got - ref).abs().max().item() if ref.numel() else 0.0
    scale = max(ref.abs().max().item() if ref.numel() else 0.0, floor)
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} * {scale:.3g}"


def rounded(inputs, dtypes):
    """{name: tensor} in its test dtype (dtypes[name]) on the CPU, None kept."""
    return {k: None if v is None else v.to(dtypes[k]) for k, v in inputs.items()}


def leaves(inputs, device, dtype=None):
    """Fresh leaves requiring grad on `device` (in `dtype` if given, else their own)."""
    return {k: None if v is None else v.detach().to(device, dtype or v.dtype).requires_grad_()
            for k, v in inputs.items()}


def projection(outputs, seed=1):
    """Random float64 weights (on the CPU) for each output, rounded to the output's dtype, so
    that the CUDA side and the float64 reference get the same output gradients."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=g, dtype=F64).to(o.dtype).to(F64) for o in outputs]


def project(outputs, weights):
    return sum((o.double() * w.to(o.device)).sum() for o, w in zip(outputs, weights))


def check_op(fn, inputs, dtype, what):
    """fn(**inputs) -> tuple of outputs: on CUDA (the Triton kernels) against the CPU PyTorch
    path in float64 on the same rounded inputs; outputs and the gradients of a random
    projection of all of them with respect to every input."""
    tol_out, tol_grad = TOL[dtype]
    dev_in = leaves(inputs, DEV)
    ref_in = leaves(inputs, CPU, F64)
    outs = fn(**dev_in, backend="triton")
    refs = fn(**ref_in, backend="torch")
    weights = projection(outs)
    names = [k for k, v in dev_in.items() if v is not None]
    grads = torch.autograd.grad(project(outs, weights), [dev_in[k] for k in names])
    ref_grads = torch.autograd.grad(project(refs, weights), [ref_in[k] for k in names])
    for i, (o, r) in enumerate(zip(outs, refs)):
        assert o.device.type == DEV.type, f"{what}: output {i} on {o.device}"
        assert_close(o, r, tol_out, f"{what}: output {i}")
    for k, g, r in zip(names, grads, ref_grads):
        assert g.dtype == inputs[k].dtype, f"{what}: grad {k} dtype {g.dtype}"
        assert_close(g, r, tol_grad, f"{what}: grad {k}")


# --------------------------------------------------------------------------- linear_scan
@pytest.mark.parametrize("L", LENGTHS, ids=ids("L"))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reverse,shared", [(False, False), (True, True)], ids=["fwd", "rev-shared"])
def test_linear_scan(L, dtype, reverse, shared):
    B, D = 2, 40  # D > BLOCK_D = 32: two channel blocks
    a = torch.empty(B, L, 1 if shared else D, dtype=F64).uniform_(-0.95, 0.95)  # |h| stays bounded
    a[torch.rand(a.shape) < 0.05] = 0.0
    x = {"a": a, "b": torch.randn(B, L, D, dtype=F64), "h0": torch.randn(B, D, dtype=F64)}
    x = rounded(x, dict.fromkeys(x, dtype))

    def fn(a, b, h0, backend):
        return linear_scan(a, b, h0, reverse=reverse, return_last=True, backend=backend)

    check_op(fn, x, dtype, f"linear_scan L={L} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_linear_scan_step(dtype):
    B, D, T = 3, 40, 20
    a = torch.empty(B, T, D, dtype=F64).uniform_(-0.95, 0.95).to(dtype)
    b = torch.randn(B, T, D, dtype=F64).to(dtype)
    h, h_ref = None, None
    for t in range(T):
        h = linear_scan_step(a[:, t].to(DEV), b[:, t].to(DEV), h, backend="triton")
        h_ref = linear_scan_step(a[:, t].double(), b[:, t].double(), h_ref)
        assert h.dtype == dtype and h.device.type == DEV.type
        h_ref = h_ref.to(dtype).double()  # the step returns the input dtype: round as the GPU does
        assert_close(h, h_ref, TOL[dtype][0], f"linear_scan_step t={t}")
    scan = linear_scan(a.to(DEV), b.to(DEV), backend="triton")
    assert_close(scan[:, -1], h.float(), 2 * TOL[dtype][0], "step chain vs scan")


# --------------------------------------------------------------------------- softmax_scan
def softmax_state(B, H, E, dtype):
    """A state (m, u, w) in the accumulation dtype after 5 random tokens."""
    cd = F64 if dtype == F64 else torch.float32
    _, state = softmax_scan(torch.randn(B, H, 5, dtype=F64) * 3, torch.randn(B, H, 5, E, dtype=F64),
                            return_state=True, backend="torch")
    return [t.to(cd) for t in state]


def softmax_fn(with_state):
    def fn(s, v, m0=None, u0=None, w0=None, backend="auto"):
        state = (m0, u0, w0) if with_state else None
        o, (m, u, w) = softmax_scan(s, v, state, return_state=True, backend=backend)
        # the state only through representation-free quantities (m is a constant stabiliser)
        return o, w / u.unsqueeze(-1), m + u.log()
    return fn


@pytest.mark.parametrize("L", LENGTHS, ids=ids("L"))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("with_state", [False, True], ids=["empty", "state"])
def test_softmax_scan(L, dtype, with_state):
    B, H, E = 2, 3, 40  # E > 32: two value blocks
    x = {"s": (torch.randn(B, H, L, dtype=F64) * 3).to(dtype), "v": torch.randn(B, H, L, E, dtype=F64).to(dtype)}
    if with_state:
        x["m0"], x["u0"], x["w0"] = softmax_state(B, H, E, dtype)
    check_op(softmax_fn(with_state), x, dtype, f"softmax_scan L={L} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softmax_scan_step(dtype):
    B, H, E, T = 2, 3, 40, 20
    s = (torch.randn(B, H, T, dtype=F64) * 3).to(dtype)
    v = torch.randn(B, H, T, E, dtype=F64).to(dtype)
    state, state_ref = None, None
    for t in range(T):
        o, state = softmax_scan_step(s[..., t].to(DEV), v[..., t, :].to(DEV), state, backend="triton")
        o_ref, state_ref = softmax_scan_step(s[..., t].double(), v[..., t, :].double(), state_ref)
        assert o.dtype == dtype and o.device.type == DEV.type and state[1].dtype == torch.float32
        assert_close(o, o_ref, TOL[dtype][0], f"softmax_scan_step t={t}")
    o_scan = softmax_scan(s.to(DEV), v.to(DEV), backend="triton")
    assert_close(o_scan[..., -1, :], o.float(), 2 * TOL[dtype][0], "step chain vs scan")


# --------------------------------------------------------------------------- selective_scan
def selective_inputs(L, dtype, batch=2, dim=24, N=8, G=2):
    """Activations in `dtype`, parameters (A, D, delta_bias) and the initial state in fp32, as
    in a model. dim 24 with G = 2: 12 channels per group, not a power of two."""
    x = {
        "u": torch.randn(batch, dim, L), "delta": torch.randn(batch, dim, L) * 0.5,
        "A": -torch.rand(dim, N).add(0.2), "B": torch.randn(batch, G, N, L), "C": torch.randn(batch, G, N, L),
        "D": torch.randn(dim), "z": torch.randn(batch, dim, L), "delta_bias": torch.randn(dim) * 0.5,
        "initial_state": torch.randn(batch, dim, N) * 0.5,
    }
    params = ("A", "D", "delta_bias", "initial_state")
    return rounded(x, {k: torch.float32 if k in params else dtype for k in x})


def selective_fn(u, delta, A, B, C, D, z, delta_bias, initial_state, backend):
    return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=True,
                          return_last_state=True, initial_state=initial_state, backend=backend)


@pytest.mark.parametrize("L", LENGTHS, ids=ids("L"))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_selective_scan(L, dtype):
    check_op(selective_fn, selective_inputs(L, dtype), dtype, f"selective_scan L={L} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("heads", [False, True], ids=["dim", "multihead"])
def test_selective_state_update(dtype, heads):
    """T steps (the Triton step kernel on CUDA) against the CPU step in float64, the state (fp32,
    updated in place) and the outputs."""
    batch, N, G, T = 3, 8, 2, 12
    shape = (4, 6) if heads else (24,)          # (nheads, headdim) or (dim,)
    par = {"A": -torch.rand(*shape, N).add(0.2), "D": torch.randn(*shape), "dt_bias": torch.randn(*shape) * 0.5}
    state = torch.randn(batch, *shape, N) * 0.5
    state_ref = state.double()
    state = state.to(DEV)
    for t in range(T):
        act = {"x": torch.randn(batch, *shape), "dt": torch.randn(batch, *shape) * 0.5,
               "z": torch.randn(batch, *shape), "B": torch.randn(batch, G, N), "C": torch.randn(batch, G, N)}
        act = rounded(act, dict.fromkeys(act, dtype))
        y = selective_state_update(state, **{k: v.to(DEV) for k, v in {**act, **par}.items()}, dt_softplus=True,
                                   backend="triton")
        y_ref = selective_state_update(state_ref, **{k: v.double() for k, v in {**act, **par}.items()},
                                       dt_softplus=True, backend="torch")
        assert y.dtype == dtype and state.dtype == torch.float32
        assert_close(y, y_ref, TOL[dtype][0], f"selective_state_update y t={t}")
        assert_close(state, state_ref, TOL[torch.float32][0], f"selective_state_update state t={t}")


# --------------------------------------------------------------------------- ssd_scan
def ssd_inputs(L, dtype, b=2, h=4, p=16, g=2, n=16):
    """Activations in `dtype`, parameters (A, D, dt_bias) and the initial states in fp32."""
    x = {
        "x": torch.randn(b, L, h, p), "dt": torch.randn(b, L, h) * 0.5 - 1.0,
        "A": -torch.exp(torch.randn(h) * 0.5), "B": torch.randn(b, L, g, n), "C": torch.randn(b, L, g, n),
        "D": torch.randn(h, p), "z": torch.randn(b, L, h, p), "dt_bias": torch.randn(h) * 0.5,
        "initial_states": torch.randn(b, h, p, n) * 0.5,
    }
    params = ("A", "D", "dt_bias", "initial_states")
    return rounded(x, {k: torch.float32 if k in params else dtype for k in x})


def ssd_fn(x, dt, A, B, C, D, z, dt_bias, initial_states, backend):
    return ssd_scan(x, dt, A, B, C, 64, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
                    dt_softplus=True, return_final_states=True, backend=backend)


@pytest.mark.parametrize("L", LENGTHS, ids=ids("L"))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_ssd_scan(L, dtype):
    check_op(ssd_fn, ssd_inputs(L, dtype), dtype, f"ssd_scan L={L} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_ssd_state_update(dtype):
    b, h, p, g, n, T = 3, 4, 16, 2, 16, 12
    par = {"A": -torch.exp(torch.randn(h) * 0.5), "D": torch.randn(h), "dt_bias": torch.randn(h) * 0.5}
    state = torch.randn(b, h, p, n) * 0.5
    state_ref = state.double()
    state = state.to(DEV)
    for t in range(T):
        act = {"x": torch.randn(b, h, p), "dt": torch.randn(b, h) * 0.5 - 1.0, "z": torch.randn(b, h, p),
               "B": torch.randn(b, g, n), "C": torch.randn(b, g, n)}
        act = rounded(act, dict.fromkeys(act, dtype))
        y = ssd_state_update(state, **{k: v.to(DEV) for k, v in {**act, **par}.items()}, dt_softplus=True,
                             backend="triton")
        y_ref = ssd_state_update(state_ref, **{k: v.double() for k, v in {**act, **par}.items()},
                                 dt_softplus=True, backend="torch")
        assert y.dtype == dtype and state.dtype == torch.float32
        assert_close(y, y_ref, TOL[dtype][0], f"ssd_state_update y t={t}")
        assert_close(state, state_ref, TOL[torch.float32][0], f"ssd_state_update state t={t}")


# --------------------------------------------------------------------------- backbones
def tiny_model(backbone, seed=0):
    from rlts.nn import SequenceModel

    torch.manual_seed(seed)
    return SequenceModel(backbone, d_model=16, n_layers=2, d_input=5, **TINY_OPTIONS[backbone])


@pytest.mark.parametrize("backbone", sorted(TINY_OPTIONS))
def test_sequence_model_matches_cpu(backbone):
    """fp32 outputs, final states and parameter gradients of one model on CUDA (Triton kernels,
    cuDNN) and on the CPU, over two chained pieces; then a bf16-autocast forward on CUDA against
    the CPU's fp32 one, within a loose tolerance."""
    cpu = tiny_model(backbone)
    gpu = tiny_model(backbone).to(DEV)
    x = torch.randn(3, 45, 5)
    w = torch.randn(3, 45, 16)

    def run(model, device):
        y1, state = model(x[:, :20].to(device))
        y2, state = model(x[:, 20:].to(device), state)
        y = torch.cat([y1, y2], 1)
        grads = torch.autograd.grad((y * w.to(device)).sum(), list(model.parameters()))
        return y, grads

    y_gpu, g_gpu = run(gpu, DEV)
    y_cpu, g_cpu = run(cpu, CPU)
    assert y_gpu.device.type == DEV.type and y_gpu.dtype == torch.float32
    assert_close(y_gpu, y_cpu, MODEL_TOL["fp32"], f"{backbone}: output")
    for (name, _), a, b in zip(cpu.named_parameters(), g_gpu, g_cpu):
        assert_close(a, b, MODEL_TOL["grad"], f"{backbone}: grad {name}", floor=GRAD_FLOOR)

    with torch.no_grad(), torch.autocast(DEV.type, dtype=torch.bfloat16):
        y_bf16, _ = gpu(x.to(DEV))
    assert y_bf16.device.type == DEV.type
    assert_close(y_bf16, y_cpu, MODEL_TOL["autocast"], f"{backbone}: bf16 autocast output")
    step_y, state = [], None
    with torch.no_grad():
        for t in range(6):
            y_t, state = gpu.step(x[:, t].to(DEV), state)
            step_y.append(y_t)
    assert_close(torch.stack(step_y, 1), y_cpu[:, :6], MODEL_TOL["fp32"], f"{backbone}: steps")


# --------------------------------------------------------------------------- the learner
def learner_config(obs_shape, autocast="none", soft=False):
    from rlts.world_models.actor_critic import ActorCriticConfig
    from rlts.world_models.learner import LearnerConfig
    from rlts.world_models.world_model import WorldModelConfig

    wm = WorldModelConfig(d_model=32, n_layers=2, d_state=8, headdim=16, n_heads=4, n_latents=4, n_classes=4,
                          channels=(4, 8, 8, 8, 8), mlp_units=32, head_units=32, soft_continuation=soft)
    agent = ActorCriticConfig(actor_layers=2, actor_units=32, critic_layers=2, critic_units=32)
    return LearnerConfig(world_model=wm, agent=agent, batch_size=3, batch_length=16, imagine_batch=6,
                         imagine_context=4, imagine_horizon=5, wm_lr=1e-3, wm_warmup=1, autocast=autocast)


OBS = {"image": (64, 64, 3), "vector": (5,)}


def filled_buffer(obs_shape, device, steps=60, seed=0):
    from rlts.world_models.replay import ReplayBuffer

    image = len(obs_shape) == 3
    buffer = ReplayBuffer(256, 1, obs_shape, torch.uint8 if image else torch.float32, device=device)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        obs = rng.integers(0, 256, (1, *obs_shape), dtype=np.uint8) if image else rng.normal(size=(1, *obs_shape))
        buffer.add(obs.astype(np.uint8 if image else np.float32), rng.integers(3, size=1), rng.normal(size=1),
                   [bool(rng.random() < 0.05)])
    return buffer


@pytest.mark.parametrize("obs", list(OBS))
@pytest.mark.parametrize("autocast", ["none", "bf16"])
def test_learner_update_on_cuda(obs, autocast):
    """Two updates from a replay buffer on the GPU: finite losses, every model changed,
    parameters and optimiser states still fp32."""
    from rlts.world_models.learner import Learner

    torch.manual_seed(0)
    learner = Learner(OBS[obs], 3, learner_config(OBS[obs], autocast), DEV)
    buffer = filled_buffer(OBS[obs], DEV)
    before = {n: p.detach().clone() for n, p in [*learner.wm.named_parameters(), *learner.ac.named_parameters()]}
    for _ in range(2):
        metrics = learner.update(buffer)
        for k, v in metrics.items():
            assert torch.isfinite(torch.as_tensor(v)).all(), f"{k} = {v}"
    params = dict([*learner.wm.named_parameters(), *learner.ac.named_parameters()])
    assert all(p.dtype == torch.float32 and p.device.type == DEV.type for p in params.values())
    for prefix in ("encoder", "sequence", "decoder", "reward_head", "actor", "critic"):
        moved = [n for n in params if n.startswith(prefix) and not torch.equal(params[n], before[n])]
        assert moved, f"no {prefix} parameter changed"
    for opt in (learner.wm_opt, learner.actor_opt, learner.critic_opt):
        states = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        assert states and all(t.dtype == torch.float32 for t in states if t.is_floating_point())


class FixedBatches:
    """A replay stand-in: the same CPU batch of each size, moved to `device`."""

    def __init__(self, batches, device):
        self.batches, self.device = batches, device

    def sample(self, batch, length, mode):
        return {k: v.to(self.device) for k, v in self.batches[(batch, length)].items()}


@pytest.mark.parametrize("obs", list(OBS))
def test_learner_update_matches_cpu(obs, monkeypatch):
    """One update (world model, then actor-critic) on CUDA equals the same update on the CPU
    within tf32 tolerance: the same initial weights and batches, with the random draws made
    deterministic on both devices (expected latents instead of sampled ones, fixed imagined
    actions, graded continuation), compared through the losses and every gradient."""
    import rlts.world_models.world_model as wm_module
    from rlts.world_models.learner import Learner

    monkeypatch.setattr(wm_module, "sample_straight_through", lambda logits: torch.softmax(logits, -1))
    shape = OBS[obs]
    cfg = learner_config(shape, soft=True)
    torch.manual_seed(0)
    cpu = Learner(shape, 3, cfg, CPU)
    gpu = Learner(shape, 3, cfg, DEV)
    gpu.wm.load_state_dict(cpu.wm.state_dict())
    gpu.ac.load_state_dict(cpu.ac.state_dict())
    buffer = filled_buffer(shape, CPU)
    batches = {(cfg.batch_size, cfg.batch_length): buffer.sample(cfg.batch_size, cfg.batch_length),
               (cfg.imagine_batch, cfg.imagine_context): buffer.sample(cfg.imagine_batch, cfg.imagine_context)}
    actions = torch.randint(0, 3, (cfg.imagine_horizon, cfg.imagine_batch))

    def fixed_policy(feat):
        fixed_policy.t += 1
        return actions[fixed_policy.t - 1].to(feat.device)

    results = {}
    for name, learner in (("cpu", cpu), ("gpu", gpu)):
        fixed_policy.t = 0
        learner.ac.policy = fixed_policy
        metrics = learner.update(FixedBatches(batches, learner.device))
        grads = {n: p.grad for n, p in [*learner.wm.named_parameters(), *learner.ac.named_parameters()]}
        results[name] = metrics, grads
    (m_gpu, g_gpu), (m_cpu, g_cpu) = results["gpu"], results["cpu"]
    assert m_gpu.keys() == m_cpu.keys()
    for k in m_cpu:
        assert_close(torch.as_tensor(m_gpu[k]), torch.as_tensor(m_cpu[k]), MODEL_TOL["learner"], k)
    assert g_gpu.keys() == g_cpu.keys()
    for n in g_cpu:
        assert (g_gpu[n] is None) == (g_cpu[n] is None), n
        if g_cpu[n] is not None:
            assert_close(g_gpu[n], g_cpu[n], MODEL_TOL["learner"], f"grad {n}", floor=GRAD_FLOOR)

