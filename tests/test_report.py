"""Study report: the reference study's numbers, the join with them, paired intervals, grouping, plots."""

import html
import json
import re

import numpy as np
import pandas as pd
import pytest

from calib.study.report import (
    NO_CHANGE,
    load_reference,
    load_rows,
    paired_difference,
    reference_side_by_side,
    tables,
)
from tests.conftest import REPO, SHARED

RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 10, 200)


def preds(correct: np.ndarray) -> str:
    """A prediction string that is right exactly where `correct` is True."""
    p = np.where(correct, LABELS, (LABELS + 1) % 10)
    return "".join(map(str, p.tolist()))


def flip(correct: np.ndarray, to_wrong: int, to_right: int) -> np.ndarray:
    out = correct.copy()
    out[np.flatnonzero(correct)[:to_wrong]] = False
    out[np.flatnonzero(~correct)[:to_right]] = True
    return out


FP32 = np.arange(200) % 10 != 0  # 180 of 200 right


def base(model="resnet20", engine="openvino", **kw):
    return dict(kind="baseline", status="ok", cell=f"b-{model}-{engine}", model=model, engine=engine,
                fp32_accuracy=FP32.mean(), fp32_predictions=preds(FP32), fp32_fps=100.0) | kw


def quant(model="resnet20", source="cifar10", algo="default", seed=0, correct=FP32, engine="openvino", int8_fps=None,
          **kw):
    cond = dict(model=model, source=source, algo=algo, seed=seed, engine=engine, **kw)
    return dict(kind="quantize", status="ok", cell="q-" + json.dumps(cond, sort_keys=True), **cond,
                int8_accuracy=correct.mean(), int8_predictions=preds(correct), int8_fps=int8_fps,
                subset_size_images=kw.get("subset_size", 300))


def test_reference_csv_holds_the_reference_readme_tables():
    """Every number of Tables 1-2 in ../shared/reference/README.md, against the committed CSV."""
    text = (SHARED / "reference" / "README.md").read_text()
    names = {"ResNet20": "resnet20", "VGG16_bn": "vgg16_bn", "MobileNetV2_x1_4": "mobilenetv2_x1_4",
             "ShuffleNetV2_x2_0": "shufflenetv2_x2_0", "RepVGG_a2": "repvgg_a2"}
    ref = load_reference().set_index(["model", "source", "algorithm"])
    default = text.split("Default quantization, accuracy / FPS:")[1].split("Accuracy-aware")[0]
    sources = ["fractal", "cifar10", "stylegan2-ada", "distylegan"]
    seen = 0
    for line in default.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] not in names:
            continue
        pairs = [tuple(map(float, c.split(" / "))) for c in cells[1:]]
        for (acc, fps), (source, algo) in zip(pairs, [("", "pytorch"), ("", "fp32")]
                                              + [(s, "default") for s in sources]):
            assert ref.loc[(names[cells[0]], source, algo)].tolist() == [acc, fps]
            seen += 1
    aa = text.split("Accuracy-aware quantization, accuracy:")[1].split("Known weaknesses")[0]
    for line in aa.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in names:
            for acc, source in zip(map(float, cells[1:]), sources):
                assert ref.loc[(names[cells[0]], source, "accuracy-aware"), "accuracy"] == acc
                seen += 1
    assert seen == len(ref) == 5 * 6 + 2 * 4
    assert re.search(r"max drop 0\.02", text)


def test_side_by_side_joins_exact_model_source_and_algorithm():
    rows = [base(), base("shufflenetv2_x0_5")]
    for seed in range(3):
        rows.append(quant(seed=seed, correct=flip(FP32, 2 + seed, 0)))
        rows.append(quant(algo="accuracy-aware", seed=seed, max_drop=0.02))
        rows.append(quant("shufflenetv2_x0_5", "fractal", seed=seed))
    out = tables(pd.DataFrame(rows), LABELS)
    side = out["reference_side_by_side"].set_index(["model", "source", "algo"])
    r20 = side.loc[("resnet20", "cifar10", "default")]
    assert r20.ref_int8_accuracy == 0.9234 and r20.ref_fp32_accuracy == 0.926
    assert r20.ref_delta_to_fp32 == pytest.approx(0.9234 - 0.926)
    assert r20.int8_accuracy == pytest.approx(np.mean([(180 - k) / 200 for k in (2, 3, 4)]))
    assert r20.delta_to_fp32 == pytest.approx(-3 / 200)
    assert r20.delta_minus_ref_delta == pytest.approx(-3 / 200 - (0.9234 - 0.926))
    assert r20.seeds == 3 and r20.int8_accuracy_std == pytest.approx(np.std([178, 177, 176], ddof=1) / 200)
    assert r20.flips_to_wrong == 3 and r20.flips_to_right == 0 and r20.verdict == "INT8 lower"
    # the reference has no accuracy-aware ResNet20 row, and no shufflenetv2_x0_5 at all (x2_0 is another model)
    assert np.isnan(side.loc[("resnet20", "cifar10", "accuracy-aware")].ref_int8_accuracy)
    assert side.loc[("resnet20", "cifar10", "accuracy-aware")].verdict == NO_CHANGE
    x05 = side.loc[("shufflenetv2_x0_5", "fractal", "default")]
    assert x05[["ref_int8_accuracy", "ref_fp32_accuracy"]].isna().all()


def test_side_by_side_leaves_other_engines_out():
    long = pd.DataFrame([dict(model="resnet20", engine=e, source="cifar10", algo="default", per_class=30,
                              subset_size=300, fast_bias_correction=True, fuse=True, max_drop=0.01, seeds=1,
                              fp32_accuracy=0.9, int8_accuracy=0.89, int8_accuracy_std=np.nan, delta_to_fp32=-0.01,
                              ci_low=-0.02, ci_high=-0.001, flips_to_wrong=10, flips_to_right=0, verdict="INT8 lower",
                              speedup=2.0) for e in ("openvino", "onnxruntime")])
    side = reference_side_by_side(long)
    assert len(side) == 1 and side.ref_int8_accuracy.iloc[0] == 0.9234


def test_paired_difference_matches_closed_forms():
    fp32 = np.ones(1000, bool)
    int8 = flip(fp32, 10, 0)
    fp32[-2:] = False  # two images FP32 gets wrong, INT8 right
    int8[-2:] = True
    p = paired_difference(fp32, int8)
    # McNemar exact: 10 right->wrong, 2 wrong->right; two-sided binomial p = 2 * P(X <= 2 | n=12, 1/2)
    assert p["mcnemar_p"] == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert (p["flips_to_wrong"], p["flips_to_right"], p["delta"]) == (10, 2, -0.008)
    # the bootstrap interval against a plain resampling of images
    rng = np.random.default_rng(1)
    d = int8.astype(float) - fp32
    boot = [d[rng.integers(0, 1000, 1000)].mean() for _ in range(4000)]
    lo, hi = np.quantile(boot, [0.025, 0.975])
    assert p["ci_low"] == pytest.approx(lo, abs=0.0015) and p["ci_high"] == pytest.approx(hi, abs=0.0015)
    assert p["ci_high"] < 0 and p["verdict"] == "INT8 lower"
    same = paired_difference(fp32, flip(flip(fp32, 1, 0), 0, 1))
    assert same["verdict"] == NO_CHANGE and same["ci_low"] <= 0 <= same["ci_high"]


def grouped_rows():
    """Two subset sizes x two bias corrections x two seeds: a mean over anything but seeds would show."""
    rows = [base(), base(engine="onnxruntime")]
    for sub in (32, 300):
        for fbc in (True, False):
            for seed in (0, 1):
                k = {32: 0, 300: 8}[sub] + (0 if fbc else 4) + seed  # images lost, distinct per condition
                rows.append(quant(seed=seed, correct=flip(FP32, k, 0), subset_size=sub, fast_bias_correction=fbc,
                                  int8_fps=200.0 + k))
        for seed in (0, 1):
            rows.append(quant(engine="onnxruntime", seed=seed, subset_size=sub, correct=flip(FP32, 1, 0)))
    return rows


def test_tables_group_by_the_whole_condition():
    out = tables(pd.DataFrame(grouped_rows()), LABELS)
    long = out["long_openvino"].set_index(["subset_size", "fast_bias_correction"])
    assert len(long) == 4 and (long.seeds == 2).all()
    for (sub, fbc), row in long.iterrows():
        k = {32: 0, 300: 8}[sub] + (0 if fbc else 4)
        assert row.int8_accuracy == pytest.approx((180 - k - 0.5) / 200)
        assert row.int8_accuracy_std == pytest.approx(np.std([k, k + 1], ddof=1) / 200)
        assert row.flips_to_wrong == k + 0.5 and row.int8_fps == 200.0 + k + 0.5
    t1 = out["table1_openvino"]
    assert {"subset_size", "fast_bias_correction"} <= set(t1.columns) and len(t1) == 4
    assert set(t1["INT8 cifar10 acc"]) == {f"{(180 - k - 0.5) / 200:.4f} ± {0.5 / 200 * 2 ** 0.5:.4f}"
                                           for k in (0, 4, 8, 12)}
    side = out["engines_side_by_side"]
    assert len(side) == 4 and side["int8_accuracy onnxruntime"].notna().sum() == 2  # ORT has no full BC
    assert len(out["cells_openvino"]) == 8
    assert "fast_bias_correction" not in out["table1_onnxruntime"].columns  # one value there: no column


def test_the_newest_row_of_a_cell_counts(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    first = dict(quant(), status="error", reason="boom")
    del first["int8_accuracy"]
    rows = [base(), first, quant(correct=flip(FP32, 4, 0))]
    (run / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "test_labels.json").write_text(json.dumps({"labels": "".join(map(str, LABELS))}))
    df = load_rows(run)
    assert len(df) == 2 and (df.status == "ok").all()
    out = tables(df)  # labels come with the rows
    assert out["not_ok"].empty and out["long_openvino"].flips_to_wrong.iloc[0] == 4


def test_write_plots_panels_per_condition(tmp_path):
    from PIL import Image

    from calib.study.plot import heatmap_panels, write_plots

    run = tmp_path / "run"
    run.mkdir()
    (run / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in grouped_rows()))
    long = tables(load_rows(run), LABELS)["long_openvino"]
    panels = dict(heatmap_panels(long, "delta_to_fp32", "default"))
    assert set(panels) == {f"subset_size={s}, fast_bias_correction={f}" for s in (32, 300) for f in (False, True)}
    assert panels["subset_size=300, fast_bias_correction=False"].loc["resnet20", "cifar10"] == pytest.approx(
        -12.5 / 200)
    written = write_plots(run, tmp_path / "plots")
    assert {p.name for p in written} >= {"accuracy_drop_default_openvino.png", "accuracy_vs_set_size_openvino.png",
                                         "accuracy_drop_default_onnxruntime.png"}
    for p in written:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 100


def test_heatmap_folds_an_axis_only_some_models_vary_into_their_rows():
    """RepVGG runs fused and unfused, the other models have nothing to fuse: one panel, RepVGG's two forms as
    rows, each paired with its own FP32 baseline."""
    from calib.study.plot import heatmap_panels

    rows = [base(), base(model="repvgg_a0", fuse=True), base(model="repvgg_a0", fuse=False)]
    rows += [quant(fuse=True, correct=flip(FP32, 2, 0)), quant(model="repvgg_a0", fuse=True, correct=flip(FP32, 4, 0)),
             quant(model="repvgg_a0", fuse=False, correct=flip(FP32, 6, 0))]
    long = tables(pd.DataFrame(rows), LABELS)["long_openvino"]
    panels = heatmap_panels(long, "delta_to_fp32", "default")
    assert len(panels) == 1 and panels[0][0] == ""
    table = panels[0][1]
    assert sorted(table.index) == ["repvgg_a0 fused", "repvgg_a0 unfused", "resnet20"]
    assert table.loc["repvgg_a0 unfused", "cifar10"] == pytest.approx(-6 / 200)
    assert table.loc["resnet20", "cifar10"] == pytest.approx(-2 / 200)


A, B = "AMD EPYC | avx2", "Intel Xeon | avx512_core_amx"


def test_rows_are_never_paired_or_pooled_across_machines():
    from calib.study.report import markdown_table

    rows = [base(hardware_key=A), quant(hardware_key=A, correct=flip(FP32, 3, 0)),
            quant(hardware_key=B, correct=flip(FP32, 1, 0)), quant(hardware_key=B, seed=1, correct=FP32)]
    out = tables(pd.DataFrame(rows), LABELS)
    slug = {A: "amd-epyc-avx2", B: "intel-xeon-avx512_core_amx"}
    a, b = out[f"cells_openvino__{slug[A]}"], out[f"cells_openvino__{slug[B]}"]
    assert a.attrs["machine"] == A and b.attrs["machine"] == B
    assert a.fp32_accuracy.tolist() == [0.9] and a.flips_to_wrong.tolist() == [3]
    assert b.fp32_accuracy.isna().all() and (b.verdict == "").all()  # B has no baseline: nothing to pair with
    long_a = out[f"long_openvino__{slug[A]}"]
    assert long_a.seeds.tolist() == [1] and long_a.int8_accuracy.tolist() == [pytest.approx(177 / 200)]
    assert markdown_table(out[f"table1_openvino__{slug[B]}"]).startswith("Machine: Intel Xeon | avx512_core_amx")


def test_baselines_are_keyed_by_fusing_isa_and_weights():
    other = flip(FP32, 5, 0)  # a second FP32 model: unfused, another ISA, other weights
    rows = [base(fuse=True), base(fuse=False, cell="b-unfused", fp32_predictions=preds(other),
                                  fp32_accuracy=other.mean()),
            base(isa="avx2", cell="b-avx2", fp32_predictions=preds(other), fp32_accuracy=other.mean()),
            base(weights_sha256="f" * 64, cell="b-w", fp32_predictions=preds(other), fp32_accuracy=other.mean())]
    for kw in ({}, {"fuse": False}, {"isa": "avx2"}, {"weights_sha256": "f" * 64}):
        rows.append(quant(correct=other, **kw))
    cells = tables(pd.DataFrame(rows), LABELS)["cells_openvino"]
    got = {(r.fuse, r.isa, r.weights_id): (r.fp32_accuracy, r.flips_to_wrong) for r in cells.itertuples()}
    assert got[(True, "native", "unrecorded")] == (0.9, 5)  # against the fused native baseline: 5 flips
    for key in ((False, "native", "unrecorded"), (True, "avx2", "unrecorded"), (True, "native", "ffffffff")):
        assert got[key] == (other.mean(), 0)  # each against its own baseline: nothing changed


def test_speed_only_rows_are_not_accuracy_seeds():
    speed = dict(quant(seed=0, int8_fps=300.0, trained_weights=False), int8_accuracy=None, int8_predictions=None)
    rows = [base(), quant(seed=1, correct=flip(FP32, 2, 0)), quant(seed=2, correct=flip(FP32, 4, 0)), speed]
    long = tables(pd.DataFrame(rows), LABELS)["long_openvino"].set_index("weights_id")
    assert long.loc["unrecorded"].seeds == 2 and long.loc["unrecorded"].int8_accuracy == pytest.approx(177 / 200)
    assert long.loc["random"].seeds == 0 and np.isnan(long.loc["random"].int8_accuracy)
    assert long.loc["random"].int8_fps == 300.0


def test_rows_from_a_dirty_tree_are_marked():
    from calib.study.report import markdown_table

    rows = [base(hardware_key=A), quant(hardware_key=A, dirty=True, git_sha="abc-dirty"),
            quant(hardware_key=A, source="noise")]
    out = tables(pd.DataFrame(rows), LABELS)
    t1 = out["table1_openvino"]
    assert t1["INT8 cifar10 acc"].iloc[0].endswith("†") and not t1["INT8 noise acc"].iloc[0].endswith("†")
    assert out["cells_openvino"].set_index("source").dirty.to_dict() == {"cifar10": True, "noise": False}
    assert "2 of 3 rows" not in markdown_table(t1) and "1 of 3 rows come from a dirty tree" in markdown_table(t1)


def test_isa_side_by_side_pairs_each_seed_with_its_native_run():
    rows = [base(hardware_key=A), base(hardware_key=A, isa="avx2", cell="b-avx2")]
    for seed, (native, capped) in enumerate(((2, 5), (3, 3))):
        rows.append(quant(hardware_key=A, seed=seed, correct=flip(FP32, native, 0)))
        rows.append(quant(hardware_key=A, seed=seed, isa="avx2", correct=flip(FP32, capped, 0)))
    side = tables(pd.DataFrame(rows), LABELS)["isa_side_by_side"].set_index("precision")
    q, f = side.loc["INT8"], side.loc["FP32"]
    assert q.isa == "avx2" and q.seeds == 2 and q.cpu == "AMD EPYC"
    assert q.delta == pytest.approx(-3 / 400)  # (-3 + 0) images over 2 seeds x 200 images
    assert q.flips_to_wrong == 1.5 and q.flips_to_right == 0 and q.predictions_changed == 1.5
    assert f.delta == 0 and f.predictions_changed == 0 and f.verdict == NO_CHANGE


def test_a_machine_capped_to_another_ones_isa_is_never_pooled_with_it_but_listed_beside_it():
    """Both machines' capped rows once carried "AMD EPYC | avx2": the key is now made from the rows' fields, so
    an AVX2 machine and an AVX-512 one capped to AVX2 get their own tables, and their common cells are listed
    as expected equal, with the differences counted."""
    avx2 = dict(cpu="AMD EPYC", isa_native="avx2", isa_effective="avx2", hardware_key="AMD EPYC | avx2")
    capped = dict(cpu="AMD EPYC", isa_native="avx512_core_bf16", isa_effective="avx2",
                  hardware_key="AMD EPYC | avx2")  # as written before the key named the cap
    rows = [base(isa="avx2", **avx2), base(isa="avx2", **capped)]
    for seed, moved in enumerate((0, 0, 2)):
        rows.append(quant(seed=seed, isa="avx2", correct=flip(FP32, 3, 0), **avx2))
        rows.append(quant(seed=seed, isa="avx2", correct=flip(FP32, 3 + moved, 0), **capped))
    out = tables(pd.DataFrame(rows), LABELS)
    assert {"cells_openvino__amd-epyc-avx2", "cells_openvino__amd-epyc-avx512_core_bf16-capped-to-avx2"} <= set(out)
    eq = out["expected_equal"].iloc[0]
    assert (eq.kernels_isa, eq.machine_a, eq.machine_b) == ("avx2", "AMD EPYC | avx2",
                                                            "AMD EPYC | avx512_core_bf16 capped to avx2")
    assert (eq.cells, eq.same_predictions, eq.different) == (4, 3, 1)
    assert eq.max_abs_accuracy_difference == pytest.approx(2 / 200)
    assert eq.cells_that_differ == "resnet20 openvino cifar10 default s2"


def test_speedup_comes_from_interleaved_repeats_with_its_interval_else_is_marked_not_interleaved():
    """A row timed in turns (A B A B) carries its speed-up and a bootstrap interval over the repeat pairs; an older
    row only has separate medians: its ratio is shown without an interval, marked, with one footnote."""
    from calib.study.report import NOT_INTERLEAVED_NOTE, markdown_table

    rows = [base(), quant(source="cifar10", int8_fps=230.0, int8_speedup=2.3, int8_speedup_low=2.2,
                          int8_speedup_high=2.45, int8_speedup_repeats=5),
            quant(source="noise", int8_fps=180.0), quant(source="fractal", int8_fps=150.0)]
    out = tables(pd.DataFrame(rows), LABELS)
    long = out["long_openvino"].set_index("source")
    assert long.loc["cifar10", ["speedup", "speedup_low", "speedup_high"]].tolist() == [2.3, 2.2, 2.45]
    assert bool(long.loc["cifar10", "speedup_interleaved"]) and not bool(long.loc["noise", "speedup_interleaved"])
    assert long.loc["noise", "speedup"] == pytest.approx(1.8) and pd.isna(long.loc["noise", "speedup_low"])
    text = markdown_table(out["long_openvino"])
    assert "2.30 [2.20, 2.45]" in text and "1.80 ‡" in text and "1.50 ‡" in text
    assert text.count(NOT_INTERLEAVED_NOTE) == 1 and "speedup_low" not in text
    assert "‡" not in markdown_table(tables(pd.DataFrame(rows[:2]), LABELS)["long_openvino"])


def test_ratios_keep_two_decimals_in_every_table():
    """fps_ratio (capped ISA over native) was printed 0 or 1 in the page: every ratio has two decimals."""
    from calib.study.html import for_people
    from calib.study.report import markdown_table

    table = pd.DataFrame({"fps_native": [9948.0, 4565.0], "fps_isa": [4565.0, 4565.0], "fps_ratio": [0.4589, 1.0],
                          "speedup": [2.0, 0.5], "ref_speedup": [1.0, 3.25]})
    assert for_people(table)["fps ratio"].tolist() == ["0.46", "1.00"]
    assert for_people(table)["INT8/FP32 speed"].tolist() == ["2.00", "0.50"]
    lines = markdown_table(table).splitlines()
    assert [c.strip() for c in lines[2].strip("|").split("|")] == ["9948", "4565", "0.46", "2.00", "1.00"]
    assert [c.strip() for c in lines[3].strip("|").split("|")] == ["4565", "4565", "1.00", "0.50", "3.25"]


def test_rows_of_several_code_versions_are_never_pooled_without_a_line_saying_so(tmp_path):
    from calib.study.html import build_html
    from calib.study.report import code_versions, markdown_table

    fingerprint = "3f9a1c2e77d04b1a"
    rows = [base(code_fingerprint=fingerprint), quant(seed=0, code_fingerprint=fingerprint),
            quant(seed=1, code_fingerprint=fingerprint), quant(seed=2), quant(source="noise")]
    line = "These rows come from 2 versions of calib's code: 3f9a1c2e (3 rows), none recorded (2 rows)."
    assert code_versions(pd.DataFrame(rows)) == line
    out = tables(pd.DataFrame(rows), LABELS)
    assert all(markdown_table(t).startswith(line) for t in out.values())
    one = tables(pd.DataFrame([r | {"code_fingerprint": fingerprint} for r in rows]), LABELS)
    assert code_versions(pd.DataFrame(rows[:3])) is None
    assert not any("versions of calib's code" in markdown_table(t) for t in one.values())
    run = tmp_path / "run"
    run.mkdir()
    (run / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = html.unescape(build_html(run))
    assert page.index(line) < page.index('id="verdict"')


@pytest.mark.slow
@pytest.mark.parametrize("run", sorted(p.parent.parent.name for p in (REPO / "results" / "study").glob("*/report/"
                                                                                                       "manifest.json")))
def test_every_committed_report_table_is_what_the_report_command_writes_from_the_committed_rows(run, tmp_path):
    """The tables under results/study/*/report/ are generated, not typed: `calib study report` on a copy of the
    run folder's rows writes every Markdown and CSV table again, byte for byte."""
    import filecmp
    import shutil

    from calib.study.report import write_report

    committed = REPO / "results" / "study" / run
    copy = tmp_path / run
    shutil.copytree(committed, copy, ignore=shutil.ignore_patterns("report", "plots"))
    write_report(copy)
    tables = sorted(p.name for p in (committed / "report").iterdir() if p.suffix in (".md", ".csv"))
    assert tables and sorted(p.name for p in (copy / "report").iterdir() if p.suffix in (".md", ".csv")) == tables
    assert [t for t in tables if not filecmp.cmp(committed / "report" / t, copy / "report" / t, shallow=False)] == []
