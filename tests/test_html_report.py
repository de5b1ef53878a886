"""`calib study report --html`: one self-contained page, opened in headless Chromium.

The browser is the judge of broken images: after the page's load event, the page writes on <body> how many
<img> elements Chromium could not decode; `--dump-dom` returns that DOM. A page with one corrupted image shows
the check can fail. The tests skip only when no Chromium is installed (`.ci/run` installs it).
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from calib.cli import app
from calib.study.html import build_html, write_html
from calib.study.report import load_rows, tables
from tests.conftest import use_test_data

GRID = """
name = "html"
models = ["tiny_cnn"]
sources = ["noise", "fractal"]
per_class = 2
probe_per_class = 2
seeds = [0]
algos = ["default"]
subset_sizes = [0]
benchmark = false
[source_options.fractal]
variants = 2
"""
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-headless-shell", "chromium-browser"))
                 if p), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here: apt-get install chromium "
                                                              "(.ci/run installs it)")


class Page(HTMLParser):
    """Tags and attributes of a page, collected with the standard library's parser."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def all(self, tag: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag]


@pytest.fixture(scope="module")
def run(tmp_path_factory, cifar_dir, weights_dir):
    """A finished tiny study with diagnose rows of one of its sets."""
    from calib.core.diagnose import run_diagnose
    from calib.study.runner import run_study

    with pytest.MonkeyPatch.context() as mp:
        use_test_data(mp, tmp_path_factory, cifar_dir, weights_dir)
        tmp = tmp_path_factory.mktemp("html")
        grid = tmp / "grid.toml"
        grid.write_text(GRID)
        out = tmp / "run"
        run_study(grid, out, progress=False)
        sets = sorted((out / "sets").glob("noise-*"))
        run_diagnose("tiny_cnn", sets, out / "diagnose" / "tiny_cnn", record_path=tmp / "records.jsonl",
                     weights=next(weights_dir.glob("cifar10_tiny_cnn-*.pt")))
        yield out


@pytest.fixture(scope="module")
def page(run) -> Path:
    return write_html(run)


def chromium(*args: str, timeout: int = 120) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
           "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout


def browser_dom(path: Path, width: int = 1280, height: int = 800) -> dict:
    """Attributes Chromium's DOM has on <body> after the load event (in a window `width` x `height`), plus the
    table ids it holds."""
    dom = chromium(f"--window-size={width},{height}", "--dump-dom", path.resolve().as_uri())
    body = re.search(r"<body([^>]*)>", dom)
    assert body, f"Chromium returned no <body> for {path}: {dom[:300]!r}"
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    return {"attrs": attrs, "tables": [a.get("id") for a in Page(dom).all("table")]}


def test_page_is_self_contained_and_holds_every_table(run, page):
    text = page.read_text()
    html = Page(text)
    imgs = html.all("img")
    assert imgs and all(a["src"].startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for a in imgs)
    refs = [a.get("src") or a.get("href") or "" for _, a in html.tags]
    assert not [r for r in refs if r.startswith(("http:", "https:", "//", "file:"))]
    ids = {a.get("id") for a in html.all("table")}
    assert set(tables(load_rows(run))) <= ids  # every table of the run, by name
    assert {"provenance"} <= ids
    for section in ("verdict", "plots", "reference", "sets", "diagnose", "tables", "provenance"):
        assert f'id="{section}"' in text
    # one sample grid per source, from the run's own sets; diagnose heatmaps and the layers plot
    assert sum("(this run)" in (a.get("alt") or "") for a in imgs) == 2
    assert any((a.get("alt") or "").startswith("tiny_cnn: clipped fraction per quantized layer") for a in imgs)
    assert any("layers.png" in (a.get("alt") or "") for a in imgs)
    # provenance: the run's manifest with its git SHA and versions
    manifest = next(run.glob("manifest-*.json")).name
    assert manifest in text and "openvino" in text


def test_every_embedded_image_decodes(page):
    for a in Page(page.read_text()).all("img"):
        data = base64.b64decode(a["src"].split(",", 1)[1])
        with Image.open(__import__("io").BytesIO(data)) as im:
            im.load()
            assert im.width > 50 and im.height > 50


@needs_chromium
def test_chromium_renders_the_page_with_no_broken_image(run, page, tmp_path):
    dom = browser_dom(page)
    n_img = len(Page(page.read_text()).all("img"))
    assert dom["attrs"].get("data-images") == str(n_img), dom["attrs"]
    assert dom["attrs"].get("data-images-broken") == "0", dom["attrs"]
    assert set(tables(load_rows(run))) <= set(dom["tables"])
    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,1600", page.resolve().as_uri())
    with Image.open(shot) as im:
        assert im.size == (1280, 1600)
        pixels = np.asarray(im.convert("L"), np.float32)
    assert pixels.std() > 10  # text, tables and plots, not a blank page


@needs_chromium
def test_chromium_check_catches_a_broken_image(page, tmp_path):
    text = page.read_text()
    start = text.index("data:image/png;base64,") + len("data:image/png;base64,")
    broken = tmp_path / "broken.html"
    broken.write_text(text[:start] + "bm90IGEgcG5n" + text[text.index('"', start):])  # "not a png"
    attrs = browser_dom(broken)["attrs"]
    assert attrs.get("data-images-broken") == "1"


def test_cli_study_report_html(run, tmp_path):
    r = CliRunner().invoke(app, ["study", "report", str(run), "--out", str(tmp_path / "rep"), "--html", "--quiet"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "table1_openvino.md").is_file()


def test_cli_study_report_json_is_the_condition_rows_on_disk(run, tmp_path):
    import json

    r = CliRunner().invoke(app, ["study", "report", str(run), "--out", str(tmp_path / "rep"), "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    on_disk = pd.concat([pd.read_csv(p) for p in sorted((tmp_path / "rep").glob("long_*.csv"))])
    expected = on_disk.astype(object).where(on_disk.notna(), None).to_dict("records")
    assert rows == json.loads(json.dumps(expected, default=lambda v: v.item()))
    assert {"model", "source", "verdict"} <= set(rows[0])


def test_html_errors_are_one_line(run, tmp_path):
    r = CliRunner().invoke(app, ["study", "report", str(run), "--out", str(tmp_path / "rep"), "--html",
                                 "--grids", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "--grids" in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "rep" / "report.html").exists()


def test_grids_folder_fills_in_for_runs_without_sets(run, tmp_path):
    """A copied run without its sets/ (like the committed results) takes sample grids from a folder."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("sets", "models"))
    grids = tmp_path / "grids"
    grids.mkdir()
    Image.fromarray(np.full((40, 900, 3), 200, np.uint8)).save(grids / "noise.png")
    quality = tmp_path / "inspect.jsonl"
    quality.write_text('{"kind": "inspect", "source": "noise", "model": "m", "frechet_distance": 12.5}\n'
                       '{"kind": "inspect", "source": "inversion", "model": "m", "frechet_distance": 3.25}\n')
    text = build_html(copy, grids=grids, quality=quality)
    alts = [a.get("alt") or "" for a in Page(text).all("img")]
    assert any(a.startswith("noise: ") and "grids" in a for a in alts)
    assert not any(a.startswith("fractal: ") for a in alts)  # no grid for it: nothing invented
    assert 'id="quality"' in text and "12.5" in text and "3.25" not in text  # only the run's sources


def test_page_leads_with_the_verdict_then_heatmaps_then_the_reference_then_folded_details(page):
    text = page.read_text()
    order = [text.index(f'id="{s}"') for s in ("verdict-table", "plots", "reference", "tables")]
    assert order == sorted(order)
    verdict = text[text.index('id="verdict-table"'):text.index("</table>", text.index('id="verdict-table"'))]
    for column in ("FP32", "INT8 − FP32 [paired 95 % CI]", "flips →wrong/→right", "verdict"):
        assert column in verdict
    assert re.search(r"[-+]?\d+\.\d\d pts \[[-+]?\d+\.\d\d, [-+]?\d+\.\d\d\]", verdict)  # points, 2 decimals
    detail = text[text.index('id="tables"'):text.index('id="provenance"')]
    assert detail.count("<details") >= 5 and detail.count("<details") == detail.count("<table")
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", text)
    assert cells and not [c for c in cells if re.search(r"\d[eE][-+]\d", c)]  # no 1.36e-16
    assert not [c for c in cells if re.fullmatch(r"-?\d+\.\d{5,}", c.strip())]  # no -0.0003333
    for img in Page(text).all("img"):  # every plot captioned, with alt text
        assert len(img.get("alt") or "") > 15
    assert text.count("<figcaption>") == len(Page(text).all("img"))


def test_numbers_are_for_people():
    from calib.study.html import for_people

    df = pd.DataFrame({"delta_to_fp32": [-0.0003333, 1.36e-16], "int8_accuracy": [0.92133333, 0.9],
                       "int8_fps": [12345.6, float("nan")], "mcnemar_p": [0.0123456, 1e-9], "speedup": [1.8512, 2]})
    shown = for_people(df)
    assert shown.iloc[:, 0].tolist() == ["-0.03", "0.00"] and shown.iloc[:, 1].tolist() == ["0.9213", "0.9000"]
    assert shown.iloc[:, 2].tolist() == ["12,346", "-"] and shown.iloc[:, 3].tolist() == ["0.0123", "< 0.001"]
    assert list(shown.columns)[:2] == ["INT8 − FP32 (pts)", "INT8 acc"]


# Opens every folded part, then counts the elements wider inside than they show (they would scroll sideways
# or cut what they hold) and the document's own width; written on <body> for `browser_dom`.
SIDEWAYS = """<script>
window.addEventListener("load", function () {
  document.querySelectorAll("details").forEach(function (d) { d.open = true; });
  var wide = Array.from(document.querySelectorAll("body *")).filter(function (e) {
    return e.scrollWidth > e.clientWidth + 1 && e.clientWidth > 0; });
  var b = document.body;
  b.setAttribute("data-open-scroll-width", document.documentElement.scrollWidth);
  b.setAttribute("data-sideways", wide.length);
  b.setAttribute("data-sideways-first", wide.slice(0, 3).map(function (e) {
    return e.tagName + "#" + (e.id || "") + "." + e.className + ":" + e.scrollWidth + ">" + e.clientWidth;
  }).join(" "));
});
</script>"""


@needs_chromium
def test_chromium_at_1280_px_no_sideways_scroll_and_the_verdict_above_the_fold(page, tmp_path):
    attrs = browser_dom(page, 1280, 800)["attrs"]
    assert attrs.get("data-inner-width") == "1280", attrs
    assert int(attrs["data-scroll-width"]) <= 1280, attrs
    assert attrs.get("data-images-broken") == "0"
    assert 0 < int(attrs["data-verdict-top"]) < int(attrs["data-inner-height"]) // 2, attrs
    opened = tmp_path / "opened.html"  # every table and block unfolded: still nothing wider than the window
    opened.write_text(page.read_text().replace("</body>", SIDEWAYS + "</body>"))
    attrs = browser_dom(opened, 1280, 800)["attrs"]
    assert int(attrs["data-open-scroll-width"]) <= 1280, attrs
    assert attrs["data-sideways"] == "0", attrs["data-sideways-first"]


@needs_chromium
def test_the_reference_side_by_side_fits_1280_px_with_its_speed_columns(tmp_path):
    """The widest tables of a real run (the committed main job's, which overflowed and cut the speed column)
    fit a 1280 px window with nothing scrolling sideways."""
    from calib.study.html import for_people
    from calib.study.report import speedup_view

    run = Path(__file__).resolve().parents[1] / "results" / "study" / "official"
    named = tables(load_rows(run))
    widest = sorted(named.items(), key=lambda kv: -len(kv[1].columns))[:3]
    widest += [(name, t) for name, t in named.items() if name.startswith("reference_side_by_side")]
    assert len(widest) > 3
    body = "".join(f'<div class="scroll">{for_people(speedup_view(t)[0]).to_html(index=False, classes="data")}</div>'
                   for _, t in widest)
    text = page_template_with(body)
    page = tmp_path / "wide.html"
    page.write_text(text.replace("</body>", SIDEWAYS + "</body>"))
    attrs = browser_dom(page, 1280, 800)["attrs"]
    assert int(attrs["data-open-scroll-width"]) <= 1280, attrs
    assert attrs["data-sideways"] == "0", attrs["data-sideways-first"]


def page_template_with(body: str) -> str:
    """The report page's own head (its style) and script around `body`."""
    from importlib.resources import files

    template = (files("calib.study") / "templates" / "report.html.j2").read_text()
    head = template[:template.index("<body>")].replace("{{ title }}", "wide tables")
    script = template[template.index("<script>"):template.index("</script>") + len("</script>")]
    return f"{head}<body>{body}{script}</body></html>"


def test_study_report_refuses_an_existing_report_folder_before_any_work(run, tmp_path):
    out = tmp_path / "rep"
    first = CliRunner().invoke(app, ["study", "report", str(run), "--out", str(out)])
    assert first.exit_code == 0, first.output
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    again = CliRunner().invoke(app, ["study", "report", str(run), "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing written
    replaced = CliRunner().invoke(app, ["study", "report", str(run), "--out", str(out), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert (out / "manifest.json").is_file() and (out / "table1_openvino.md").is_file()
