"""The HTML report: self-contained, escaped, written atomically, readable at any size."""

import base64
import json
import os
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from cli import EXIT_MISMATCH, EXIT_PASS, EXIT_USAGE, main
from gradcheck import check_builtin
from reports import render_report, write_report

EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def passing():
    return check_builtin("gru", layers=2, seed=1, oracles="analytic,numeric").as_dict()


@pytest.fixture(scope="module")
def failing():
    return check_builtin("gru", bug="reset-gate-derivative", seed=1,
                         oracles="analytic,numeric").as_dict()


class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.srcs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for key, value in attrs:
            if key in ("src", "href"):
                self.srcs.append(value)

    def handle_data(self, data):
        self.text.append(data)


def parse(html):
    c = Collector()
    c.feed(html)
    c.close()
    return c


def png_size(uri):
    data = base64.b64decode(uri.split(",", 1)[1])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_report_is_self_contained_html(passing):
    html = render_report(passing)
    doc = parse(html)
    assert doc.tags[0] == "html" and "body" in doc.tags and "table" in doc.tags
    assert doc.srcs and all(s.startswith("data:image/png;base64,") for s in doc.srcs)
    assert "<script" not in html and "http://" not in html and "https://" not in html
    text = " ".join(doc.text)
    assert "every per-step gate block agrees at every step" in text
    # one heat map figure per parameter, plus the step map, adjoints and step-size curve
    assert len(doc.srcs) == 8 + 3


def test_failing_report_names_the_block_and_steps(failing):
    text = " ".join(parse(render_report(failing)).text)
    assert "the error enters at t = 4 in layer 0, block r of W0, U0, b0" in text
    assert "analytic is the odd one out" not in text   # only two oracles here
    assert "fail" in text.lower()


def test_user_strings_are_escaped(passing):
    doc = json.loads(json.dumps(passing))
    doc["cell"]["name"] = EVIL
    doc["command"] = EVIL
    for c in doc["comparisons"]:
        if c["parameter"] == "V":
            c["parameter"] = EVIL
    for grads in doc["gradients"].values():
        grads[EVIL] = grads.pop("V")
    html = render_report(doc)
    assert EVIL not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html


def test_interrupted_write_leaves_no_half_file(passing, tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    target.write_text("previous report")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_report(passing, target)
    assert target.read_text() == "previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_write_creates_folder_and_readable_file(passing, tmp_path):
    path = write_report(passing, tmp_path / "sub" / "r.html")
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert oct(path.stat().st_mode & 0o444) == oct(0o444)


def test_large_matrix_keeps_a_readable_figure(passing):
    # a 256 x 768 recurrent matrix: fixed figure size, blocks still labelled
    from reports.figures import parameter_heatmaps
    rng = np.random.default_rng(0)
    big = rng.normal(size=(256, 768))
    uri = parameter_heatmaps("U0", (256, 768), [("analytic", big, "value"),
                                                ("numeric", big, "value"),
                                                ("|analytic - numeric|", big * 1e-10, "log_error")],
                             ["r", "z", "h"], 1)
    small = parameter_heatmaps("U0", (4, 12), [("analytic", big[:4, :12], "value")], ["r", "z", "h"], 1)
    w_big, h_big = png_size(uri)
    w_small, h_small = png_size(small)
    assert 600 < w_big < 1600 and 150 < h_big < 500
    assert 150 < h_small < 500
    assert len(uri) < 400_000


def test_default_report_size_is_a_few_hundred_kib(tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["check", "gru", "--html", str(out)]) == EXIT_PASS
    assert f"report: {out}" in capsys.readouterr().out
    assert 50_000 < out.stat().st_size < 400_000


def test_report_subcommand_renders_a_saved_result(tmp_path, capsys):
    code = main(["check", "gru", "--bug", "wrapped-time-index", "--oracles", "analytic,numeric",
                 "--json"])
    assert code == EXIT_MISMATCH
    saved = tmp_path / "result.json"
    saved.write_text(capsys.readouterr().out)
    out = tmp_path / "r.html"
    assert main(["report", str(saved), "-o", str(out)]) == EXIT_PASS
    text = " ".join(parse(out.read_text()).text)
    assert "the error enters at t = 0" in text


@pytest.mark.parametrize("content, message", [
    (None, "cannot read"), ("{", "is not JSON"), ('{"verdict": "pass"}', "missing cell"),
    ("[1, 2]", "is not a gradcheck result"),
])
def test_report_subcommand_bad_input(tmp_path, capsys, content, message):
    path = tmp_path / "in.json"
    if content is not None:
        path.write_text(content)
    assert main(["report", str(path), "-o", str(tmp_path / "o.html")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.html").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (Debian package chromium) is not installed")
def test_report_renders_in_headless_chromium(failing, tmp_path):
    page = write_report(failing, tmp_path / "report.html")
    # GRADCHECK_SCREENSHOT_DIR keeps the screenshot for a person to look at
    keep = Path(os.environ.get("GRADCHECK_SCREENSHOT_DIR", tmp_path))
    keep.mkdir(parents=True, exist_ok=True)
    shot = keep / "report.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,3000",
         f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1280, 3000)
    assert len(data) > 50_000     # a blank page compresses to a few KiB
