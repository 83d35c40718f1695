"""The HTML report: self-contained, escaped, written atomically, readable at any size."""

import base64
import json
import os
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from cli import EXIT_MISMATCH, EXIT_PASS, EXIT_USAGE, main
from gradcheck import check_builtin
from reports import check_output_path, render_report, validate_result, write_report

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


# -- the output path: refused up front, with one line naming it and the problem ---------------

def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def bad_paths(tmp_path):
    (tmp_path / "afile").write_text("a file, not a folder")
    return {
        "empty": ("", "the report path is empty"),
        "directory": (str(tmp_path), "it is a directory"),
        "parent is a file": (str(tmp_path / "afile" / "x.html"), "afile is not a directory"),
        "ancestor is a file": (str(tmp_path / "afile" / "sub" / "x.html"),
                               "afile is not a directory"),
        "trailing separator": (str(tmp_path / "new") + os.sep, "names a directory"),
        "dot-dot": (str(tmp_path / "new" / ".."), "names a directory"),
        "name too long": (str(tmp_path / ("x" * 300 + ".html")), "longer than 255 bytes"),
        "device": ("/dev/null", "is not a regular file"),
        "pseudo file system": ("/proc/x.html", "cannot create files in /proc"),
    }


BAD_PATHS = ["empty", "directory", "parent is a file", "ancestor is a file", "trailing separator",
             "dot-dot", "name too long", "device", "pseudo file system"]


def needs(path):
    if path.startswith(("/proc/", "/dev/")) and not os.path.exists(os.path.dirname(path)):
        pytest.skip(f"no {os.path.dirname(path)} here")


@pytest.mark.parametrize("case", BAD_PATHS)
def test_check_output_path_refuses_with_one_line(tmp_path, case):
    path, problem = bad_paths(tmp_path)[case]
    needs(path)
    before = listing(tmp_path)
    with pytest.raises(ValueError) as info:
        check_output_path(path)
    message = str(info.value)
    assert problem in message and "\n" not in message
    assert path == "" or path in message
    assert listing(tmp_path) == before          # nothing created, nothing left behind


def test_check_output_path_accepts_without_creating_anything(tmp_path):
    (tmp_path / "old.html").write_text("previous report")
    assert check_output_path(tmp_path / "old.html") == tmp_path / "old.html"
    # a missing parent folder is accepted (write_report creates it), but not made here
    assert check_output_path(str(tmp_path / "a" / "b" / "r.html")) == tmp_path / "a" / "b" / "r.html"
    assert listing(tmp_path) == ["old.html"]
    assert (tmp_path / "old.html").read_text() == "previous report"


@pytest.mark.parametrize("case", ["directory", "parent is a file", "empty", "pseudo file system"])
def test_write_report_refuses_bad_paths_with_value_error(failing, tmp_path, case):
    path, problem = bad_paths(tmp_path)[case]
    needs(path)
    before = listing(tmp_path)
    with pytest.raises(ValueError, match=problem):
        write_report(failing, path)
    assert listing(tmp_path) == before


def test_write_report_failure_is_a_value_error_and_leaves_nothing(failing, tmp_path, monkeypatch):
    def disk_full(src, dst):
        raise OSError(28, "No space left on device", str(src))

    monkeypatch.setattr(os, "replace", disk_full)
    target = tmp_path / "r.html"
    with pytest.raises(ValueError) as info:
        write_report(failing, target)
    assert str(info.value) == f"cannot write {target}: No space left on device"
    assert listing(tmp_path) == []


def test_temporary_file_fits_beside_a_long_name(failing, tmp_path, monkeypatch):
    # a 250-byte name is legal, but ".NAME.XXXXXXXX.part" beside it is not
    target = tmp_path / ("r" * 245 + ".html")
    assert write_report(failing, target) == target
    assert listing(tmp_path) == [target.name]
    monkeypatch.chdir(tmp_path)                   # a bare name: the temporary file goes in "."
    assert write_report(failing, "here.html").read_text(encoding="utf-8").startswith("<!DOCTYPE")


@pytest.mark.parametrize("output, problem", [("", "the report path is empty"),
                                             ("{tmp}", "is a directory"),
                                             ("{tmp}/afile/r.html", "afile is not a directory")])
def test_report_subcommand_bad_output_exits_2(failing, tmp_path, capsys, output, problem):
    (tmp_path / "afile").write_text("")
    saved = tmp_path / "result.json"
    saved.write_text(json.dumps(failing))
    assert main(["report", str(saved), "-o", output.format(tmp=tmp_path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert problem in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("output, problem", [("", "the report path is empty"),
                                             ("{tmp}", "is a directory"),
                                             ("{tmp}/afile/r.html", "afile is not a directory")])
def test_check_refuses_a_bad_html_path_before_checking(tmp_path, capsys, monkeypatch, output,
                                                      problem):
    # needs cli.py to call reports.check_output_path(args.html) before the check
    import gradcheck.runner

    def no_check(*args, **kwargs):
        raise AssertionError("the check ran before the report path was checked")

    monkeypatch.setattr(gradcheck.runner, "check_builtin", no_check)
    (tmp_path / "afile").write_text("")
    assert main(["check", "gru", "--html", output.format(tmp=tmp_path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert problem in err and len(err.strip().splitlines()) == 1


# -- malformed results: ValueError naming the first bad field by its JSON path -----------------

def mutated(doc, change):
    doc = json.loads(json.dumps(doc))
    change(doc)
    return doc


def rename(table, old, new):
    table[new] = table.pop(old)


MALFORMED = [
    (lambda d: d.clear() or d.update(verdict="pass", cell={}, oracles=[], comparisons=[]),
     "summary is missing"),
    (lambda d: d.update(cell=5, oracles=3, comparisons=7), "cell must be an object, not 5"),
    (lambda d: d.update(oracles=3), "oracles must be an array, not 3"),
    (lambda d: d.update(comparisons=7), "comparisons must be an array, not 7"),
    (lambda d: d.update(verdict="maybe"), 'verdict must be one of pass, fail, interrupted'),
    (lambda d: d["comparisons"][0].pop("oracles"), r"comparisons\[0\].oracles is missing"),
    (lambda d: d["comparisons"][1].update(oracles=["analytic"]),
     r"comparisons\[1\].oracles must be an array of two oracle names"),
    (lambda d: d["comparisons"][2].update(max_abs_error=None),
     r"comparisons\[2\].max_abs_error must be a number .*, not null"),
    (lambda d: d["comparisons"][0].update(atol="1e-6"), r"comparisons\[0\].atol must be a number"),
    (lambda d: d["gradients"].update(analytic=None), "gradients.analytic must be an object, not null"),
    (lambda d: rename(d["gradients"]["numeric"], "U0", "U9"),
     r"gradients.numeric.U0 is missing \(comparisons\[\d+\] compares it\)"),
    (lambda d: d["comparisons"][0].update(parameter="W9"), "gradients.analytic.W9 is missing"),
    (lambda d: d["gradients"]["numeric"]["U0"][2].pop(),
     r"gradients.numeric.U0\[2\] has shape \[14\] where gradients.numeric.U0\[0\] has \[15\]"),
    (lambda d: d["gradients"]["analytic"]["V"].pop(), r"gradients.analytic.V has shape \[4, 3\]"),
    (lambda d: d["gradients"]["analytic"]["c"].__setitem__(0, "x"),
     r'gradients.analytic.c\[0\] must be a number or an array of numbers, not "x"'),
    (lambda d: d["blocks"]["U0"].update(names=["a", "b"]), "blocks.U0 splits axis 1 of length 15"),
    (lambda d: d["blocks"]["U0"].update(axis=2), "blocks.U0.axis 2 is out of range"),
    (lambda d: d["localisation"]["rows"].pop(),
     "localisation.step_excess has 9 rows, but localisation.rows has 8"),
    (lambda d: d["localisation"].pop("adjoint_values"), "localisation.adjoint_values is missing"),
    (lambda d: d["step_curve"]["errors"].pop(), "step_curve.errors has 24 values for 25 steps"),
    (lambda d: d["timings_s"].update(analytic="fast"), 'timings_s.analytic must be a number, not "fast"'),
    (lambda d: d.update(notes="one note"), 'notes must be an array, not "one note"'),
]


@pytest.mark.parametrize("change, message", MALFORMED)
def test_malformed_result_is_a_value_error_naming_the_field(failing, change, message):
    with pytest.raises(ValueError, match=message):
        render_report(mutated(failing, change))


def test_report_subcommand_exits_2_on_a_malformed_result(failing, tmp_path, capsys):
    saved = tmp_path / "in.json"
    saved.write_text(json.dumps(mutated(failing, lambda d: d["comparisons"][0].pop("oracles"))))
    assert main(["report", str(saved), "-o", str(tmp_path / "o.html")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "comparisons[0].oracles is missing" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.html").exists()


def test_validate_result_names_its_source():
    with pytest.raises(ValueError, match=r"^r\.json is not a gradcheck result: the result must "
                                         "be a JSON object, not an array$"):
        validate_result([1, 2], source="r.json")


def drop_optional(doc):
    for key in ("localisation", "step_curve", "blocks", "notes", "command", "versions",
                "timings_s", "losses"):
        doc[key] = None
    del doc["gradients"]["numeric"]              # a pair whose gradients were not kept
    for c in doc["comparisons"]:
        for key in ("worst_index", "worst_block", "failed_elements", "kink_elements"):
            c.pop(key)


def test_optional_fields_may_be_null_or_absent(failing):
    text = " ".join(parse(render_report(mutated(failing, drop_optional))).text)
    assert "W0" in text and "fail" in text
    bare = mutated(failing, lambda d: [d.pop(k) for k in list(d) if k not in
                                       ("verdict", "summary", "cell", "oracles", "comparisons")])
    assert render_report(bare).rstrip().endswith("</html>")


VARIANTS = {
    "default": {}, "bug": {"bug": "reset-gate-derivative"}, "fast": {"mode": "fast"},
    "embedding": {"embedding": True}, "truncated": {"truncate": 2, "steps": 6},
    "two oracles": {"oracles": "analytic,numeric"},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_real_result_variant_validates_and_renders(variant):
    doc = json.loads(json.dumps(check_builtin("gru", **VARIANTS[variant]).as_dict()))
    assert validate_result(doc) is doc
    assert render_report(doc).rstrip().endswith("</html>")


def test_scalar_and_empty_parameters_render():
    from gradcheck import Batch, check_gradients, function_cell

    def loss(p, batch):
        return float(np.tanh(batch.x @ p["W"]).sum() * p["s"] + p["Z"].sum())

    def gradient(p, batch):
        a = np.tanh(batch.x @ p["W"])
        return {"W": np.einsum("tbd,tbk->dk", batch.x, 1 - a ** 2) * p["s"],
                "s": np.asarray(a.sum()), "Z": np.ones_like(p["Z"])}

    rng = np.random.default_rng(0)
    params = {"W": rng.normal(size=(3, 6)), "s": np.asarray(1.3), "Z": np.zeros((0, 3))}
    batch = Batch(rng.normal(size=(4, 2, 3)), np.zeros((4, 2), int), np.ones((4, 2)))
    cell = function_cell(loss=loss, gradient=gradient, params=params,
                         blocks={"W": (("a", "b"), 1)}, name="edge")
    doc = json.loads(json.dumps(check_gradients(cell, params, batch, oracles="analytic,numeric",
                                                seed=0).as_dict()))
    assert {tuple(c["shape"]) for c in doc["comparisons"]} == {(3, 6), (), (0, 3)}
    assert doc["gradients"]["analytic"]["Z"] == []          # JSON keeps no (0, 3) shape
    doc = parse(render_report(doc))
    assert len(doc.srcs) == 2 + 1                 # W and s drawn, Z empty; the step-size curve


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


def _strict_json(text):
    """json.loads refusing NaN and Infinity, as JSON.parse and other parsers do."""
    def refuse(token):
        raise ValueError(f"bare {token} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_gradients_are_written_as_strings_the_report_reads(capsys, tmp_path):
    # a user gradient with a NaN (and so a NaN step curve): --json must stay valid JSON
    path = tmp_path / "nan_cell.py"
    path.write_text(
        "import numpy as np\n"
        "from gradcheck import Batch, Case, function_cell\n"
        "def loss(p, batch):\n"
        "    return float(np.tanh(batch.x @ p['W']).sum())\n"
        "def gradient(p, batch):\n"
        "    a = np.tanh(batch.x @ p['W'])\n"
        "    g = np.einsum('tbd,tbk->dk', batch.x, 1 - a ** 2)\n"
        "    g[0, 0] = np.nan\n"
        "    return {'W': g}\n"
        "def make_case(seed):\n"
        "    rng = np.random.default_rng(seed)\n"
        "    params = {'W': rng.normal(size=(3, 4))}\n"
        "    batch = Batch(rng.normal(size=(4, 2, 3)), np.zeros((4, 2), int), np.ones((4, 2)))\n"
        "    return Case(function_cell(loss=loss, gradient=gradient, params=params), params,"
        " batch, seed=seed)\n")
    code = main(["check", f"{path}:make_case", "--json"])
    out, _ = capsys.readouterr()
    assert code == EXIT_MISMATCH
    doc = _strict_json(out)
    assert doc["gradients"]["analytic"]["W"][0][0] == "nan"
    validate_result(doc)
    html = render_report(doc)
    assert "<html" in html.lower()
