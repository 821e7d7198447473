"""``bench report``: a board of realistic rows (seed aggregates, a non-compliant model, a teacher, a failed run, a row
edited outside ascbench, a row on another test set) rendered to HTML and checked in a real headless Chromium."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_statistics import design, seed_rows
from typer.testing import CliRunner

from bench.cli import app
from bench.score.leaderboard import SCHEMA, append_rows, make_row, read_table
from bench.score.predictions import ClipPredictions
from bench.score.seeds import aggregate_rows

runner = CliRunner()
UNSEEN = ("s4", "s5", "s6")
N_BOOT = "200"


def hits(p: float, devices: np.ndarray, rng) -> np.ndarray:
    """Clip verdicts that, like real systems, get worse on unseen devices."""
    drop = np.where(np.isin(devices, UNSEEN), 0.15, np.where(devices == "a", 0.0, 0.05))
    return rng.random(len(devices)) < p - drop


def measured(row: dict) -> dict:
    """The row with its device accuracies computed from its own predictions, as the scorer writes them."""
    p = ClipPredictions.from_bytes(row["clip_predictions"])
    masks = p.role_masks()
    row["acc_per_device"] = json.dumps({d: float(p.correct[p.devices == d].mean()) for d in sorted(set(p.devices))})
    for name in ("acc_known", "acc_unseen", "acc_real", "acc_seen"):
        row[name] = float(p.correct[masks[name]].mean())
    return row


def submission(name: str, p: float, macs: int, size: int, d, rng) -> list[dict]:
    rows = [measured(r) for r in seed_rows([hits(p, d[2], rng) for _ in range(3)], d, submission=name,
                                           max_macs=macs, max_param_bytes=size)]
    return [*rows, aggregate_rows(rows, n_boot=200)]


def single(name: str, **fields) -> dict:
    return make_row(**{"submission": name, "system": name, "kind": "system", "status": "ok", "dataset": "synth",
                       "dataset_fingerprint": "fp1", "split": "test", "profile": "default", **fields})


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    d = design()
    rng = np.random.default_rng(11)
    path = tmp_path_factory.mktemp("report") / "board.parquet"
    append_rows(path, [
        *submission("strong", 0.75, 25_000_000, 120_000, d, rng),
        *submission("mid", 0.6, 8_000_000, 60_000, d, rng),
        *submission("weak", 0.45, 2_000_000, 30_000, d, rng),
        single("huge", kind="ablation", macro_acc=0.9, compliant=False, max_macs=200_000_000, max_param_bytes=500_000,
               compliance_reasons="parameter memory 500,000 B > 128,000 B"),
        single("teacher", kind="teacher", macro_acc=0.8, max_macs=900_000_000, max_param_bytes=4_000_000),
        single("broken", status="failed", error="training diverged (loss is NaN)"),
        single("tampered", macro_acc=0.3, compliant=True, max_macs=1_000_000, max_param_bytes=10_000),
        single("smoky", macro_acc=0.1, compliant=True, dataset="synth-smoke", dataset_fingerprint="fp-smoke"),
    ])
    records = read_table(path).to_pylist()  # an edit outside ascbench: the audit must catch it
    next(r for r in records if r["submission"] == "tampered")["macro_acc"] = 0.99
    pq.write_table(pa.Table.from_pylist(records, schema=SCHEMA), path)
    return path


@pytest.fixture(scope="module")
def report(board):
    out = board.parent / "report"
    result = runner.invoke(app, ["report", str(board), "--out", str(out), "--top", "3", "--n-boot", N_BOOT])
    assert result.exit_code == 0, result.output
    return out / "index.html", result.output


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed: pip install -e '.[dev]'")
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("chromium / chromedriver not installed: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1800"):
        options.add_argument(flag)
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


def test_the_report_stands_alone_and_says_what_it_left_out(report, board):
    index, output = report
    page = index.read_text()
    assert "http://" not in page and "https://" not in page  # nothing to fetch at view time
    assert "<link" not in page and "<script src" not in page
    assert "scored on another test set (synth-smoke" in output and "scored on another test set" in page
    assert "edited outside ascbench" in output and "macro_acc 0.3 → 0.99" in page
    assert "per-row views and comparisons of strong (3 seeds), mid (3 seeds), weak (3 seeds)" in output
    assert page.count("<details") == 7  # provenance of every shown row
    assert "training diverged (loss is NaN)" in page


def test_the_report_works_in_a_browser(report, board, browser):
    from selenium.webdriver.common.by import By

    index, _ = report
    browser.get(index.as_uri())
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []

    listed = runner.invoke(app, ["leaderboard", str(board), "--json"])
    assert listed.exit_code == 0, listed.output
    expected = [r["row_id"] for r in json.loads(listed.stdout)]
    rows = browser.find_elements(By.CSS_SELECTOR, "table.board tbody tr[data-row-id]")
    assert [r.get_attribute("data-row-id") for r in rows] == expected  # same rows, same order as the CLI

    def column(n: int) -> list[str]:
        return browser.execute_script("return Array.from(document.querySelectorAll('table.board tbody tr'), "
                                      "r => r.cells[arguments[0]].innerText);", n)

    assert column(1)[:3] == ["strong / sys", "mid / sys", "weak / sys"] and column(0)[:3] == ["1", "2", "3"]
    tampered = browser.find_element(By.CSS_SELECTOR, "table.board tr.edited")
    assert "tampered" in tampered.text and tampered.find_element(By.TAG_NAME, "td").text == "—"

    headers = {h.text: h for h in browser.find_elements(By.CSS_SELECTOR, "table.board thead th")}
    headers["macro acc %"].click()  # ascending; the failed row, which has no score, stays last
    assert column(1) == ["weak / sys", "mid / sys", "strong / sys", "teacher †", "huge",
                         "tampered [edited outside ascbench: not ranked]", "broken"]
    headers["#"].click()
    assert column(0) == ["1", "2", "3", "—", "—", "—", "—"]
    headers["#"].click()  # descending: unranked rows still last
    assert column(0) == ["3", "2", "1", "—", "—", "—", "—"]

    browser.find_element(By.XPATH, "//table[contains(@class, 'shift')]//th[4]").click()  # negative numbers
    gaps = browser.execute_script("return Array.from(document.querySelectorAll('table.shift tbody tr'), "
                                  "r => parseFloat(r.cells[3].textContent));")
    assert len(gaps) == 3 and gaps == sorted(gaps)  # the three aggregates; the single rows report no devices

    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.src.slice(0, 22)]);")
    assert len(images) == 4  # Pareto, device bars, known/unseen scatter, device gaps
    assert all(done and w > 0 and src == "data:image/png;base64," for done, w, src in images)
    matrices = browser.find_elements(By.CSS_SELECTOR, "#confusion table.cm")
    assert len(matrices) == 3 * 9  # a confusion matrix per device of each chosen row
    counts = [int(n) for n in browser.execute_script("return Array.from(arguments[0].querySelectorAll('td'), "
                                                     "td => td.textContent);", matrices[0])]
    assert len(counts) == 100 and sum(counts) == 240  # 10 x 10 classes; every clip of the device once
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.matrix td.cmp")) == 9
    better = browser.find_element(By.XPATH, "//table[@class='matrix']//tr[th='A: strong (3 seeds)']/td[3]")
    assert "shown" in better.get_attribute("class") and "better" in better.text
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_named_rows_say_why_they_cannot_be_compared_and_the_page_renders_to_png(board, tmp_path):
    if not shutil.which("chromium"):
        pytest.skip("chromium not installed: apt-get install chromium")
    shot = tmp_path / "shot.png"
    result = runner.invoke(app, ["report", str(board), "--out", str(tmp_path / "r"), "--rows", "strong,huge,weak",
                                 "--n-boot", N_BOOT, "--screenshot", str(shot)])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r" / "index.html").read_text()
    assert page.count('class="cmp refused"') == 4 and "no per-clip predictions" in page
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_a_missing_board_or_row_is_one_line_and_exit_1(board, tmp_path):
    missing = runner.invoke(app, ["report", str(tmp_path / "none.parquet"), "--out", str(tmp_path / "r")])
    assert missing.exit_code == 1 and missing.output.strip().startswith("No leaderboard at")
    unknown = runner.invoke(app, ["report", str(board), "--out", str(tmp_path / "r"), "--rows", "nobody"])
    assert unknown.exit_code == 1 and "no scored row with id or submission 'nobody'" in unknown.output
    assert len(unknown.output.strip().splitlines()) == 1


def test_a_screenshot_without_chromium_says_what_to_install(board, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no browser on it
    result = runner.invoke(app, ["report", str(board), "--out", str(tmp_path / "r"), "--top", "0",
                                 "--screenshot", str(tmp_path / "shot.png")])
    assert result.exit_code == 1 and (tmp_path / "r" / "index.html").is_file()
    assert "apt-get install chromium" in result.output.strip().splitlines()[-1]
