"""`report RUN`: the self-contained HTML page of a run, checked in a real headless Chromium.

The browser test needs Debian's `chromium` (`.ci/run` installs it under CI=true); elsewhere it
skips when the browser is absent, and fails under CI. The page records its own script errors,
policy violations and how many of its images decoded into attributes of `<html>`, which
`--dump-dom` shows; a screenshot is kept under the test's tmp_path and its path printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import numpy as np
import pytest
from PIL import Image
from test_tools_support import run_cli, write_run

from pipeline.tools import report
from pipeline.tools.projector import pca_2d
from pipeline.tools.report import nearest, principal_components
from pipeline.tools.store import open_embeddings, unit_rows
from tests.tests_support import PROJECT_ROOT, run_pipeline

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
)
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220)}


def report_command(*args, cwd):
    """`python -m pipeline report ARGS...` run from another folder (`cwd`), as a user in their own folder would."""
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return run_pipeline("report", *args, cwd=cwd, env=env)


REVIEWS = {"pos": ["good movie", "great acting", "excellent plot"], "neg": ["bad film", "awful plot twist", "terrible acting"]}


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed: .ci/run installs it under CI=true (apt-get install chromium)")
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it under CI=true)")
    return found


def browse(page, tmp_path) -> tuple[dict, str, object]:
    """Load `page` in headless Chromium: the attributes of <html> after load, the DOM, and a screenshot's path."""
    browser = _chromium()
    url = page.resolve().as_uri()
    common = [browser, *CHROMIUM_FLAGS, "--virtual-time-budget=10000"]
    dumped = subprocess.run(
        [*common, f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", url], capture_output=True, text=True, timeout=120
    )
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    html_tag = re.search(r"<html([^>]*)>", dumped.stdout).group(1)
    attributes = {name: value for name, value in re.findall(r'([\w-]+)="([^"]*)"', html_tag)}
    screenshot = tmp_path / "report.png"
    shot = subprocess.run(
        [*common, f"--user-data-dir={tmp_path / 'profile-shot'}", "--window-size=1280,4000", f"--screenshot={screenshot}", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-2000:]
    print(f"report screenshot: {screenshot}")
    return attributes, dumped.stdout, screenshot


def _unescape(value: str) -> str:
    return value.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, tiny_text_model, tiny_image_model):
    """A run made by the CLI: 12 labelled images (JPEG and PNG) and one broken file, 24 labelled reviews and one bad line."""
    root = tmp_path_factory.mktemp("report-run")
    images = root / "images"
    images.mkdir()
    rows = ["uri,label"]
    rng = np.random.default_rng(0)
    for i in range(12):
        name = list(COLOURS)[i % 3]
        pixels = np.clip(np.array(COLOURS[name]) + rng.integers(-25, 25, size=(48, 64, 3)), 0, 255).astype(np.uint8)
        path = images / f"{name}-{i}.{'png' if i % 4 == 0 else 'jpg'}"
        Image.fromarray(pixels).save(path)
        rows.append(f"{path},{name}")
    (images / "broken.jpg").write_bytes(b"this is not a JPEG")
    rows.append(f"{images / 'broken.jpg'},red")
    (root / "images.csv").write_text("\n".join(rows) + "\n")
    with open(root / "reviews.jsonl", "w") as f:
        for i in range(24):
            label = "pos" if i % 2 else "neg"
            f.write(json.dumps({"id": f"review-{i}", "text": f"{REVIEWS[label][i % 3]} review {i}", "label": label}) + "\n")
        f.write("{this line is not JSON\n")
    out = root / "out"
    done = run_pipeline(
        "run",
        "--output",
        out,
        "--text-input",
        root / "reviews.jsonl",
        "--text-model",
        tiny_text_model,
        "--text-id-field",
        "id",
        "--image-input",
        root / "images.csv",
        "--image-model",
        tiny_image_model,
        "--image-layer",
        "features",
        "--passthrough",
        "label",
        "--max-failed-fraction",
        "0.5",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_report_of_a_real_run_renders_in_chromium(real_run, tmp_path):
    before = sorted(p.relative_to(real_run) for p in real_run.rglob("*"))
    page = tmp_path / "report.html"
    done = report_command(real_run, "--out", page, "-k", "5", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert str(page) in done.stdout and "precision@5" in done.stdout
    assert sorted(p.relative_to(real_run) for p in real_run.rglob("*")) == before  # the run folder is untouched

    text = page.read_text()
    # Self-contained: nothing fetched from anywhere (and the page's policy would refuse it).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", text, re.I)
    assert "default-src 'none'" in text
    # The summary, the counts and the failure reasons with an example of each.
    manifest = json.loads((real_run / "_MANIFEST.json").read_text())
    assert f"Run {manifest['run_id']}" in text
    assert "UnsupportedImageFormat" in text and "broken.jpg" in text
    assert "RecordError" in text and "malformed JSON" in text
    # Text galleries show the reviews read back from the source file.
    snippets = re.findall(r'<div class="snippet">([^<]*)</div>', text)
    assert len(snippets) == 12 * 6  # 12 queries, each with its 5 neighbours
    assert all(re.fullmatch(r"[a-z ]+ review \d+", s) for s in snippets), snippets[:5]

    attributes, dom, screenshot = browse(page, tmp_path)
    assert attributes.get("data-report-ready") == "1", attributes
    assert json.loads(_unescape(attributes["data-js-errors"])) == []  # no script error, no policy violation
    images = int(attributes["data-images"])
    assert images == 12 * 6  # 12 image queries, each with its 5 neighbours, every one a thumbnail
    assert attributes["data-images-rendered"] == str(images), attributes.get("data-images-broken")
    assert re.findall(r'data-drawn="(\d+)"', dom) == ["24", "12"]  # both maps drawn, every usable row on them
    with Image.open(screenshot) as shot:
        assert shot.size == (1280, 4000)
        assert len(set(shot.convert("RGB").resize((64, 200)).getdata())) > 20  # not a blank page


def test_report_goes_outside_the_run_folder_by_default(real_run, tmp_path):
    before = sorted(p.relative_to(real_run) for p in real_run.rglob("*"))
    run_id = json.loads((real_run / "_MANIFEST.json").read_text())["run_id"]
    done = report_command(real_run, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["report"] == str(tmp_path / f"report-{run_id}.html")
    assert (tmp_path / f"report-{run_id}.html").stat().st_size == summary["bytes"]
    assert summary["dead_letters"] == 2
    assert summary["modalities"]["image"]["label_column"] == "label"  # `label` picked by default
    assert sorted(p.relative_to(real_run) for p in real_run.rglob("*")) == before

    refused = report_command(real_run, "--out", real_run / "report.html", cwd=tmp_path)
    assert refused.returncode == 2
    assert "inside the run folder" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    unknown = report_command(real_run, "--label-column", "colour", "--out", tmp_path / "x.html", cwd=tmp_path)
    assert unknown.returncode == 2 and "passthrough columns: label" in unknown.stderr


def test_a_failed_run_needs_allow_failed(tmp_path, capsys):
    rng = np.random.default_rng(0)
    run = write_run(tmp_path / "run", rng.normal(size=(30, 8)), passthrough={"label": ["a", "b", "c"] * 10}, modality="text")
    manifest = json.loads((run / "_MANIFEST.json").read_text())
    manifest.update(status="failed", failures={"text": "12 of 42 records failed, over the budget of 10%"})
    (run / "_MANIFEST.json").write_text(json.dumps(manifest))
    out = tmp_path / "page.html"

    assert run_cli(report, [str(run), "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert "--allow-failed" in error and "over the budget" in error and not out.exists()

    assert run_cli(report, [str(run), "--out", str(out), "--allow-failed"]) == 0
    page = out.read_text()
    assert "status <b>failed</b>" in page and "over the budget of 10%" in page
    assert page.count('class="snippet"') == 12 * 9  # sources absent: each tile says so instead
    assert "[source not readable" in page


def test_neighbours_match_brute_force_whatever_the_chunks(tmp_path):
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(257, 6)).astype(np.float32)
    vectors[17] = 0  # no direction: never a neighbour
    run = write_run(tmp_path / "run", vectors, files=3, row_group_rows=19)
    embeddings = open_embeddings(str(run))
    unit, ok = unit_rows(vectors)
    query_positions = np.array([0, 5, 100, 256])
    scores, positions = nearest(embeddings, unit[query_positions], query_positions, 7, batch_rows=23)

    similarity = unit[query_positions] @ unit.T
    similarity[:, ~ok] = -np.inf
    similarity[np.arange(4), query_positions] = -np.inf  # not one's own neighbour
    expected = np.argsort(-similarity, axis=1, kind="stable")[:, :7]
    assert positions.tolist() == expected.tolist()
    assert np.allclose(scores, np.take_along_axis(similarity, expected, axis=1), atol=1e-5)


def test_a_100000_row_run_gives_a_small_page(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows, labels = 100_000, 10
    centres = rng.normal(size=(labels, 64)) * 4
    classes = rng.integers(0, labels, size=rows)
    vectors = (centres[classes] + rng.normal(size=(rows, 64))).astype(np.float32)
    run = write_run(
        tmp_path / "run", vectors, passthrough={"label": [f"class-{c}" for c in classes]}, files=4, row_group_rows=20_000
    )
    out = tmp_path / "big.html"

    started = time.perf_counter()
    assert run_cli(report, [str(run), "--out", str(out), "--json"]) == 0
    seconds = time.perf_counter() - started
    summary = json.loads(capsys.readouterr().out)
    print(f"report of {rows:,} rows: {seconds:.1f} s, {out.stat().st_size / 1e6:.2f} MB")

    assert out.stat().st_size < 5_000_000
    image = summary["modalities"]["image"]
    assert (
        image["rows"] == rows and image["map_points"] == report.DEFAULT_MAP_POINTS and image["queries"] == report.DEFAULT_QUERIES
    )
    assert image["precision_at_8"] > 0.95  # well-separated classes: neighbours share the label
    page = out.read_text()
    assert page.count('class="tile') == report.DEFAULT_QUERIES * (1 + report.DEFAULT_K)
    assert len(re.findall(r"<tr><td>class-\d</td>", page)) == labels  # precision@k of every label


def test_fast_principal_components_match_the_exact_ones():
    rng = np.random.default_rng(5)
    scales = np.r_[6.0, 3.0, np.full(198, 0.5)]  # two clear directions above the noise
    basis = np.linalg.qr(rng.normal(size=(200, 200)))[0]
    vectors = (rng.normal(size=(3000, 200)) * scales) @ basis.T

    fast, fast_explained = principal_components(vectors)
    exact, exact_explained = pca_2d(vectors)
    assert np.allclose(fast_explained, exact_explained, rtol=1e-3)
    assert np.allclose(fast, exact, atol=1e-3 * np.abs(exact).max())
