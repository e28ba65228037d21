"""rlts.data.timeseries: CSV loading and its errors, TSLib split borders, scaler, windows."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rlts.data import StandardScaler, WindowDataset, load_csv, split_borders

ETT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ett"
needs_ett = pytest.mark.skipif(not (ETT / "ETTh1.csv").is_file(),
                               reason=f"ETT data not found at {ETT} (../shared beside the checkout)")


def write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def small_csv(tmp_path, rows=10, name="data.csv"):
    hours = np.datetime64("2020-01-01T00:00") + np.arange(rows) * np.timedelta64(1, "h")
    lines = ["date,a,b,OT"] + [f"{str(t).replace('T', ' ')},{h},{10 * h},{100 + h}"
                               for h, t in enumerate(hours)]
    return write(tmp_path, "\n".join(lines) + "\n", name)


# ----------------------------------------------------------------------------- loading


def test_load_features_modes(tmp_path):
    path = small_csv(tmp_path)
    m = load_csv(path)
    assert m.columns == ["a", "b", "OT"] and m.target == "OT" and m.target_index == 2
    assert m.values.dtype == np.float32 and m.values.shape == (10, 3)
    np.testing.assert_array_equal(m.values[3], [3, 30, 103])
    assert m.dates.name == "date" and str(m.dates[1]) == "2020-01-01 01:00:00"
    assert m.input_columns == [0, 1, 2] and m.target_columns == [0, 1, 2]

    s = load_csv(path, target="a", features="S")
    assert s.columns == ["a"] and s.target_index == 0 and s.values.shape == (10, 1)
    assert s.input_columns == [0] and s.target_columns == [0]

    ms = load_csv(path, target="b", features="MS")
    assert ms.columns == ["a", "b", "OT"] and ms.target_index == 1
    assert ms.input_columns == [0, 1, 2] and ms.target_columns == [1]


def test_date_detection(tmp_path):
    by_name = load_csv(write(tmp_path, "x,Timestamp,y\n1,2020-01-01,2\n3,2020-01-02,4\n"))
    assert by_name.columns == ["x", "y"] and by_name.dates is not None
    by_value = load_csv(write(tmp_path, "when,y\n2021-03-01,1\n2021-03-02,2\n"))
    assert by_value.columns == ["y"] and str(by_value.dates[1].date()) == "2021-03-02"
    none = load_csv(write(tmp_path, "x,y\n1,2\n3,4\n"))
    assert none.dates is None and none.columns == ["x", "y"] and none.target == "y"
    named = load_csv(write(tmp_path, "d,y\n20200101,1\n20200102,2\n"), date_column="d")
    assert named.columns == ["y"] and str(named.dates[1].date()) == "2020-01-02"


def test_fill_interpolates_in_time(tmp_path):
    # Rows at 0, 1, 2, 5 and 6 hours: interpolation is linear in time, not in row number.
    text = ("date,a,b\n"
            "2020-01-01 00:00,,1\n"
            "2020-01-01 01:00,0,\n"
            "2020-01-01 02:00,,\n"
            "2020-01-01 05:00,6,9\n"
            "2020-01-01 06:00,,9\n")
    table = load_csv(write(tmp_path, text), fill=True)
    # a: back-filled start, 02:00 is 1/4 of the way from 01:00 (0) to 05:00 (6), forward-filled end
    # b: 01:00 and 02:00 are 1/5 and 2/5 of the way from 00:00 (1) to 05:00 (9)
    expected = [[0, 1], [0, 2.6], [1.5, 4.2], [6, 9], [6, 9]]
    np.testing.assert_allclose(table.values, expected, rtol=1e-6)
    # without dates: linear in row number
    by_row = load_csv(write(tmp_path, "a,b\n0,1\nnan,2\n,3\n3,4\n", "rows.csv"), fill=True)
    np.testing.assert_allclose(by_row.values[:, 0], [0, 1, 2, 3])


def test_saved_pandas_index_dropped(tmp_path):
    frame = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=5, freq="h"),
                          "a": np.arange(5.0), "OT": np.arange(5.0) + 100})
    frame.to_csv(tmp_path / "saved.csv")  # with its index: an empty header, 0..4
    with pytest.warns(UserWarning, match=r"saved\.csv: dropped column 1 \(no header, values 0\.\.4\)"):
        table = load_csv(tmp_path / "saved.csv")
    assert table.columns == ["a", "OT"] and table.dates.name == "date" and table.values.shape == (5, 2)
    # saved twice (read back without index_col, saved again): two index columns
    pd.read_csv(tmp_path / "saved.csv").to_csv(tmp_path / "twice.csv")
    with pytest.warns(UserWarning, match="dropped column") as caught:
        assert load_csv(tmp_path / "twice.csv").columns == ["a", "OT"]
    assert ["dropped column 1" in str(w.message) for w in caught] == [True, False]
    with pytest.warns(UserWarning, match=r"values 1\.\.3"):
        assert load_csv(write(tmp_path, ",x,y\n1,5,6\n2,7,8\n3,9,10\n")).columns == ["x", "y"]


def test_saved_date_index_is_the_date_column(tmp_path):
    """A frame indexed by (unnamed) dates and saved with its index: the header-less first column
    holds the dates and is found as the date column."""
    frame = pd.DataFrame({"a": np.arange(4.0), "OT": np.arange(4.0) + 10},
                         index=pd.date_range("2020-01-01", periods=4, freq="D"))
    frame.to_csv(tmp_path / "dated.csv")
    table = load_csv(tmp_path / "dated.csv")
    assert table.columns == ["a", "OT"] and str(table.dates[3].date()) == "2020-01-04"
    named = load_csv(tmp_path / "dated.csv", date_column="Unnamed: 0")
    assert named.columns == ["a", "OT"] and (named.dates == table.dates).all()


def test_date_format_day_first(tmp_path):
    path = write(tmp_path, "date,a\n10/01/2020,1\n11/01/2020,2\n12/01/2020,3\n13/01/2020,4\n")
    with pytest.raises(ValueError, match="date_format"):
        load_csv(path)
    table = load_csv(path, date_format="%d/%m/%Y")
    assert [str(d.date()) for d in table.dates] == ["2020-01-10", "2020-01-11", "2020-01-12", "2020-01-13"]
    # detected by value (no date-like name) with the format
    dots = write(tmp_path, "when,a\n31.12.2020,1\n01.01.2021,2\n", "dots.csv")
    other = load_csv(dots, date_format="%d.%m.%Y")
    assert other.columns == ["a"] and str(other.dates[1].date()) == "2021-01-01"


BAD_INPUTS = [
    # (file text or None for a missing file, load_csv kwargs, message pattern)
    (None, {}, r"missing\.csv: file not found"),
    ("", {}, r"bad\.csv: the file is empty"),
    ("date,a,b\n", {}, r"bad\.csv: .*no data rows"),
    ("date,a,b\n2020-01-01,1,2\n", {"target": "c"}, r"bad\.csv: target column 'c' does not exist; columns: a, b"),
    ("date,a,b\n2020-01-01,1,2\n", {"date_column": "t"}, r"bad\.csv: no date column 't'; columns: date, a, b"),
    ("date,a,b\n2020-01-01,1,2\n2020-01-02,1,x7\n", {},
     r"bad\.csv: column 'b' is not numeric: row 2 \(line 3\) holds 'x7'"),
    ("date,a,b\n2020-01-01,1,\n2020-01-02,,\n2020-01-03,3,4\n", {},
     r"bad\.csv: missing values \(NaN\) in columns 'a': 1, 'b': 2; pass fill=True \(--fill on the command line\)"),
    ("date,a,b\n2020-01-01,1,2\n", {"features": "X"}, r"bad\.csv: unknown features mode 'X'"),
    ("d,a\n2020-01-01,1\nnot a date,2\n", {"date_column": "d"},
     r"bad\.csv: date column 'd' holds 'not a date' at row 2 \(line 3\)"),
    ("date,a\n2020-01-01,1\n2020-01-03,2\n2020-01-02,3\n", {},
     r"bad\.csv: dates in column 'date' are not increasing: row 3 \(line 4\)"),
    ("date,a\n2020-01-01,1\n2020-01-01,2\n", {}, r"bad\.csv: date column 'date' holds 2020-01-01 00:00:00 twice"),
    ("date,a\n2020-01-01,1\n2020-01-02,inf\n", {}, r"bad\.csv: column 'a' holds inf at row 2"),
    ("date,a\n2020-01-01,1\n,2\n", {}, r"bad\.csv: date column 'date' has no value at row 2 \(line 3\)"),
    ("date,a\n2020-01-01,1\n", {"target": "date"},
     r"bad\.csv: target column 'date' is the date column; columns: a"),
    # columns without a header that are not a saved row index
    (",a\n5,1\n6,2\n", {}, r"bad\.csv: column 1 has no header \(pandas reads it as 'Unnamed: 0'\); give it a name"),
    ("a,,b\n1,0,2\n3,1,4\n", {}, r"bad\.csv: column 2 has no header .*'Unnamed: 1'"),  # 0, 1 but not leading: not an index
    ("a,b,\n1,2,\n3,4,\n", {}, r"bad\.csv: column 3 has no header"),  # trailing commas
    # day-first dates without / with a wrong date_format
    ("date,a\n10/01/2020,1\n11/01/2020,2\n12/01/2020,3\n13/01/2020,4\n", {},
     r"bad\.csv: dates in column 'date' are not increasing: row 4 .*day-first dates .*date_format='%d/%m/%Y'"),
    ("date,a\n10/01/2020,1\n13/01/2020,2\n", {"date_format": "%m/%d/%Y"},
     r"bad\.csv: date column 'date' holds '13/01/2020' at row 2 \(line 3\), which does not match date_format '%m/%d/%Y'"),
    ("when,a\n10/01/2020,1\n13/01/2020,2\n", {"date_format": "%Y-%m-%d"},
     r"bad\.csv: no column matches date_format '%Y-%m-%d'; columns: when, a"),
    ("date,a\n10/01/2020,1\n", {"date_format": "%Q"}, r"bad\.csv: date_format '%Q' is not a valid format"),
    # other separators
    ("date;a;b\n2020-01-01;1;2\n2020-01-02;3;4\n", {},
     r"bad\.csv: the file reads as one column 'date;a;b'; it looks separated by ';' .*reads comma-separated files"),
    ("date\ta\n2020-01-01\t1\n", {}, r"bad\.csv: .*one column 'date\\ta'; it looks separated by tabs"),
]


@pytest.mark.parametrize("text,kwargs,pattern", BAD_INPUTS, ids=[p[2][:40] for p in BAD_INPUTS])
def test_bad_inputs(tmp_path, text, kwargs, pattern):
    path = tmp_path / "missing.csv" if text is None else write(tmp_path, text, "bad.csv")
    with pytest.raises(ValueError, match=pattern):
        load_csv(path, **kwargs)


# ----------------------------------------------------------------------------- splits


@pytest.mark.parametrize("name,scale", [("ETTh1.csv", 1), ("ETTm1.csv", 4), ("ETTh2.csv", 1)])
@pytest.mark.parametrize("window", [96, 336])
def test_ett_borders_match_tslib(name, scale, window):
    n_rows = 17420 if scale == 1 else 69680
    b = split_borders(n_rows, window, path=f"/any/{name}", horizon=96)
    assert b == {"train": (0, 8640 * scale),
                 "val": (8640 * scale - window, 11520 * scale),
                 "test": (11520 * scale - window, 14400 * scale)}
    assert split_borders(n_rows, window, "ett-hour" if scale == 1 else "ett-minute", horizon=96) == b


def test_ratio_borders(tmp_path):
    # 100 rows: train 70, test 20, val 10; TSLib truncation for 103 rows: 72 / 20 / 11.
    assert split_borders(100, 5, path=tmp_path / "x.csv", horizon=3) == {
        "train": (0, 70), "val": (65, 80), "test": (75, 100)}
    assert split_borders(103, 4, "ratio", horizon=2) == {"train": (0, 72), "val": (68, 83), "test": (79, 103)}
    # ETT-named files with the ratio protocol asked for explicitly
    assert split_borders(1000, 10, "ratio", path="ETTh1.csv", horizon=1)["test"] == (790, 1000)


def test_split_errors():
    with pytest.raises(ValueError, match=r"the val split is too short.*has 15 rows.*window \+ horizon = 5 \+ 11 = 16"):
        split_borders(100, 5, "ratio", horizon=11)
    with pytest.raises(ValueError, match=r"ETTh1\.csv: the ett-hour protocol needs 14400 rows.*has 1000"):
        split_borders(1000, 96, path="ETTh1.csv", horizon=96)
    with pytest.raises(ValueError, match=r"the train split is too short"):
        split_borders(20, 14, "ratio", horizon=1)
    with pytest.raises(ValueError, match=r"unknown split protocol 'weekly'"):
        split_borders(100, 5, "weekly", horizon=1)


# ----------------------------------------------------------------------------- scaler


def test_scaler_train_rows_only_and_round_trip():
    rng = np.random.default_rng(0)
    values = rng.normal(3.0, 2.0, size=(50, 3)).astype(np.float32)
    values[:, 2] = 7.0  # constant column: std floored, no division by zero
    train = (0, 30)
    scaler = StandardScaler().fit(values[slice(*train)])
    np.testing.assert_allclose(scaler.mean, values[:30].astype(np.float64).mean(0))
    np.testing.assert_allclose(scaler.std[:2], values[:30, :2].astype(np.float64).std(0))
    assert scaler.std[2] == 1e-8

    changed = values.copy()
    changed[30:] += 1000.0
    other = StandardScaler().fit(changed[slice(*train)])
    assert other.to_dict() == scaler.to_dict()

    scaled = scaler.transform(values)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled[:30, :2].mean(0), 0, atol=1e-5)
    np.testing.assert_array_equal(scaled[:, 2], 0)
    np.testing.assert_allclose(scaler.inverse_transform(scaled), values, rtol=1e-5, atol=1e-5)

    tensor = torch.from_numpy(values)
    t_scaled = scaler.transform(tensor)
    assert torch.is_tensor(t_scaled) and t_scaled.dtype == torch.float32
    np.testing.assert_allclose(t_scaled.numpy(), scaled, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(scaler.inverse_transform(t_scaled), tensor)
    # one column of predictions (MS mode), batched (B, horizon, 1)
    pred = t_scaled[None, :5, 1:2]
    torch.testing.assert_close(scaler.inverse_transform(pred, columns=[1]), tensor[None, :5, 1:2])
    with pytest.raises(ValueError, match="1 columns, the scaler 3"):
        scaler.transform(pred)


def test_scaler_state_loads_weights_only(tmp_path):
    scaler = StandardScaler().fit(np.arange(12, dtype=np.float32).reshape(6, 2))
    torch.save({"scaler": scaler.to_dict()}, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)["scaler"]
    restored = StandardScaler.from_dict(state)
    x = np.ones((4, 2), np.float32)
    np.testing.assert_array_equal(restored.transform(x), scaler.transform(x))


# ----------------------------------------------------------------------------- windows


def series(rows=40, cols=3):
    return torch.arange(rows * cols, dtype=torch.float32).reshape(rows, cols)


def test_window_count_and_contents():
    values = series()
    ds = WindowDataset(values, window=5, horizon=3, start=4, end=30)
    assert len(ds) == 30 - 4 - 5 - 3 + 1 == 19
    x, y = ds[0]
    assert x.shape == (5, 3) and y.shape == (3, 3) and x.dtype == y.dtype == torch.float32
    torch.testing.assert_close(x, values[4:9])
    torch.testing.assert_close(y, values[9:12])
    x, y = ds[len(ds) - 1]
    torch.testing.assert_close(x, values[22:27])
    torch.testing.assert_close(y, values[27:30])  # the last window ends exactly at `end`
    torch.testing.assert_close(ds[-1][1], y)
    with pytest.raises(IndexError):
        ds[len(ds)]
    # zero-copy: the items are views of the one tensor
    assert x.untyped_storage().data_ptr() == values.untyped_storage().data_ptr()
    assert sum(1 for _ in ds) == len(ds)


def test_window_columns_modes():
    values = series(cols=4)
    s = WindowDataset(values[:, 3:4], 4, 2)  # S mode: the table holds only the target
    assert s[0][0].shape == (4, 1) and s[0][1].shape == (2, 1)
    ms = WindowDataset(values, 4, 2, input_columns=[0, 1, 2, 3], target_columns=[3])
    x, y = ms[7]
    torch.testing.assert_close(x, values[7:11])
    torch.testing.assert_close(y, values[11:13, 3:4])
    assert y.untyped_storage().data_ptr() == values.untyped_storage().data_ptr()
    m = WindowDataset(values.numpy(), 4, 2)
    torch.testing.assert_close(m[3][1], values[7:9])
    picked = WindowDataset(values, 4, 2, input_columns=[2, 0], target_columns=[1, 3])
    x, y = picked[0]
    torch.testing.assert_close(x, values[0:4][:, [2, 0]])
    torch.testing.assert_close(y, values[4:6][:, [1, 3]])


def test_window_errors():
    with pytest.raises(ValueError, match=r"rows \[0, 7\) \(7 rows\) hold no window of window \+ horizon = 5 \+ 3 = 8"):
        WindowDataset(series(), 5, 3, 0, 7)
    assert len(WindowDataset(series(), 5, 3, 0, 8)) == 1
    with pytest.raises(ValueError, match="not inside"):
        WindowDataset(series(), 5, 3, 0, 41)
    with pytest.raises(ValueError, match="out of range"):
        WindowDataset(series(), 5, 3, target_columns=[3])


def test_pipeline_on_csv(tmp_path):
    path = small_csv(tmp_path, rows=60)
    table = load_csv(path, features="MS")
    b = split_borders(len(table), 6, path=table.path, horizon=2)
    scaler = StandardScaler().fit(table.values[slice(*b["train"])])
    values = torch.from_numpy(scaler.transform(table.values))
    test = WindowDataset(values, 6, 2, *b["test"], table.input_columns, table.target_columns)
    assert len(test) == b["test"][1] - b["test"][0] - 6 - 2 + 1
    loader = torch.utils.data.DataLoader(test, batch_size=4)
    x, y = next(iter(loader))
    assert x.shape == (4, 6, 3) and y.shape == (4, 2, 1)


# ----------------------------------------------------------------------------- ETT (../shared)


@needs_ett
def test_etth1():
    table = load_csv(ETT / "ETTh1.csv")
    assert table.values.shape == (17420, 7)
    assert table.dates.name == "date" and table.target == "OT" and table.target_index == 6
    assert table.columns == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    assert str(table.dates[0]) == "2016-07-01 00:00:00"
    b = split_borders(len(table), 96, path=table.path, horizon=96)
    assert b["test"] == (11424, 14400)
    test = WindowDataset(table.values, 96, 96, *b["test"], target_columns=[table.target_index])
    assert len(test) == 2880 - 96 + 1 == 2785
    x, y = test[len(test) - 1]
    np.testing.assert_array_equal(y[:, 0].numpy(), table.values[14400 - 96:14400, 6])


@pytest.mark.parametrize("freq, season", [("h", 24), ("15min", 96), ("D", 7), ("W-SUN", 52), ("MS", 12), ("QS", 4),
                                          ("3D", 1)])
def test_future_dates_continue_the_frequency_and_give_the_season(freq, season):
    import pandas as pd

    from rlts.data.timeseries import future_index, season_length

    dates = pd.date_range("2020-01-31", periods=40, freq=freq)
    want = list(pd.date_range(dates[0], periods=43, freq=freq)[40:])
    assert future_index(dates, 40, 3) == want
    assert season_length(dates) == season


def test_future_index_without_dates_and_with_one_gap():
    import pandas as pd

    from rlts.data.timeseries import future_index, season_length

    assert future_index(None, 10, 3) == [10, 11, 12] and season_length(None) == 1
    hours = pd.date_range("2020-01-01", periods=30, freq="h")
    gap = hours.delete(10)                                   # one missing hour: the common step still wins
    assert future_index(gap, 29, 2) == [hours[-1] + pd.Timedelta(hours=1), hours[-1] + pd.Timedelta(hours=2)]
    assert season_length(gap) == 24


def _dated_csv(tmp_path, dates):
    path = tmp_path / "d.csv"
    path.write_text("date,y\n" + "".join(f"{d},{i}\n" for i, d in enumerate(dates)))
    return path


def test_dates_backwards_duplicated_or_with_gaps_are_named(tmp_path):
    import warnings

    from rlts.data.timeseries import load_csv

    days = [f"2021-01-{d:02d}" for d in range(1, 21)]
    with pytest.raises(ValueError, match=r"run backwards \(2021-01-20 00:00:00 first, 2021-01-01 00:00:00 last\); "
                                         "sort the file oldest first"):
        load_csv(_dated_csv(tmp_path, days[::-1]))
    with pytest.raises(ValueError, match=r"holds 2021-01-05 00:00:00 twice, at row 5 \(line 6\) and row 6"):
        load_csv(_dated_csv(tmp_path, days[:5] + days[4:]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_csv(_dated_csv(tmp_path, days[:7] + days[9:]))        # 01-08 and 01-09 missing
    gap = [str(w.message) for w in caught if "gap" in str(w.message)]
    assert len(gap) == 1 and "1 gap; the first between row 7 (line 8) (2021-01-07" in gap[0] and "1 days" in gap[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                             # a regular file: no warning
        load_csv(_dated_csv(tmp_path, days))


def test_split_ratios_are_options():
    from rlts.data.timeseries import split_borders

    b = split_borders(1000, 10, "ratio", horizon=5, ratios=(0.5, 0.25, 0.25))
    assert b == {"train": (0, 500), "val": (490, 750), "test": (740, 1000)}
    assert split_borders(1000, 10, "ratio", horizon=5) == {"train": (0, 700), "val": (690, 800), "test": (790, 1000)}
    with pytest.raises(ValueError, match=r"split ratios must be three positive fractions summing to 1, got \[0.5, 0.5\]"):
        split_borders(1000, 10, "ratio", horizon=5, ratios=(0.5, 0.5))


def test_windows_over_series_of_different_spans_mask_what_a_series_lacks():
    """A window is kept when some target column has all its rows; in y the others are NaN and
    in x missing values are 0 (checked against a loop over every start)."""
    import torch

    from rlts.data.timeseries import WindowDataset

    v = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    v[:12, 1] = np.nan                        # column 1 starts at row 12
    v[30:, 2] = np.nan                        # column 2 ends at row 30
    v[:5, 0] = np.nan                         # column 0 starts at row 5
    ds = WindowDataset(v, 6, 3, 2, 40)
    expect = [s for s in range(2, 40 - 9 + 1) if any(not np.isnan(v[s:s + 9, c]).any() for c in range(3))]
    assert list(ds.starts) == expect and len(ds) == len(expect)
    for i, s in enumerate(expect):
        x, y = ds[i]
        for c in range(3):
            whole = not np.isnan(v[s:s + 9, c]).any()
            assert np.isnan(y[:, c].numpy()).all() != whole
            if whole:
                assert torch.equal(y[:, c], torch.from_numpy(v[s + 6:s + 9, c]))
        assert torch.equal(x, torch.from_numpy(np.nan_to_num(v[s:s + 6], nan=0.0)))
    with pytest.raises(ValueError, match="hold no window of window \\+ horizon = 6 \\+ 3 = 9 rows of any one series"):
        WindowDataset(v[:, 1:2], 6, 3, 0, 14)


def test_a_long_table_keeps_each_series_span(tmp_path):
    text = "unique_id,ds,y\n" + "".join(f"a,2020-01-01 {h:02d}:00,{h}\n" for h in range(10)) + \
        "".join(f"b,2020-01-01 {h:02d}:00,{100 + h}\n" for h in range(3, 8))
    table = load_csv(write(tmp_path, text))
    assert table.columns == ["a", "b"] and table.spans == [(0, 10), (3, 8)]
    assert np.isnan(table.values[:3, 1]).all() and np.isnan(table.values[8:, 1]).all()
    assert table.values[3, 1] == 103
    gap = text.replace("b,2020-01-01 05:00,105\n", "")
    with pytest.raises(ValueError, match="series 'b' has no value at .* between its first and last times"):
        load_csv(write(tmp_path, gap))
    filled = load_csv(write(tmp_path, gap), fill=True)
    assert filled.values[5, 1] == pytest.approx(105) and np.isnan(filled.values[8:, 1]).all()
