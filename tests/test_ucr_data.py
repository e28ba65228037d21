"""rlts.data.ucr (archive datasets and .ts files) and the stratified subsets of rlts.data.panel:
the shipped datasets offline, .ts files written here, and one ValueError naming the file or
dataset for every kind of bad input."""
from pathlib import Path

import numpy as np
import pytest

from rlts.data.panel import stratified_order, stratified_subset
from rlts.data.ucr import load_panels, load_ts, shipped_datasets


def _write_ts(path: Path, rows, classes=("a", "b"), channels: int = 1, header=None) -> Path:
    """A .ts file: the standard header (or `header`) then `rows` after @data."""
    if header is None:
        header = ["@problemName toy", "@timeStamps false", "@missing false",
                  f"@univariate {'true' if channels == 1 else 'false'}", f"@dimensions {channels}",
                  "@equalLength false", f"@classLabel true {' '.join(classes)}"]
    path.write_text("\n".join([*header, "@data", *rows]) + "\n")
    return path


def test_shipped_datasets_are_the_classification_ones():
    names = shipped_datasets()
    assert {"ItalyPowerDemand", "JapaneseVowels", "GunPoint", "BasicMotions"} <= set(names)
    assert "Covid3Month" not in names  # a regression dataset shipped with sktime


def test_shipped_dataset_loads_under_its_canonical_name():
    data = load_panels(dataset="italypowerdemand")
    assert data.source == {"dataset": "ItalyPowerDemand"}
    assert (len(data.train_x), len(data.test_x)) == (67, 1029) == (len(data.train_y), len(data.test_y))
    assert data.train_x[0].shape == (24, 1) and data.train_x[0].dtype == np.float64  # (L, C)
    assert data.classes.tolist() == ["1", "2"] and set(data.test_y.tolist()) == {0, 1}


def test_unequal_multivariate_dataset_keeps_every_length():
    data = load_panels("JapaneseVowels")
    lengths = {x.shape[0] for x in data.train_x + data.test_x}
    assert {x.shape[1] for x in data.train_x} == {12} and min(lengths) < 9 < max(lengths)
    assert len(data.classes) == 9


def test_ts_files_load_with_their_labels(tmp_path):
    train = _write_ts(tmp_path / "t_TRAIN.ts", ["1,2,3:4,5,6:a", "1,2:3,4:b", "0,0,0,1:1,1,1,1:b"], channels=2)
    test = _write_ts(tmp_path / "t_TEST.ts", ["1,2,3,4,5:5,4,3,2,1:b"], channels=2)
    data = load_panels(train_file=str(train), test_file=str(test))
    assert data.source == {"train_file": str(train), "test_file": str(test)}
    assert [x.shape for x in data.train_x] == [(3, 2), (2, 2), (4, 2)]
    np.testing.assert_array_equal(data.train_x[0], [[1, 4], [2, 5], [3, 6]])
    assert data.train_y.tolist() == [0, 1, 1] and data.test_y.tolist() == [1]
    X, y = load_ts(str(train), "train")
    assert len(X) == 3 and list(map(str, y)) == ["a", "b", "b"]


def test_bad_input_is_one_error_naming_it(tmp_path, monkeypatch):
    import sktime.datasets

    good = _write_ts(tmp_path / "good_TRAIN.ts", ["1,2,3:a", "4,5,6:b"])
    with pytest.raises(ValueError, match="train file .*absent.ts does not exist"):
        load_ts(str(tmp_path / "absent.ts"), "train")
    csv = tmp_path / "x.csv"
    csv.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match="test file .*x.csv is not a .ts file: it has no @data line.*'a,b,c'"):
        load_ts(str(csv), "test")
    zebra = _write_ts(tmp_path / "zebra.ts", ["1,2,3:a", "1,2,3:zebra"])
    with pytest.raises(ValueError, match="does not declare: 'zebra' \\(declared: 'a', 'b'\\)"):
        load_ts(str(zebra), "train")
    target = _write_ts(tmp_path / "reg.ts", ["1,2,3:0.5"], header=[
        "@problemName r", "@timeStamps false", "@missing false", "@univariate true", "@dimensions 1",
        "@equalLength true", "@seriesLength 3", "@targetLabel true"])
    with pytest.raises(ValueError, match="reg.ts holds a regression target"):
        load_ts(str(target), "train")
    two = _write_ts(tmp_path / "two_TEST.ts", ["1,2:3,4:a"], channels=2)
    with pytest.raises(ValueError, match="test file .*two_TEST.ts has 2 channels, train file .*good_TRAIN.ts has 1"):
        load_panels(train_file=str(good), test_file=str(two))
    single = _write_ts(tmp_path / "single.ts", ["1,2,3:a", "4,5,6:a"])
    with pytest.raises(ValueError, match="has a single class \\('a'\\)"):
        load_panels(train_file=str(single), test_file=str(single))
    missing = _write_ts(tmp_path / "nan.ts", ["1,2,3:a", "1,?,3:b"])
    with pytest.raises(ValueError, match="train file .*nan.ts: instance 1 has a missing .* time step 1"):
        load_panels(train_file=str(missing), test_file=str(good))
    with pytest.raises(ValueError, match="dataset 'Covid3Month' is a regression problem"):
        load_panels("Covid3Month")

    def offline(name, *args, **kwargs):
        raise RuntimeError(f"could not download {name}")

    monkeypatch.setattr(sktime.datasets, "load_UCR_UEA_dataset", offline)
    with pytest.raises(ValueError, match="dataset 'NoSuchSet' is not shipped .*could not download NoSuchSet.*GunPoint"):
        load_panels("NoSuchSet")


def test_load_panels_wants_one_source(tmp_path):
    with pytest.raises(ValueError, match="give a dataset name, or both train_file and test_file"):
        load_panels(train_file="a.ts")
    with pytest.raises(ValueError, match="not both"):
        load_panels("GunPoint", train_file="a.ts", test_file="b.ts")


def test_stratified_order_prefixes_keep_proportions():
    labels = np.array([0] * 40 + [1] * 20 + [2] * 10)
    order = stratified_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(70))
    assert np.bincount(labels[order[:14]], minlength=3).tolist() == [8, 4, 2]
    assert not np.array_equal(order, stratified_order(labels, seed=4))


def test_stratified_subset_keeps_the_original_order():
    labels = np.array([0] * 40 + [1] * 20 + [2] * 10)
    series = [np.full((3, 1), i) for i in range(70)]
    x, y = stratified_subset(series, labels, 14, seed=3)
    keep = np.sort(stratified_order(labels, 3)[:14])
    assert [int(s[0, 0]) for s in x] == keep.tolist() and np.array_equal(y, labels[keep])
    assert np.bincount(y, minlength=3).tolist() == [8, 4, 2]
    for limit in (None, 70, 100):  # all of them
        x, y = stratified_subset(series, labels, limit, seed=3)
        assert len(x) == 70 and y is labels
    with pytest.raises(ValueError, match="limit must be at least 1 or None, got 0"):
        stratified_subset(series, labels, 0, seed=3)
