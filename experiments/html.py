"""One self-contained HTML page for a study run: every table, every plot, sample grids, diagnosis, provenance.

Images are embedded as data URIs, so the file opens anywhere with no network and no folder beside it. The page
is a Jinja2 template (`templates/report.html.j2`) filled with pandas' HTML tables; a short inline script makes
tables sortable and, once the page has loaded, writes on <body> how many images failed to decode (the browser
test reads it).
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from calibration.errors import CalibError
from calibration.runs import atomic_write_bytes, provenance, read_jsonl

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


def _fmt(v) -> str:
    if pd.isna(v):
        return "-"
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def table_html(df: pd.DataFrame, table_id: str) -> str:
    return df.to_html(index=False, table_id=table_id, classes="data", border=0, na_rep="-", float_format=_fmt,
                      escape=True)


_TITLES = {"engines_side_by_side": "Engines side by side (same model, source and set size)",
           "reference_side_by_side": "Side by side with the reference study",
           "not_ok": "Cells not run (skipped or failed, with the reason)"}
_PREFIXES = (("table1_", "Table 1: default INT8, accuracy and speed ({})"),
             ("table2_", "Table 2: accuracy-aware INT8 ({})"),
             ("long_", "Every configuration, with the change to FP32 ({})"))


def _title(name: str) -> str:
    for prefix, title in _PREFIXES:
        if name.startswith(prefix):
            return title.format(name.removeprefix(prefix))
    return _TITLES.get(name, name.replace("_", " "))


def _order(name: str) -> tuple[int, str]:
    rank = {"table1_": 0, "table2_": 1, "engines_side_by_side": 2, "reference_side_by_side": 3, "long_": 4,
            "not_ok": 9}
    return next((r for k, r in rank.items() if name.startswith(k)), 5), name


def _plots(run: Path, tmp: Path) -> list[Figure]:
    from experiments.plot import write_plots

    return [Figure(data_uri(p), p.stem.replace("_", " ")) for p in write_plots(run, tmp / "plots")]


def _grids(run: Path, sources: list[str], grids: Path | None, tmp: Path) -> list[Figure]:
    """One sample grid per source: from the run's own sets, else `<grids>/<source>.png`."""
    from calibration.sets import read_set
    from calibration.show import save_grid

    figures = []
    for source in sources:
        own = sorted((run / "sets").glob(f"{source}-*pc-s*")) if (run / "sets").is_dir() else []
        own = [p for p in own if (p / "manifest.json").is_file()]
        if own:
            png = save_grid(read_set(own[0], allow_unbalanced=True), tmp / "grids" / f"{source}.png", per_class=8)
            figures.append(Figure(preview_uri(png), f"{source}: {own[0].name} (this run)"))
        elif grids is not None and (grids / f"{source}.png").is_file():
            figures.append(Figure(preview_uri(grids / f"{source}.png"),
                                  f"{source}: {grids / f'{source}.png'}"))
    return figures


def load_diagnose_rows(folder: Path) -> pd.DataFrame:
    """Diagnose rows: every `rows.jsonl` under `folder` (a run's `diagnose/`, or `calib diagnose` outputs)."""
    rows = [r for f in sorted(folder.rglob("rows.jsonl")) for r in read_jsonl(f)] if folder.is_dir() else []
    return pd.DataFrame(rows)


def _diagnose(folder: Path, tmp: Path) -> list[Figure]:
    from calibration.diagnose import plot_heatmaps

    figures = []
    df = load_diagnose_rows(folder)
    if not df.empty and {"model", "source", "index", "layer"} <= set(df):
        for metric in ("clipped_fraction", "sqnr_db"):
            for p in plot_heatmaps(df, tmp / "diagnose", metric):
                model = p.stem.removeprefix(f"diagnose_{metric}_")
                caption = f"{model}: {metric.replace('_', ' ')} per quantized layer and calibration source"
                figures.append(Figure(data_uri(p), caption))
    for p in sorted(folder.rglob("*.png")) if folder.is_dir() else []:
        figures.append(Figure(data_uri(p), str(p)))
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
    """The page's text (see `write_html`)."""
    import jinja2

    from calibration.progress import progress
    from experiments.report import load_rows, tables

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
        tabs = [{"name": name, "title": _title(name), "html": table_html(t, name)}
                for name, t in sorted(tables(df).items(), key=lambda kv: _order(kv[0]))]
        advance(description="plots")
        plots = _plots(run, tmp)
        advance(description="sample grids")
        grid_figs = _grids(run, sources, grids, tmp)
        advance(description="diagnosis")
        diagnose = diagnose or run / "diagnose"
        diag = _diagnose(diagnose, tmp)
        advance(description="page")
        env = jinja2.Environment(loader=jinja2.PackageLoader("experiments", "templates"),
                                 autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
        sections = [{"id": i, "title": t} for i, t in (("tables", "Tables"), ("plots", "Plots"),
                                                         ("sets", "Calibration sources"), ("diagnose", "Diagnosis"),
                                                         ("provenance", "Provenance"))]
        text = env.get_template(TEMPLATE).render(
            title=f"calib study: {_grid_name(run)}", run=str(run), n_rows=len(df),
            n_ok=int((df.get("status") == "ok").sum()) if "status" in df else len(df), built=provenance(),
            sections=sections, tables=tabs, plots=plots, grids=grid_figs, diagnose=diag, diagnose_dir=str(diagnose),
            quality=_quality(quality, sources),
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


def screenshot(html: Path, png: Path, size: tuple[int, int] = (1280, 1800), width: int = 640) -> Path:
    """The top of the page as headless Chromium renders it, scaled to `width` pixels (a small PNG to commit)."""
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
