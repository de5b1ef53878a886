"""One self-contained HTML page for a study run, in the order a reader needs it: the verdict table (as the README
states results: points with two decimals, paired interval, verdict, flips), heatmaps per engine (and machine), the
reference study side by side, sample grids and diagnosis, then every detail table folded in <details>.

Images are embedded as data URIs, so the file opens anywhere with no network and no folder beside it; every one
has a caption and alt text. Numbers are formatted for people (`for_people`: no e-notation, differences in points).
The page is a Jinja2 template (`templates/report.html.j2`); a short inline script makes tables sortable and, once
the page has loaded, writes on <body> how many images failed to decode, the page's scroll width and where the
verdict table starts (the browser test reads them at 1280 px).
"""

from __future__ import annotations

import base64
import io
import json
import re
import tempfile
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from calib.core.errors import CalibError
from calib.core.runs import atomic_write_bytes, provenance, read_jsonl

TEMPLATE = "report.html.j2"
_PREVIEW_WIDTH = 660  # sample grids wider than this are reduced before embedding


@dataclass(frozen=True)
class Figure:
    src: str  # data URI
    caption: str


def data_uri(png: bytes | Path) -> str:
    """A PNG as a base64 data URI (plots: exact pixels)."""
    data = png.read_bytes() if isinstance(png, Path) else png
    return "data:image/png;base64," + base64.b64encode(data).decode()


def preview_uri(png: Path, max_width: int = _PREVIEW_WIDTH) -> str:
    """A sample grid as a JPEG data URI, box-reduced by an integer factor to at most `max_width` pixels.

    Grids are drawn at 2x with nearest-neighbour scaling, so halving them gives back the images' own pixels;
    JPEG keeps five of them in a few hundred kB.
    """
    from PIL import Image

    with Image.open(png) as im:
        im = im.convert("RGB")
        factor = -(-im.width // max_width)
        if factor > 1:
            im = im.reduce(factor)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


# ---------------------------------------------------------------- numbers for people
_ENGINE_LABELS = {"openvino": "NNCF", "onnxruntime": "ONNX Runtime", "pytorch": "PyTorch"}
_POINTS = ("delta_to_fp32", "ci_low", "ci_high", "ref_delta_to_fp32", "delta_minus_ref_delta")
_HEADERS = {"fp32_accuracy": "FP32 acc", "int8_accuracy": "INT8 acc", "int8_accuracy_std": "INT8 acc std",
            "delta_to_fp32": "INT8 − FP32 (pts)", "ci_low": "CI low (pts)", "ci_high": "CI high (pts)",
            "flips_to_wrong": "flips →wrong", "flips_to_right": "flips →right", "mcnemar_p": "McNemar p",
            "mcnemar_p_max": "McNemar p (max)", "int8_fps": "INT8 img/s", "fp32_fps": "FP32 img/s",
            "pytorch_fps": "PyTorch img/s", "pytorch_accuracy": "PyTorch acc", "speedup": "INT8/FP32 speed",
            "ref_fp32_accuracy": "reference FP32 acc", "ref_int8_accuracy": "reference INT8 acc",
            "ref_delta_to_fp32": "reference INT8 − FP32 (pts)", "delta_minus_ref_delta": "ours − reference (pts)",
            "ref_speedup": "reference speed-up", "subset_size_images": "calibration images",
            "int8_fps_spread": "INT8 img/s spread", "fp32_fps_spread": "FP32 img/s spread"}


def engine_label(engine: str) -> str:
    return _ENGINE_LABELS.get(engine, engine)


def _number(col: str, v) -> str:
    """One value as a person reads it: accuracies with 4 decimals, differences in points with 2 and a sign, speeds
    as whole numbers, spreads in percent, p-values with 3 significant digits; nothing in e-notation."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if not isinstance(v, int | float | np.integer | np.floating):
        return str(v)
    v = float(v)
    if col in _POINTS or col.startswith(("delta_to_fp32 ", "ci_")):
        return _pts(v)
    if col.endswith("_spread"):
        return f"{100 * v:.1f} %"
    if "speedup" in col or "ratio" in col or col == "max_drop":  # before "fps": fps_ratio is a ratio
        return f"{v:.2f}"
    if "fps" in col or col.endswith(("_images", "_bytes")) or col in ("seeds", "per_class", "subset_size", "seed"):
        return f"{v:,.0f}"
    if col.startswith(("mcnemar", "p_")):
        return f"{v:.3g}" if v >= 1e-3 else "< 0.001"
    if col.startswith("flips"):
        return f"{v:.1f}"
    if "accuracy" in col:
        return f"{v:.4f}"
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:.4f}" if abs(v) >= 1e-4 else "0.0000"


def for_people(df: pd.DataFrame) -> pd.DataFrame:
    """Every value as text (`_number`), headers in words."""
    out = pd.DataFrame({c: [_number(str(c), v) for v in df[c]] for c in df.columns}, index=df.index)
    return out.rename(columns=lambda c: _HEADERS.get(str(c), str(c).replace("_", " ")))


def table_html(df: pd.DataFrame, table_id: str, classes: str = "data") -> str:
    """The table for people; speed-ups with their interval, or marked and footnoted where not interleaved."""
    from calib.study.report import NOT_INTERLEAVED_NOTE, speedup_view

    view, not_interleaved = speedup_view(df)
    text = for_people(view).to_html(index=False, table_id=table_id, classes=classes, border=0, na_rep="-",
                                    escape=True)
    return text + (f'\n<p class="note">{escape(NOT_INTERLEAVED_NOTE)}</p>' if not_interleaved else "")


def split_name(name: str) -> tuple[str, str]:
    """A table's name and its machine (`table1_openvino__<machine>`: several machines in one run)."""
    base, _, machine = name.partition("__")
    return base, machine


# ---------------------------------------------------------------- the verdict table (README's format)
_JOIN = ("model", "source", "per_class", "subset_size", "fuse", "isa", "weights_id")


def _pts(v: float) -> str:
    return "-" if pd.isna(v) else f"{100 * v:+.2f}".replace("+0.00", "0.00").replace("-0.00", "0.00")


def verdict_table(longs: dict[str, pd.DataFrame], reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per model, source (and any other axis that varies) of the main engine's default INT8: FP32, INT8
    mean ± std over seeds, INT8 − FP32 in points with the paired 95 % interval, flips, verdict; then INT8 of the
    main engine's accuracy-aware algorithm and of every other engine, and the reference study's INT8 − FP32."""
    if not longs:
        return pd.DataFrame()
    main = "openvino" if "openvino" in longs else sorted(longs)[0]
    long = longs[main]
    base = long[(long.algo == "default") & long.int8_accuracy.notna()]
    if base.empty:
        return pd.DataFrame()
    from calib.study.report import FACETS, varying

    facets = [f for f in varying(base, FACETS) if f != "max_drop"]
    seeds = sorted(base.seeds.dropna().astype(int).unique())
    label = engine_label(main)
    mean_col = f"{label} INT8 (mean ± std, {seeds[0]} seeds)" if len(seeds) == 1 else f"{label} INT8 (mean ± std)"
    rows = []
    for r in base.sort_values(["model", "source", *facets]).to_dict("records"):
        std = f" ± {r['int8_accuracy_std']:.4f}" if not pd.isna(r.get("int8_accuracy_std")) else ""
        ci = (f"{_pts(r['delta_to_fp32'])} pts [{_pts(r['ci_low'])}, {_pts(r['ci_high'])}]"
              if not pd.isna(r.get("ci_low")) else f"{_pts(r['delta_to_fp32'])} pts")
        flips = (f"{r['flips_to_wrong']:.1f} / {r['flips_to_right']:.1f}" if not pd.isna(r.get("flips_to_wrong"))
                 else "-")
        row = {"model": r["model"], "source": r["source"], **{f: _number(f, r[f]) for f in facets},
               "FP32": "-" if pd.isna(r["fp32_accuracy"]) else f"{r['fp32_accuracy']:.3f}",
               mean_col: f"{r['int8_accuracy']:.4f}{std}", "INT8 − FP32 [paired 95 % CI]": ci,
               "flips →wrong/→right": flips, "verdict": r.get("verdict") or "-"}
        others = [(f"accuracy-aware INT8 ({label})" if len(longs) > 1 else "accuracy-aware INT8", long,
                   "accuracy-aware")]
        others += [(f"{engine_label(e)} INT8", longs[e], "default") for e in sorted(longs) if e != main]
        for col, table, algo in others:
            if not (table.algo == algo).any():
                continue
            match = table[table.algo == algo]
            for k in _JOIN:
                if k in match and k in r:
                    match = match[match[k].astype(str) == str(r[k])]
            row[col] = f"{match.int8_accuracy.iloc[0]:.4f}" if len(match) and not pd.isna(
                match.int8_accuracy.iloc[0]) else "-"
        if reference is not None and "ref_delta_to_fp32" in reference:
            ref = reference[(reference.model == r["model"]) & (reference.source == r["source"])
                            & (reference.algo == "default")].ref_delta_to_fp32.dropna()
            row["reference study INT8 − FP32"] = f"{_pts(ref.iloc[0])} pts" if len(ref) else "-"
        rows.append(row)
    return pd.DataFrame(rows)


def _reference_view(side: pd.DataFrame) -> pd.DataFrame:
    """The reference side by side, the columns a reader compares."""
    keep = [c for c in ("model", "source", "algo", "seeds", "fp32_accuracy", "int8_accuracy", "delta_to_fp32",
                        "ci_low", "ci_high", "verdict", "ref_fp32_accuracy", "ref_int8_accuracy",
                        "ref_delta_to_fp32", "delta_minus_ref_delta", "speedup", "speedup_low", "speedup_high",
                        "speedup_interleaved", "ref_speedup") if c in side]
    return side[keep]


_TITLES = {"engines_side_by_side": "Engines side by side (same model, source and set size)",
           "reference_side_by_side": "Side by side with the reference study (every column)",
           "isa_side_by_side": "Capped instruction sets against native, same CPU",
           "expected_equal": "Capped cells beside another machine's of the same instruction set (expected equal)",
           "not_ok": "Cells not run (skipped or failed, with the reason)"}
_PREFIXES = (("table1_", "Table 1: default INT8, accuracy and speed ({})"),
             ("table2_", "Table 2: accuracy-aware INT8 ({})"),
             ("accuracy_aware_", "Did accuracy-aware INT8 keep max_drop on the test images? ({})"),
             ("long_", "Every condition, with the change to FP32 ({})"),
             ("cells_", "Every cell (one seed each) ({})"),
             ("speed_", "Speed of every timed model ({})"))


def _title(name: str) -> str:
    base, machine = split_name(name)
    title = next((t.format(engine_label(base.removeprefix(p))) for p, t in _PREFIXES if base.startswith(p)),
                 _TITLES.get(base, base.replace("_", " ")))
    return f"{title}, {machine}" if machine else title


def _order(name: str) -> tuple:
    base, machine = split_name(name)
    rank = {"table1_": 0, "table2_": 1, "accuracy_aware_": 1.5, "engines_side_by_side": 2,
            "reference_side_by_side": 3, "long_": 4,
            "speed_": 5, "cells_": 6, "isa_side_by_side": 7, "expected_equal": 8, "not_ok": 9}
    return machine, next((r for k, r in rank.items() if base.startswith(k)), 8), base


# ---------------------------------------------------------------- figures
_PLOT = re.compile(r"^(?P<what>accuracy_drop_(?P<algo>.+?)|speedup|speed|accuracy_vs_set_size)_(?P<engine>[a-z0-9]+)"
                   r"(?:__(?P<machine>.+))?$")
_PLOT_ORDER = ("accuracy_drop_default", "accuracy_drop", "speedup", "speed", "accuracy_vs_set_size")


def plot_caption(stem: str) -> tuple[str, str, str, int]:
    """(engine, machine, caption, rank within its engine) of a plot written by `calib.study.plot`, from its
    file name."""
    m = _PLOT.match(stem)
    if not m:
        return "", "", stem.replace("_", " "), len(_PLOT_ORDER)
    engine, machine, what = m["engine"], m["machine"] or "", m["what"]
    label = engine_label(engine)
    if m["algo"]:
        text = (f"INT8 − FP32 test accuracy in points after {m['algo']} INT8 ({label}), mean over seeds; rows: "
                "models, columns: calibration sources; green: no loss")
    elif what == "speedup":
        text = f"INT8 throughput over FP32 ({label}); rows: models, columns: calibration sources"
    elif what == "speed":
        text = f"Throughput of every timed model file ({label}), images per second, median and spread of the repeats"
    else:
        text = f"INT8 accuracy against the number of calibration images ({label}), mean ± std over seeds"
    rank = next(i for i, p in enumerate(_PLOT_ORDER) if what.startswith(p))
    return engine, machine, text + (f"; {machine}" if machine else ""), rank


def _plots(run: Path, tmp: Path) -> list[dict]:
    """Plot groups, one per engine (and machine), the main engine first: {"title", "figures"}."""
    from calib.study.plot import write_plots

    groups: dict[tuple[str, str], list[tuple[int, Figure]]] = {}
    for p in write_plots(run, tmp / "plots"):
        engine, machine, caption, rank = plot_caption(p.stem)
        groups.setdefault((engine, machine), []).append((rank, Figure(data_uri(p), caption)))
    order = sorted(groups, key=lambda k: (k[1], k[0] != "openvino", k[0] == "", k[0]))
    return [{"title": (f"{engine_label(e)} ({e})" if e else "Other plots") + (f", {m}" if m else ""),
             "figures": [f for _, f in sorted(groups[(e, m)], key=lambda rf: rf[0])]} for e, m in order]


def _grids(run: Path, sources: list[str], grids: Path | None, tmp: Path) -> list[Figure]:
    """One sample grid per source: from the run's own sets, else `<grids>/<source>.png`."""
    from calib.core.sets import read_set
    from calib.core.show import save_grid

    figures = []
    for source in sources:
        own = sorted((run / "sets").glob(f"{source}-*pc-s*")) if (run / "sets").is_dir() else []
        own = [p for p in own if (p / "manifest.json").is_file()]
        if own:
            png = save_grid(read_set(own[0], allow_unbalanced=True), tmp / "grids" / f"{source}.png", per_class=8)
            figures.append(Figure(preview_uri(png), f"{source}: sample images of {own[0].name} (this run), one row "
                                                    "per class"))
        elif grids is not None and (grids / f"{source}.png").is_file():
            figures.append(Figure(preview_uri(grids / f"{source}.png"),
                                  f"{source}: sample images, one row per class ({grids / f'{source}.png'})"))
    return figures


def load_diagnose_rows(folder: Path) -> pd.DataFrame:
    """Diagnose rows: every `rows.jsonl` under `folder` (a run's `diagnose/`, or `calib diagnose` outputs)."""
    rows = [r for f in sorted(folder.rglob("rows.jsonl")) for r in read_jsonl(f)] if folder.is_dir() else []
    return pd.DataFrame(rows)


def _diagnose(folder: Path, tmp: Path) -> list[Figure]:
    from calib.core.diagnose import plot_heatmaps

    figures = []
    df = load_diagnose_rows(folder)
    if not df.empty and {"model", "source", "index", "layer"} <= set(df):
        for metric in ("clipped_fraction", "sqnr_db"):
            for p in plot_heatmaps(df, tmp / "diagnose", metric):
                model = p.stem.removeprefix(f"diagnose_{metric}_")
                caption = f"{model}: {metric.replace('_', ' ')} per quantized layer and calibration source"
                figures.append(Figure(data_uri(p), caption))
    for p in sorted(folder.rglob("*.png")) if folder.is_dir() else []:
        what = "INT8 error and clipping per quantized layer" if p.stem == "layers" else p.stem.replace("_", " ")
        figures.append(Figure(data_uri(p), f"{p.parent.name}: {what} ({p.name})"))
    return figures


def _quality(quality: Path | None, sources: list[str]) -> dict | None:
    """`calib inspect` rows of the run's sources."""
    rows = [r for r in read_jsonl(quality) if r.get("source") in sources] if quality else []
    if not rows:
        return None
    df = pd.DataFrame(rows)
    keep = [c for c in ("source", "set", "model", "images", "class_accuracy", "mean_entropy", "frechet_distance",
                        "bn_distance") if c in df]
    note = f"From {quality}: rows of `calib inspect` (real reference: the validation split)."
    return {"html": table_html(df[keep], "quality"), "note": note}


def _provenance(run: Path) -> str:
    """The run's manifests (one per start; a resumed run has several) and this page's own, as one table."""
    entries = [(p.name, json.loads(p.read_text())) for p in sorted(run.glob("manifest-*.json"))]
    entries.append(("this page", provenance()))
    rows = [{"manifest": name, "command": m.get("command"), "time": m.get("time"), "git SHA": m.get("git_sha"),
             "CPU": f"{m.get('cpu')} ({m.get('cpu_count')} cores)", "seeds": json.dumps(m.get("seeds", {})),
             "versions": ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())} for name, m in entries]
    return pd.DataFrame(rows).to_html(index=False, table_id="provenance", classes="data", border=0, escape=True)


def build_html(run: Path, grids: Path | None = None, quality: Path | None = None, diagnose: Path | None = None,
               quiet: bool = True) -> str:
    """The page's text (see `write_html`): the verdict table first, then heatmaps per engine (and machine), the
    reference study side by side, sample grids and diagnosis, and every detail table folded."""
    import jinja2

    from calib.core.progress import progress
    from calib.study.report import code_versions, load_rows, tables

    df = load_rows(run)
    quality = quality or (run / "inspect.jsonl" if (run / "inspect.jsonl").is_file() else None)
    if quality is not None and not quality.is_file():
        raise CalibError(f"set-quality file {quality} does not exist")
    if grids is not None and not grids.is_dir():
        raise CalibError(f"sample-grid folder {grids} does not exist")
    if diagnose is not None and not diagnose.is_dir():
        raise CalibError(f"diagnose folder {diagnose} does not exist")
    sources = sorted(s for s in df.get("source", pd.Series(dtype=str)).dropna().unique() if s)
    with progress("HTML report", 5, quiet) as advance, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        named = tables(df)
        machines: dict[str, dict] = {}
        for name, t in named.items():
            base, slug = split_name(name)
            m = machines.setdefault(slug, {"longs": {}, "reference": None, "machine": t.attrs.get("machine", "")})
            if base.startswith("long_"):
                m["longs"][base.removeprefix("long_")] = t
            elif base == "reference_side_by_side":
                m["reference"] = t
        verdicts, references = [], []
        for i, (_, m) in enumerate(sorted(machines.items())):
            suffix = f", {m['machine']}" if len(machines) > 1 and m["machine"] else ""
            v = verdict_table(m["longs"], m["reference"])
            if not v.empty:
                verdicts.append({"id": "verdict-table" if not verdicts else f"verdict-table-{i}",
                                 "title": f"INT8 against FP32{suffix}", "html": v.to_html(
                                     index=False, table_id="verdict-table" if not verdicts else f"verdict-table-{i}",
                                     classes="data verdict", border=0, escape=True)})
            if m["reference"] is not None and not m["reference"].empty:
                references.append({"title": f"Side by side with the reference study{suffix}",
                                   "html": table_html(_reference_view(m["reference"]), f"reference-{i}")})
        tabs = [{"name": name, "title": _title(name), "html": table_html(t, name), "rows": len(t)}
                for name, t in sorted(named.items(), key=lambda kv: _order(kv[0]))]
        advance(description="plots")
        plots = _plots(run, tmp)
        advance(description="sample grids")
        grid_figs = _grids(run, sources, grids, tmp)
        advance(description="diagnosis")
        diagnose = diagnose or run / "diagnose"
        diag = _diagnose(diagnose, tmp)
        advance(description="page")
        env = jinja2.Environment(loader=jinja2.PackageLoader("calib.study", "templates"),
                                 autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
        sections = [{"id": i, "title": t} for i, t in (("verdict", "Verdict"), ("plots", "Heatmaps"),
                                                         ("reference", "Reference study"),
                                                         ("sets", "Calibration sources"), ("diagnose", "Diagnosis"),
                                                         ("tables", "Detail tables"), ("provenance", "Provenance"))]
        text = env.get_template(TEMPLATE).render(
            title=f"calib study: {_grid_name(run)}", run=str(run), n_rows=len(df),
            n_ok=int((df.get("status") == "ok").sum()) if "status" in df else len(df), built=provenance(),
            code_versions=code_versions(df),
            sections=sections, verdicts=verdicts, references=references, tables=tabs, plots=plots,
            grids=grid_figs, diagnose=diag, diagnose_dir=str(diagnose), quality=_quality(quality, sources),
            provenance=_provenance(run), grid_toml=_read(run / "grid.toml"), summary=_read(run / "summary.json"))
        advance()
    return text


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def _grid_name(run: Path) -> str:
    import tomllib

    try:
        return tomllib.loads((run / "grid.toml").read_text()).get("name", run.name)
    except (OSError, tomllib.TOMLDecodeError):
        return run.name


def write_html(run: Path, out: Path | None = None, grids: Path | None = None, quality: Path | None = None,
               diagnose: Path | None = None, quiet: bool = True) -> Path:
    """Write `<out or run/report>/report.html`: one file, images inside, written atomically.

    `grids`: a folder of `<source>.png` sample grids for runs whose sets/ folder is gone (e.g. results/sets);
    `quality`: a JSON-lines file of `calib inspect` rows (default `<run>/inspect.jsonl` when present);
    `diagnose`: a folder of diagnose outputs (`rows.jsonl` files, plots), default `<run>/diagnose`.
    """
    path = (out or run / "report") / "report.html"
    atomic_write_bytes(path, build_html(run, grids, quality, diagnose, quiet).encode())
    return path


CHROMIUM_NAMES = ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome")


def find_chromium() -> str:
    import shutil

    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    raise CalibError("no Chromium found for the screenshot: install Debian's `chromium` (apt-get install chromium)")


def screenshot(html: Path, png: Path, size: tuple[int, int] = (1280, 1000), width: int = 1280) -> Path:
    """The top of the page as headless Chromium renders it in a window of `size` (1280 px wide: the width the
    page is checked at), saved `width` pixels wide with 128 colours (a small PNG to commit)."""
    import subprocess

    from PIL import Image

    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.name}.tmp.png")
    cmd = [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--virtual-time-budget=10000", f"--window-size={size[0]},{size[1]}", f"--screenshot={tmp}",
           html.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if not tmp.is_file():
        raise CalibError(f"Chromium wrote no screenshot (exit {done.returncode}): {done.stderr.strip()[-200:]}")
    with Image.open(tmp) as im:
        small = im.convert("RGB").resize((width, round(im.height * width / im.width)), Image.LANCZOS)
    tmp.unlink()
    small.quantize(colors=128).save(tmp, "PNG", optimize=True)
    tmp.replace(png)
    return png
