"""rlts.heads.classify: SequenceClassifier, NaN-padding inference, collate_unequal, the pure
loss, predict_proba, and the heads' independence of rlts.data.

The padding test is the important one: every backbone and pooling, float64, a batch of
unequal-length sequences padded with garbage must give each sequence exactly the logits it
gets alone and unpadded (fails if padding leaks in, or if sequences are truncated to the
shortest)."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from rlts.heads.classify import (CLASSIFIER, CLASSIFIER_TRAIN, SequenceClassifier, classification_loss,
                                 collate_unequal, nan_padded_lengths, predict_proba)

F64 = torch.float64
BACKBONES = ["aaren", "mamba", "mamba2", "transformer", "gru"]
OPTIONS = {  # tiny settings that are valid at d_model = 16
    "aaren": dict(n_heads=2),
    "mamba": dict(d_state=4),
    "mamba2": dict(d_state=8, headdim=8, chunk_size=4),  # small chunks: sequences span several
    "transformer": dict(n_heads=2),
    "gru": {},
}
LENGTHS = [9, 3, 1, 6]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(backbone, pooling="last", n_channels=3, n_classes=4, **kw):
    model = SequenceClassifier(n_channels, n_classes, backbone=backbone, d_model=16, n_layers=1,
                               pooling=pooling, **OPTIONS[backbone], **kw)
    if model.stem is not None:  # batch-norm statistics other than the identity (0, 1) at init
        with torch.no_grad():
            for norm in model.stem.norms:
                norm.running_mean.normal_()
                norm.running_var.uniform_(0.5, 2.0)
    return model.double().eval()


def ragged(n_channels=3, lengths=LENGTHS):
    return [torch.randn(n, n_channels, dtype=F64) for n in lengths]


def pad(seqs, fill):
    L = max(s.shape[0] for s in seqs)
    x = torch.full((len(seqs), L, seqs[0].shape[1]), float("nan"), dtype=F64) if fill == "nan" else \
        100.0 * torch.randn(len(seqs), L, seqs[0].shape[1], dtype=F64) + 7.0
    for i, s in enumerate(seqs):
        x[i, :s.shape[0]] = s
    return x


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("stem", ["none", "conv"])
@pytest.mark.parametrize("patch_len", [1, 4])
@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_padded_batch_equals_each_sequence_alone(backbone, pooling, patch_len, stem, bidirectional):
    model = tiny(backbone, pooling, patch_len=patch_len, stem=stem, bidirectional=bidirectional)
    seqs = ragged()
    x = pad(seqs, "garbage")
    lengths = torch.tensor(LENGTHS)
    with torch.no_grad():
        batched = model(x, lengths)
        alone = torch.cat([model(s[None]) for s in seqs])
        # padding really is garbage: without lengths the padded batch gives other logits
        unmasked = model(x, torch.full((len(seqs),), x.shape[1]))
    assert batched.shape == (len(seqs), 4) and batched.dtype == F64
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-12)
    short = [i for i, n in enumerate(LENGTHS) if n < x.shape[1]]
    assert (unmasked[short] - alone[short]).abs().amax(dim=-1).min() > 1e-6


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pooling_reads_the_right_positions(pooling):
    """Independent of the backbone: recompute the pooling from the SequenceModel's outputs."""
    model = tiny("gru", pooling)
    seqs = ragged()
    with torch.no_grad():
        got = model.features(pad(seqs, "garbage"), torch.tensor(LENGTHS))
        for i, s in enumerate(seqs):
            y, _ = model.model(model.embed(s[None]))
            want = y[0, -1] if pooling == "last" else y[0].mean(dim=0)
            torch.testing.assert_close(got[i], want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("patch_len", [1, 4])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_bidirectional_adds_the_reverse_model_on_the_flipped_tokens(pooling, patch_len):
    """Reference per series, unpadded: the forward model on the tokens plus the second model on
    the same tokens flipped in time, each pooled ("last": the reverse model's last output is the
    one at the series' first token)."""
    model = tiny("gru", pooling, patch_len=patch_len, bidirectional=True)
    assert model.model_rev is not None and tiny("gru", pooling).model_rev is None
    seqs = ragged()
    with torch.no_grad():
        got = model.features(pad(seqs, "garbage"), torch.tensor(LENGTHS))
        for i, s in enumerate(seqs):
            n_tok = -(-s.shape[0] // patch_len)
            full = torch.zeros(n_tok * patch_len, s.shape[1], dtype=F64)
            full[n_tok * patch_len - s.shape[0]:] = s
            tokens = model.embed(full.reshape(n_tok, patch_len * s.shape[1])[None])   # (1, T, 16)
            y, _ = model.model(tokens)
            y_rev, _ = model.model_rev(torch.flip(tokens, dims=[1]))
            pool = (lambda h: h[0, -1]) if pooling == "last" else (lambda h: h[0].mean(dim=0))
            torch.testing.assert_close(got[i], pool(y) + pool(y_rev), rtol=0, atol=1e-12)
            # the reverse model is not a no-op: without it the features differ
            assert (got[i] - pool(y)).abs().max() > 1e-6


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_patches_are_tokens_of_consecutive_steps_zero_completed(pooling):
    """patch_len 4: a series of length 9 is 3 tokens, three zero steps + step 0, steps 1-4 and
    5-8 (the last token ends at the last step), each flattened time-major and embedded; pooling
    runs over those tokens only."""
    model = tiny("gru", pooling, patch_len=4)
    seqs = ragged()
    with torch.no_grad():
        got = model.features(pad(seqs, "garbage"), torch.tensor(LENGTHS))
        for i, s in enumerate(seqs):
            n_tok = -(-s.shape[0] // 4)
            full = torch.zeros(n_tok * 4, s.shape[1], dtype=F64)
            full[n_tok * 4 - s.shape[0]:] = s
            tokens = torch.stack([full[4 * k:4 * k + 4].flatten() for k in range(n_tok)])  # (T, 4*C)
            y, _ = model.model(model.embed(tokens[None]))
            want = y[0, -1] if pooling == "last" else y[0].mean(dim=0)
            torch.testing.assert_close(got[i], want, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="patch_len must be >= 1, got 0"):
        SequenceClassifier(3, 2, patch_len=0)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_conv_stem_feeds_the_patches(pooling):
    """stem="conv": the stem's features of each series alone, cut into patches of 4 as the raw
    steps are without a stem, are what the backbone reads."""
    model = tiny("gru", pooling, patch_len=4, stem="conv")
    seqs = ragged()
    with torch.no_grad():
        got = model.features(pad(seqs, "garbage"), torch.tensor(LENGTHS))
        for i, s in enumerate(seqs):
            h = model.stem(s[None], torch.ones(1, s.shape[0], dtype=torch.bool))[0]   # (L_i, 16)
            n_tok = -(-s.shape[0] // 4)
            full = torch.zeros(n_tok * 4, h.shape[1], dtype=F64)
            full[n_tok * 4 - s.shape[0]:] = h
            y, _ = model.model(model.embed(full.reshape(n_tok, 4 * h.shape[1])[None]))
            want = y[0, -1] if pooling == "last" else y[0].mean(dim=0)
            torch.testing.assert_close(got[i], want, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="stem must be one of none, conv, got 'fcn'"):
        SequenceClassifier(3, 2, stem="fcn")


def test_conv_stem_trains_on_padded_batches():
    """Training mode (batch statistics over the valid steps): finite loss and gradients, and
    padding garbage changes nothing."""
    seqs = ragged()
    labels = torch.tensor([0, 1, 2, 3])
    grads = []
    for fill in ("garbage", "nan"):
        torch.manual_seed(0)
        model = tiny("aaren", "mean", stem="conv").train()
        x = pad(seqs, fill)
        batch = (x, labels) if fill == "nan" else (x, torch.tensor(LENGTHS), labels)
        loss, _ = classification_loss(model, batch)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.isfinite(grads[0]).all()
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backbone", ["mamba2", "gru"])
def test_nan_padding_equals_explicit_lengths(backbone):
    model = tiny(backbone, "mean")
    seqs = ragged()
    xn = pad(seqs, "nan")
    assert nan_padded_lengths(xn).tolist() == LENGTHS
    with torch.no_grad():
        inferred = model(xn)
        explicit = model(pad(seqs, "garbage"), torch.tensor(LENGTHS))
    assert torch.isfinite(inferred).all()
    torch.testing.assert_close(inferred, explicit, rtol=0, atol=1e-12)


def test_nan_padding_keeps_gradients_finite():
    model = tiny("mamba", "last").train()
    loss, metrics = classification_loss(model, (pad(ragged(), "nan"), torch.tensor([0, 1, 2, 3])))
    loss.backward()
    assert math.isfinite(metrics["loss"]) and 0.0 <= metrics["accuracy"] <= 1.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_nan_inside_a_series_raises_with_index_and_step():
    model = tiny("gru")
    x = pad(ragged(), "nan")
    x[3, 2, 1] = float("nan")  # one channel, inside sequence 3 (length 6)
    with pytest.raises(ValueError, match=r"batch index 3, time step 2"):
        model(x)
    x = pad(ragged(), "nan")
    x[0, 4, :] = float("nan")  # a whole step, but followed by valid steps
    with pytest.raises(ValueError, match=r"batch index 0, time step 4"):
        model(x)
    x = pad(ragged(), "nan")
    x[1] = float("nan")
    with pytest.raises(ValueError, match=r"batch index 1 is empty"):
        model(x)


def test_bad_inputs_raise():
    model = tiny("gru", n_channels=3)
    with pytest.raises(ValueError, match=r"\(B, L, C\).*n_channels = 3.*\(2, 5\)"):
        model(torch.zeros(2, 5, dtype=F64))
    with pytest.raises(ValueError, match=r"\(B, L, C\).*n_channels = 3.*\(2, 5, 4\)"):
        model(torch.zeros(2, 5, 4, dtype=F64))
    with pytest.raises(ValueError, match=r"shape \(B,\) = \(2,\)"):
        model(torch.zeros(2, 5, 3, dtype=F64), torch.tensor([[5], [5]]))
    with pytest.raises(ValueError, match=r"integer"):
        model(torch.zeros(2, 5, 3, dtype=F64), torch.tensor([5.0, 5.0]))
    with pytest.raises(ValueError, match=r"\[1, 5\]"):
        model(torch.zeros(2, 5, 3, dtype=F64), torch.tensor([6, 2]))
    with pytest.raises(ValueError, match=r"\[1, 5\]"):
        model(torch.zeros(2, 5, 3, dtype=F64), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"pooling"):
        SequenceClassifier(3, 2, backbone="gru", pooling="max")
    with pytest.raises(ValueError, match=r"unknown backbone"):
        SequenceClassifier(3, 2, backbone="lstm")


def test_collate_unequal():
    batch = [(torch.randn(n, 2), c) for n, c in [(5, 0), (2, 1), (7, 1)]]
    x, lengths, labels = collate_unequal(batch)
    assert x.shape == (3, 7, 2) and lengths.tolist() == [5, 2, 7]
    assert labels.tolist() == [0, 1, 1] and labels.dtype == torch.long
    for i, (s, _) in enumerate(batch):
        assert torch.equal(x[i, :len(s)], s) and (x[i, len(s):] == 0).all()
    with pytest.raises(ValueError, match=r"item 1.*\(L_i, C\).*C = 2.*\(4, 3\)"):
        collate_unequal([(torch.randn(5, 2), 0), (torch.randn(4, 3), 1)])
    with pytest.raises(ValueError, match=r"item 0.*\(L_i, C\).*\(4,\)"):
        collate_unequal([(torch.randn(4), 0)])


def test_learns_sine_vs_square():
    """Unequal lengths (12..30 steps), random phase and frequency; d_model 16, CPU, 60 Adam steps."""
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(32):
        n = int(torch.randint(12, 31, (1,), generator=g))
        t = torch.arange(n, dtype=torch.float32)
        w = 0.3 + 0.4 * torch.rand((), generator=g)
        s = torch.sin(w * t + 6.3 * torch.rand((), generator=g))
        label = i % 2
        x = torch.sign(s) if label else s
        items.append(((x + 0.1 * torch.randn(n, generator=g))[:, None], label))
    x, lengths, labels = collate_unequal(items)
    torch.manual_seed(0)
    model = SequenceClassifier(1, 2, backbone="gru", d_model=16, n_layers=1, pooling="mean")
    with torch.no_grad():
        before = (model(x, lengths).argmax(-1) == labels).float().mean().item()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss, metrics = classification_loss(model, (x, lengths, labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x, lengths).argmax(-1) == labels).float().mean().item()
    assert before < 0.8 and acc > 0.9, (before, acc)


def test_trainer_with_collate_unequal(tmp_path):
    """classification_loss and collate_unequal plug into rlts.trainer.Trainer."""
    from rlts.trainer import TrainConfig, Trainer
    data = [(torch.randn(n, 2), n % 2) for n in range(3, 15)]
    model = SequenceClassifier(2, 2, backbone="gru", d_model=16, n_layers=1)
    cfg = TrainConfig(epochs=2, batch_size=4, patience=0, progress=False, device="cpu")
    out = Trainer(model, classification_loss, cfg, tmp_path, collate_fn=collate_unequal).fit(data, data)
    assert out["epochs"] == 2 and math.isfinite(out["best_val_loss"])
    metrics = Trainer(model, classification_loss, cfg, tmp_path / "eval", collate_fn=collate_unequal).evaluate(data)
    assert set(metrics) >= {"loss", "accuracy"} and 0.0 <= metrics["accuracy"] <= 1.0


def test_classification_loss_is_pure():
    """No augmentation, no randomness: the same batch gives the same loss, in training mode too."""
    model = tiny("gru", "mean", n_channels=2, n_classes=3).float().train()
    x, lengths = pad(ragged(2, [7, 4, 9]), "zero").float(), torch.tensor([7, 4, 9])
    batch = (x, lengths, torch.tensor([0, 2, 1]))
    torch.manual_seed(0)
    first = classification_loss(model, batch)[0].item()
    torch.manual_seed(1)
    assert classification_loss(model, batch)[0].item() == first


@pytest.mark.parametrize("by_length", [False, True], ids=["in-order", "by-length"])
def test_predict_proba_is_the_softmax_of_each_series_in_order(by_length):
    model = tiny("mamba", "mean", n_channels=2, n_classes=3)
    seqs = ragged(2, [9, 3, 1, 6, 12, 2, 5])
    data = [(s, -1) for s in seqs]                                       # labels are not read
    model.train()  # predict_proba puts the model in eval mode itself
    proba = predict_proba(model, data, batch_size=3, device=torch.device("cpu"), by_length=by_length)
    assert isinstance(proba, np.ndarray) and proba.dtype == np.float64 and proba.shape == (7, 3)
    assert not model.training
    with torch.no_grad():
        want = torch.cat([torch.softmax(model(s[None]), dim=-1) for s in seqs]).numpy()   # (7, 3) each alone
    np.testing.assert_allclose(proba, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    with pytest.raises(ValueError, match="predict_proba: batch_size must be at least 1, got 0"):
        predict_proba(model, data, batch_size=0)
    with pytest.raises(ValueError, match="predict_proba: the dataset is empty"):
        predict_proba(model, [], batch_size=4)


def test_heads_import_no_data_module():
    """rlts.heads stands below rlts.data: importing every head loads no rlts.data module."""
    code = ("import sys, rlts.heads, rlts.heads.classify, rlts.heads.forecast, rlts.heads.events, "
            "rlts.heads.decision; print(sorted(m for m in sys.modules if m.startswith('rlts.data')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_shared_defaults_build_a_head_and_a_train_config():
    """CLASSIFIER holds head arguments (and the augmentation), CLASSIFIER_TRAIN TrainConfig fields:
    `rlts classify` and rlts.sktime build their model and training from them."""
    import dataclasses

    from rlts.trainer import TrainConfig

    options = {k: v for k, v in dataclasses.asdict(CLASSIFIER).items() if k != "augment"}
    model = SequenceClassifier(2, 3, **options)
    assert model.model_rev is not None and model.stem is not None and model.pooling == CLASSIFIER.pooling
    assert model(torch.randn(2, 9, 2)).shape == (2, 3)
    cfg = TrainConfig(**dataclasses.asdict(CLASSIFIER_TRAIN))
    assert all(getattr(cfg, k) == v for k, v in dataclasses.asdict(CLASSIFIER_TRAIN).items())
    with pytest.raises(dataclasses.FrozenInstanceError):
        CLASSIFIER.d_model = 8
