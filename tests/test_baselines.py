"""rlts.baselines: MiniRocket's variant choice, its scores against the ridge's own predictions,
seeding, and its saved state (tensors that load with weights_only=True). The fits use 84
kernels (MiniRocket's fewest) so that the numba compilation dominates the time."""
import numpy as np
import pytest
import torch

from rlts.baselines import (MINIROCKET_MIN_LENGTH, fit_minirocket, minirocket_input, minirocket_scores,
                            minirocket_state, minirocket_variant)
from rlts.data.panel import fit_panel_scaler


def _series(labels, lengths, channels=1, seed=0):
    """Random walks (L_i, C) shifted by 0.5 per class."""
    rng = np.random.default_rng(seed)
    return [np.cumsum(rng.standard_normal((n, channels)), axis=0) + 0.5 * k for k, n in zip(labels, lengths)]


@pytest.mark.parametrize("lengths,channels,variant", [
    ([30, 30], 1, "MiniRocket"), ([30, 30], 3, "MiniRocketMultivariate"),
    ([30, 31], 1, "MiniRocketMultivariateVariable"), ([8, 8], 1, "MiniRocketMultivariateVariable"),
    ([MINIROCKET_MIN_LENGTH] * 2, 2, "MiniRocketMultivariate"),
], ids=["univariate", "multivariate", "unequal", "short", "shortest-equal"])
def test_variant_follows_lengths_and_channels(lengths, channels, variant):
    assert minirocket_variant(lengths, channels) == variant


def test_input_layouts():
    series = _series([0, 1], [5, 5], channels=2)
    arr = minirocket_input(series, "MiniRocketMultivariate")
    assert arr.shape == (2, 2, 5) and np.array_equal(arr[1], series[1].T)          # (N, C, L)
    frames = minirocket_input(_series([0, 1], [4, 6], channels=2), "MiniRocketMultivariateVariable")
    assert [f.shape for f in frames] == [(4, 2), (6, 2)]                              # (L_i, C) each


@pytest.mark.parametrize("seen", [(0, 2), (0, 1, 3)], ids=["binary", "three-classes"])
def test_minirocket_scores_rank_classes_as_the_ridge_predicts(seen):
    """Two classes: the ridge's one decision value d becomes the scores (-d, d); a class with no
    training series (here one between or before the others) scores -inf. The argmax is always
    the classifier's own prediction."""
    rng = np.random.default_rng(len(seen))
    n_classes = max(seen) + 1
    make = lambda k: np.cumsum(rng.standard_normal((30, 1)), axis=0) + 0.5 * k  # noqa: E731  (L, C)
    train_y = np.array(seen)[np.arange(24) % len(seen)]
    train_x = [make(k) for k in train_y]
    test_x = [make(k) for k in np.array(seen)[np.arange(15) % len(seen)]]
    transform, classifier = fit_minirocket(train_x, train_y, "MiniRocket", n_kernels=84, seed=0)
    scores = minirocket_scores(transform, classifier, test_x, "MiniRocket", n_classes)
    features = np.asarray(transform.transform(np.stack([x.T for x in test_x])))
    unseen = [k for k in range(n_classes) if k not in seen]
    assert scores.shape == (15, n_classes) and np.all(scores[:, unseen] == -np.inf)
    assert np.all(np.isfinite(scores[:, list(seen)]))
    assert np.array_equal(scores.argmax(axis=1), classifier.predict(features))
    if len(seen) == 2:
        assert np.array_equal(scores[:, seen[1]], -scores[:, seen[0]])
        assert np.array_equal(scores[:, seen[1]], classifier.decision_function(features))


def test_seed_draws_the_biases():
    y = np.arange(20) % 2
    x = _series(y, [30] * 20)
    params = [fit_minirocket(x, y, "MiniRocket", n_kernels=84, seed=s)[0].parameters for s in (0, 0, 1)]
    biases = [np.asarray(p[-1]) for p in params]
    assert np.array_equal(biases[0], biases[1]) and not np.array_equal(biases[0], biases[2])


def test_state_is_tensors_that_load_weights_only(tmp_path):
    y = np.arange(30) % 3
    x = _series(y, [30] * 30)
    transform, classifier = fit_minirocket(x, y, "MiniRocket", n_kernels=84, seed=0)
    state = minirocket_state(transform, classifier, "MiniRocket", ["a", "b", "c"], fit_panel_scaler(x))
    torch.save(state, tmp_path / "model.pt")
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved["variant"] == "MiniRocket" and saved["classes"] == ["a", "b", "c"]
    assert saved["ridge_coef"].shape == (3, 84) and saved["feature_scale"].shape == (84,)
    assert saved["ridge_intercept"].shape == (3,) and saved["ridge_alpha"] == float(classifier[-1].alpha_)
    assert len(saved["transform_parameters"]) >= 3  # dilations, features per dilation, biases, ...
    # the saved weights give the fitted classifier's decision values
    features = np.asarray(transform.transform(minirocket_input(x, "MiniRocket")))
    d = (features / saved["feature_scale"].numpy()) @ saved["ridge_coef"].numpy().T + saved["ridge_intercept"].numpy()
    np.testing.assert_allclose(d, classifier.decision_function(features), rtol=1e-5, atol=1e-5)  # float32 features


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="unknown MiniRocket variant 'Rocket'"):
        fit_minirocket(_series([0, 1], [30, 30]), np.array([0, 1]), "Rocket")
