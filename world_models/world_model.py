"""The Drama world model (Wang et al. 2024): a discrete-latent autoencoder whose latents are
predicted one step ahead by a sequence model from `rlts.nn` (Mamba-2 by default).

    obs_t --encoder--> e_t --posterior--> z_t ~ 32 x 32 categorical (straight-through, 1% unimix)
    z_t --decoder--> obs_t (reconstruction)
    x_t = SiLU(RMSNorm(Linear(z_t ++ onehot(a_t))))
    h_t = SequenceModel(x_1..x_t)          backbone by name; parallel forward for training,
                                             recurrent `step` for acting and imagination
    h_t --prior--> z_{t+1};  h_t --> reward_t (255-bin symlog two-hot), termination_t (logit)

Loss = reconstruction (MSE summed over pixels) + reward + termination
       + 1.0 * dynamics KL + 0.1 * representation KL (free bits 1 nat on the batch-mean KL).

The agent's features are s_t = [z_t, h_{t-1}]: the current latent and the sequence model's
summary of everything before it (h_{-1} = 0 at an episode start). The same features are used
in the real environment (z_t from the posterior) and in imagination (z_t from the prior).

Images are 64x64x3 uint8 (conv encoder 16/32/48/64/64 channels, strides 1,2,2,2,2 -> 64x4x4);
vector observations go through an MLP on symlog(obs) and are reconstructed in symlog space.

Drama's code as published differs in a few choices that are options here (`image_norm`,
`head_layers`, `imagine_heads`); the `drama` overlay of tasks/configs/atari.yaml sets them, and
docs/ARCHITECTURE.md lists what still differs.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from rlts.config import check_ranges, param
from rlts.nn import SequenceModel
from rlts.world_models.functions import TwoHot, at_least_float32, kl_losses, sample_straight_through, symexp, symlog, unimix


IMAGE_NORMS = ("group", "batch")
"""The values of `WorldModelConfig.image_norm`."""
IMAGINE_HEADS = ("next", "current")
"""The values of `WorldModelConfig.imagine_heads`."""


@dataclass
class WorldModelConfig:
    """Drama's world model; defaults are the paper's Atari100k settings (about 7M parameters)."""

    backbone: str = "mamba2"
    """Sequence model: mamba2 (Drama), mamba, aaren, transformer or gru."""
    d_model: int = 512
    """Width of the sequence model (h_t)."""
    n_layers: int = 2
    """Blocks in the sequence model."""
    d_state: int = 16
    """mamba / mamba2: SSM state size."""
    expand: int = 2
    """mamba / mamba2: inner width = expand * d_model."""
    headdim: int = 64
    """mamba2: head width."""
    n_heads: int = 8
    """aaren / transformer: attention heads."""
    max_cache: int = 128
    """transformer: tokens its KV cache keeps when acting (a sliding window; >= the training length
    keeps training exact)."""
    n_latents: int = 32
    """Categorical latent variables."""
    n_classes: int = 32
    """Classes per latent variable."""
    unimix: float = 0.01
    """Uniform mixture in the posterior and prior probabilities."""
    channels: Tuple[int, ...] = (16, 32, 48, 64, 64)
    """Image encoder: conv channels (kernel 5, strides 1, 2, 2, 2, 2); the decoder mirrors them."""
    mlp_units: int = 512
    """Vector observations: hidden width of the encoder and decoder MLPs (2 layers each)."""
    head_units: int = 256
    """Hidden width of the reward and termination MLPs (2 layers each)."""
    reward_bins: int = 255
    """Bins of the symlog two-hot reward head (over [-20, 20] in symlog space)."""
    free_bits: float = 1.0
    """KL free bits (nats), applied to the batch-mean KL summed over the latent variables."""
    kl_dynamics: float = 1.0
    """Weight of KL(sg(posterior) || prior)."""
    kl_representation: float = 0.1
    """Weight of KL(posterior || sg(prior))."""
    soft_continuation: bool = False
    """Imagination: continuation flag 1 - P(termination) instead of Drama's hard 1[logit <= 0]
    (a graded signal where terminations are rare, e.g. CartPole)."""
    image_norm: str = param("group", choices=IMAGE_NORMS, missing_as="group")
    """Image encoder and decoder normalisation: group (GroupNorm with one group, i.e. LayerNorm
    over channels and pixels of each frame, after every conv) or batch (Drama's code:
    BatchNorm2d after every conv of the encoder and every transposed conv of the decoder, whose
    linear stem is then followed by BatchNorm2d and SiLU too: 2 x 64 more parameters). BatchNorm
    normalises with the statistics of the batch in the world-model loss (when the model is in
    training mode; momentum 0.1 running statistics are updated there) and with the running
    statistics everywhere else: acting, imagination, open-loop prediction and logged images, as
    Drama's code does by switching the world model to eval() outside its update. Vector
    observations (MLP encoder) are unaffected."""
    head_layers: int = param(2, within="[1, inf)", missing_as=2)
    """Hidden layers of the reward and termination MLPs (Drama's code: 1)."""
    imagine_heads: str = param("next", choices=IMAGINE_HEADS, missing_as="next")
    """Imagination: which sequence output the reward and termination heads read for step i
    (action a_i in state s_i = [z_i, h_{i-1}]). next: h_i, the output after (z_i, a_i), the
    alignment the heads are trained with (reward_t from h_t). current: h_{i-1}, the output s_i
    carries, before a_i (Drama's Mamba imagination, imagine_data2, decodes reward and
    termination from the outputs of the steps before each action, so step i gets the reward and
    termination predicted for the transition into s_i)."""


def backbone_options(cfg: WorldModelConfig) -> dict:
    """The options of `cfg` that its backbone takes."""
    return {
        "mamba2": dict(d_state=cfg.d_state, expand=cfg.expand, headdim=cfg.headdim),
        "mamba": dict(d_state=cfg.d_state, expand=cfg.expand),
        "aaren": dict(n_heads=cfg.n_heads),
        "transformer": dict(n_heads=cfg.n_heads, max_cache=cfg.max_cache),
    }.get(cfg.backbone, {})


def mlp(d_in: int, units: int, d_out: int, layers: int = 2) -> nn.Sequential:
    """`layers` x (Linear -> LayerNorm -> SiLU), then Linear(units, d_out)."""
    mods: List[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(d_in if i == 0 else units, units, bias=False), nn.LayerNorm(units), nn.SiLU()]
    mods.append(nn.Linear(units, d_out))
    return nn.Sequential(*mods)


def norm2d(kind: str, channels: int) -> nn.Module:
    """The normalisation of an image encoder or decoder layer (`WorldModelConfig.image_norm`)."""
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(1, channels)


class ImageEncoder(nn.Module):
    """(N, H, W, 3) uint8 -> (N, C_last * 4 * 4) for 64x64 frames."""

    def __init__(self, channels: Tuple[int, ...], norm: str = "group"):
        super().__init__()
        layers: List[nn.Module] = []
        c_in = 3
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 5, stride=1 if i == 0 else 2, padding=2, bias=False),
                       norm2d(norm, c), nn.SiLU()]
            c_in = c
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.permute(0, 3, 1, 2).to(self.net[0].weight.dtype) / 255.0  # (N, 3, H, W) in [0, 1]
        return self.net(x).flatten(1)


class ImageDecoder(nn.Module):
    """(N, d_latent) -> (N, H, W, 3) in [0, 1] (sigmoid), mirroring ImageEncoder. With
    norm="batch" the linear stem is followed by BatchNorm2d and SiLU (Drama's decoder)."""

    def __init__(self, d_latent: int, channels: Tuple[int, ...], image_size: int, norm: str = "group"):
        super().__init__()
        self.c0, self.s0 = channels[-1], image_size // 2 ** (len(channels) - 1)
        self.fc = nn.Linear(d_latent, self.c0 * self.s0 * self.s0)
        self.stem = nn.Sequential(nn.BatchNorm2d(self.c0), nn.SiLU()) if norm == "batch" else nn.Identity()
        layers: List[nn.Module] = []
        rev = list(channels[::-1])  # 64, 64, 48, 32, 16
        for c_in, c_out in zip(rev[:-1], rev[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                       norm2d(norm, c_out), nn.SiLU()]
        layers.append(nn.Conv2d(rev[-1], 3, 5, padding=2))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.fc(z).view(-1, self.c0, self.s0, self.s0))
        return torch.sigmoid(self.net(x)).permute(0, 2, 3, 1)  # (N, H, W, 3)


class WorldModel(nn.Module):
    def __init__(self, obs_shape: Tuple[int, ...], n_actions: int, cfg: Optional[WorldModelConfig] = None):
        super().__init__()
        cfg = cfg or WorldModelConfig()
        check_ranges(cfg)
        self.cfg, self.obs_shape, self.n_actions = cfg, tuple(obs_shape), n_actions
        self.is_image = len(self.obs_shape) == 3
        d_z = cfg.n_latents * cfg.n_classes
        self.d_z, self.d_feat = d_z, d_z + cfg.d_model
        if self.is_image:
            H, W, C = self.obs_shape
            if C != 3 or H != W or H % 2 ** (len(cfg.channels) - 1):
                raise ValueError(f"WorldModel: image observations must be (S, S, 3) with S divisible by "
                                 f"{2 ** (len(cfg.channels) - 1)}, got {self.obs_shape}")
            self.encoder = ImageEncoder(cfg.channels, cfg.image_norm)
            d_embed = cfg.channels[-1] * (H // 2 ** (len(cfg.channels) - 1)) ** 2
            self.decoder = ImageDecoder(d_z, cfg.channels, H, cfg.image_norm)
        elif len(self.obs_shape) == 1:
            self.encoder = mlp(self.obs_shape[0], cfg.mlp_units, cfg.mlp_units)
            d_embed = cfg.mlp_units
            self.decoder = mlp(d_z, cfg.mlp_units, self.obs_shape[0])
        else:
            raise ValueError(f"WorldModel: observations must be images (H, W, 3) or vectors (D,), got {self.obs_shape}")
        self.posterior = nn.Linear(d_embed, d_z)
        self.prior = nn.Linear(cfg.d_model, d_z)
        self.in_layer = nn.Sequential(nn.Linear(d_z + n_actions, cfg.d_model, bias=False),
                                      nn.RMSNorm(cfg.d_model), nn.SiLU())
        self.sequence = SequenceModel(cfg.backbone, d_model=cfg.d_model, n_layers=cfg.n_layers,
                                      **backbone_options(cfg))
        self.reward_head = mlp(cfg.d_model, cfg.head_units, cfg.reward_bins, cfg.head_layers)
        self.termination_head = mlp(cfg.d_model, cfg.head_units, 1, cfg.head_layers)
        self.twohot = TwoHot(cfg.reward_bins, -20.0, 20.0)

    # ---- pieces ------------------------------------------------------------------------
    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """obs (..., *obs_shape) -> posterior logits (..., n_latents, n_classes), unimix applied."""
        lead = obs.shape[: obs.dim() - len(self.obs_shape)]
        x = obs.reshape(-1, *self.obs_shape)
        e = self.encoder(x if self.is_image else symlog(x.to(self.prior.weight.dtype)))
        return self._latent_logits(self.posterior(e)).reshape(*lead, self.cfg.n_latents, self.cfg.n_classes)

    def prior_logits(self, h: torch.Tensor) -> torch.Tensor:
        """h (..., d_model) -> prior logits (..., n_latents, n_classes) for the next latent."""
        return self._latent_logits(self.prior(h))

    def _latent_logits(self, raw: torch.Tensor) -> torch.Tensor:
        return unimix(raw.unflatten(-1, (self.cfg.n_latents, self.cfg.n_classes)), self.cfg.unimix)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """Straight-through one-hot sample, flattened: (..., n_latents, n_classes) -> (..., d_z)."""
        return sample_straight_through(logits).flatten(-2)

    def seq_input(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """z (..., d_z), action (...) long -> x (..., d_model)."""
        a = F.one_hot(action.long(), self.n_actions).to(z.dtype)
        return self.in_layer(torch.cat([z, a], dim=-1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., d_z) -> reconstruction (..., *obs_shape): pixels in [0, 1] or symlog(vector)."""
        lead = z.shape[:-1]
        return self.decoder(z.reshape(-1, self.d_z)).reshape(*lead, *self.obs_shape)

    def reward(self, h: torch.Tensor) -> torch.Tensor:
        return self.twohot.decode(self.reward_head(h))

    def continues(self, h: torch.Tensor) -> torch.Tensor:
        """Predicted continuation: 1 where the termination logit is <= 0, else 0 (Drama), or
        1 - P(termination) with `soft_continuation`."""
        logit = self.termination_head(h).squeeze(-1)
        return torch.sigmoid(-logit) if self.cfg.soft_continuation else (logit <= 0).to(logit.dtype)

    def obs_target(self, obs: torch.Tensor) -> torch.Tensor:
        dtype = self.prior.weight.dtype
        return obs.to(dtype) / 255.0 if self.is_image else symlog(obs.to(dtype))

    # ---- training ------------------------------------------------------------------------
    def loss(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
             terminated: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """One world-model loss on a batch of windows: obs (B, L, *obs_shape), action (B, L),
        reward (B, L), terminated (B, L) -> (loss, metrics)."""
        B, L = action.shape
        post = self.encode(obs)                                   # (B, L, K, C)
        z = self.sample(post)                                     # (B, L, d_z)
        recon = self.decode(z)                                    # (B, L, *obs_shape)
        dims = tuple(range(2, recon.dim()))
        target = self.obs_target(obs)                             # in the parameters' dtype
        # the losses in float32 (float64 for a float64 model) also under bfloat16 autocast
        rec_loss = (recon.to(target.dtype) - target).pow(2).sum(dims).mean()
        h, _ = self.sequence(self.seq_input(z, action))            # (B, L, D)
        reward_loss = self.twohot.loss(self.reward_head(h), reward.float()).mean()
        term_logit = at_least_float32(self.termination_head(h).squeeze(-1))  # (B, L)
        term_loss = F.binary_cross_entropy_with_logits(term_logit, terminated.float())
        dyn, rep, kl = kl_losses(post[:, 1:], self.prior_logits(h[:, :-1]), self.cfg.free_bits)
        loss = rec_loss + reward_loss + term_loss + self.cfg.kl_dynamics * dyn + self.cfg.kl_representation * rep
        metrics = {"wm/loss": loss.detach(), "wm/reconstruction": rec_loss.detach(),
                   "wm/reward": reward_loss.detach(), "wm/termination": term_loss.detach(),
                   "wm/kl_dynamics": dyn.detach(), "wm/kl_representation": rep.detach(), "wm/kl": kl}
        return loss, metrics

    # ---- acting and imagination ---------------------------------------------------------------
    @contextlib.contextmanager
    def running_norm_stats(self):
        """Inside: every BatchNorm layer (`image_norm="batch"`) normalises with its running
        statistics and leaves them unchanged, whatever the model's mode; its mode is restored
        after. Acting, imagination, open-loop prediction and logged images run inside (Drama's
        code switches its world model to eval() for them). Nothing to do without BatchNorm."""
        norms = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d) and m.training] \
            if self.cfg.image_norm == "batch" else []
        for m in norms:
            m.train(False)
        try:
            yield
        finally:
            for m in norms:
                m.train(True)

    def initial_state(self, batch_size: int, device: torch.device) -> Tuple[torch.Tensor, list]:
        """(h_prev, sequence state) at an episode start: h_{-1} = 0 and an empty sequence state."""
        dtype = next(self.parameters()).dtype
        return (torch.zeros(batch_size, self.cfg.d_model, device=device, dtype=dtype),
                self.sequence.init_state(batch_size, device, dtype))

    @torch.no_grad()
    def observe(self, obs: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        """Features s_t = [z_t, h_{t-1}] of real observations: obs (N, *obs_shape) -> (N, d_feat)."""
        with self.running_norm_stats():
            return torch.cat([self.sample(self.encode(obs)), h_prev], dim=-1)

    @torch.no_grad()
    def predict_features(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Drama's acting features from the last k real steps: obs (N, k, *obs_shape) and their
        actions (N, k), k >= 1, are read from an empty sequence state with the parallel forward;
        with h the output after the last step, -> (N, d_feat) = [z ~ prior(h), h]: the latent of
        the next (not yet read) frame sampled from the prior, beside h."""
        if action.dim() != 2 or action.shape[1] < 1 or obs.shape[:2] != action.shape:
            raise ValueError(f"predict_features: need obs (N, k, *obs_shape) and action (N, k) with k >= 1, "
                             f"got {tuple(obs.shape)} and {tuple(action.shape)}")
        with self.running_norm_stats():
            z = self.sample(self.encode(obs))                                # (N, k, d_z)
            h = self.sequence(self.seq_input(z, action))[0][:, -1]           # (N, D)
            return torch.cat([self.sample(self.prior_logits(h)), h], dim=-1)

    @torch.no_grad()
    def advance(self, feat: torch.Tensor, action: torch.Tensor, seq_state: list) -> Tuple[torch.Tensor, list]:
        """Feed (z_t, a_t) to the sequence model, one recurrent step: -> (h_t, new state)."""
        z = feat[:, : self.d_z]
        return self.sequence.step(self.seq_input(z, action), seq_state)

    @torch.no_grad()
    def imagine(self, policy, obs: torch.Tensor, action: torch.Tensor, horizon: int) -> Dict[str, torch.Tensor]:
        """Roll out `policy` (features (N, d_feat) -> actions (N,)) for `horizon` steps from
        real contexts obs (B, C, *obs_shape), action (B, C): the context is read with the
        parallel forward, the rollout runs with the recurrent `step` (constant memory per step).

        Returns feat (B, H+1, d_feat), action (B, H), reward (B, H), cont (B, H); step i's
        reward and continuation result from action i taken in state feat i (the heads read the
        sequence output after it); with `imagine_heads="current"` the heads read feat i's own
        output h_{i-1} instead (Drama's alignment)."""
        with self.running_norm_stats():
            z_ctx = self.sample(self.encode(obs))                 # (B, C, d_z)
        h, state = self.sequence(self.seq_input(z_ctx, action))   # (B, C, D)
        h_prev = h[:, -1]
        z = self.sample(self.prior_logits(h_prev))                # (B, d_z): the frame after the context
        feats, actions, rewards, conts = [], [], [], []
        current = self.cfg.imagine_heads == "current"
        for _ in range(horizon):
            feat = torch.cat([z, h_prev], dim=-1)
            a = policy(feat)
            h_feat = h_prev
            h_prev, state = self.sequence.step(self.seq_input(z, a), state)
            h_heads = h_feat if current else h_prev
            feats.append(feat)
            actions.append(a)
            rewards.append(self.reward(h_heads))
            conts.append(self.continues(h_heads))
            z = self.sample(self.prior_logits(h_prev))
        feats.append(torch.cat([z, h_prev], dim=-1))
        return {"feat": torch.stack(feats, 1), "action": torch.stack(actions, 1),
                "reward": torch.stack(rewards, 1), "cont": torch.stack(conts, 1)}

    @torch.no_grad()
    def open_loop(self, obs: torch.Tensor, action: torch.Tensor, context: int) -> Dict[str, torch.Tensor]:
        """DreamerV3's open-loop prediction: read the first `context` real observations of
        obs (B, T, *obs_shape) with their actions (B, T), then predict every later observation
        from the real actions alone (latents sampled from the prior, never from the frames).

        Returns recon (B, T, *obs_shape): the decoded latents (reconstructions for t < context,
        imagined observations after; pixels in [0, 1], or the vector in the observation's units),
        and reward, cont (B, T): the predicted reward and continuation of action t in state t."""
        B, T = action.shape
        if not 1 <= context <= T:
            raise ValueError(f"open_loop: context must lie in [1, {T}] (the steps given), got {context}")
        with self.running_norm_stats():
            z_ctx = self.sample(self.encode(obs[:, :context]))                   # (B, C, d_z)
        h, state = self.sequence(self.seq_input(z_ctx, action[:, :context]))     # (B, C, D)
        zs, hs = list(z_ctx.unbind(1)), list(h.unbind(1))
        for t in range(context, T):
            z = self.sample(self.prior_logits(hs[-1]))                           # frame t, imagined
            h_t, state = self.sequence.step(self.seq_input(z, action[:, t]), state)
            zs.append(z)
            hs.append(h_t)
        z, h = torch.stack(zs, 1), torch.stack(hs, 1)                            # (B, T, d_z), (B, T, D)
        with self.running_norm_stats():
            recon = self.decode(z)
        if not self.is_image:
            recon = symexp(recon)
        return {"recon": recon, "reward": self.reward(h), "cont": self.continues(h)}
