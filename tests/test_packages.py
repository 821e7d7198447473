"""Official inference packages: scored isolated and unchanged, failures become results, exports score identically.

The fixture packages under tests/fixtures/packages are source only; their dummy.wav, test.csv and checkpoints are
generated here. Every package run spawns a child that imports torch (~3-5 s), so runs are shared and the broken
fixtures run concurrently. Torch runs single-threaded here (children inherit the harness's thread count): on a
shared 2-core machine, two OpenMP threads competing with other processes make small ops 100x slower.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torchaudio
from typer.testing import CliRunner

from bench.cli import app
from bench.data.tau import open_dataset
from bench.models import create_model
from bench.packages.compat import soundfile_torchaudio
from bench.packages.export import MODULE_SOURCE, write_dummy_wav
from bench.packages.loader import PackageError, discover, parse_package
from bench.packages.runner import package_data, score_package
from bench.packages.sandbox import Isolation
from bench.score.complexity import count_complexity
from bench.score.leaderboard import append_rows, make_row, read_board
from bench.score.metrics import log_softmax, score_predictions
from bench.score.scorer import ScoreOptions
from bench.submission import OFFICIAL_DEVICES, ModelSubmission, save_submission

FIXTURES = Path(__file__).parent / "fixtures" / "packages"
runner = CliRunner()


@contextlib.contextmanager
def on_path(folder: Path):
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def packages(tmp_path_factory, smoke_dataset) -> Path:
    """The fixture sources, plus what a real package ships as files: dummy.wav, test.csv, checkpoints."""
    dest = tmp_path_factory.mktemp("packages")
    shutil.copytree(FIXTURES, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    package = dest / "Fixture_task1"
    write_dummy_wav(package / "resources" / "dummy.wav")
    test = open_dataset(smoke_dataset).split("test")
    test[["filename", "scene_label"]].to_csv(package / "resources" / "test.csv", sep="\t", index=False)
    (package / "ckpts").mkdir()
    for seed, module in enumerate(fixture_modules(dest)):
        torch.manual_seed(seed)
        torch.save(module._common.Model(module.CONFIG).net.state_dict(), package / "ckpts" / f"{module.CONFIG.name}.pt")
    return dest


def fixture_modules(folder: Path):
    with on_path(folder):
        from Fixture_task1 import Fixture_task1_1, Fixture_task1_2
    return Fixture_task1_1, Fixture_task1_2


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory, smoke_dataset) -> Path:
    """A small TAU 2025 evaluation layout: audio/<n>.wav, device ids with untrained devices as ``unknown``."""
    root = tmp_path_factory.mktemp("eval")
    (root / "audio").mkdir()
    (root / "evaluation_setup").mkdir()
    test = open_dataset(smoke_dataset).split("test").iloc[::12]
    rows = []
    for i, (name, device) in enumerate(zip(test["filename"], test["device"])):
        shutil.copy(smoke_dataset / name, root / "audio" / f"{i}.wav")
        rows.append({"filename": f"audio/{i}.wav", "device_id": device if device in "a b c s1 s2 s3".split()
                     else "unknown"})
    pd.DataFrame(rows).to_csv(root / "evaluation_setup" / "fold1_test.csv", sep="\t", index=False)
    return root


def in_process_logits(module, files: list[str], devices: list[str], batch: int = 64) -> np.ndarray:
    """The package's predict called here, in the harness's batches: the reference for the isolated run."""
    out = []
    with soundfile_torchaudio():
        for i in range(0, len(files), batch):
            logits, _ = module.predict(files[i:i + batch], devices[i:i + batch])
            out.append(torch.stack(logits).numpy())
    return np.concatenate(out)


def probabilities(csv: Path, class_order: list[str]) -> np.ndarray:
    frame = pd.read_csv(csv, sep="\t")
    assert list(frame.columns) == ["filename", "scene_label", *class_order]
    return frame[class_order].to_numpy()


# ---- unit level: no child process --------------------------------------------------------------------------------

def test_soundfile_shim_stands_in_for_torchaudio_load(smoke_dataset):
    path = next((smoke_dataset / "audio").glob("*.wav"))
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    with soundfile_torchaudio():
        wave, sr = torchaudio.load(str(path))
        part, _ = torchaudio.load(path, frame_offset=100, num_frames=50, channels_first=False)
        raw, _ = torchaudio.load(str(path), normalize=False)
    assert sr == rate and wave.shape == (data.shape[1], data.shape[0]) and wave.dtype == torch.float32
    assert torch.equal(wave, torch.from_numpy(data.T.copy()))
    assert torch.equal(part, torch.from_numpy(data[100:150]))
    assert raw.dtype in (torch.int16, torch.int32)
    assert torchaudio.load.__module__.startswith("torchaudio")  # restored after the block


def test_package_arguments_and_discovery(packages):
    assert parse_package("Fixture_task1:2") == ("Fixture_task1", 2)
    assert parse_package("Fixture_task1") == ("Fixture_task1", None)
    for bad in ("Fixture-task1", "Fixture_task1:5", "Fixture_task1:x"):
        with pytest.raises(PackageError):
            parse_package(bad)
    assert [s.submission for s in discover("Fixture_task1", packages)] == ["Fixture_task1_1", "Fixture_task1_2"]
    assert discover("Fixture_task1", packages / "Fixture_task1", 2)[0].path == packages  # the package folder works too
    with pytest.raises(PackageError, match="no module Fixture_task1_3.py"):
        discover("Fixture_task1", packages, 3)
    with pytest.raises(PackageError, match="not installed"):
        discover("Nobody_task1", None)


# ---- end to end --------------------------------------------------------------------------------------------------

@pytest.mark.heavy
def test_fixture_package_scores_end_to_end_like_in_process(packages, eval_set, smoke_dataset, tmp_path):
    board, out = tmp_path / "board.parquet", tmp_path / "out"
    result = runner.invoke(app, ["score", "--package", "Fixture_task1", "--path", str(packages),
                                 "--data", str(smoke_dataset), "--eval-data", str(eval_set), "--out", str(out),
                                 "--board", str(board), "--n-boot", "50", "--energy-clips", "16"])
    assert result.exit_code == 0, result.output
    rows = read_board(board).set_index("submission")
    assert list(rows.index) == ["Fixture_task1_1", "Fixture_task1_2"]
    assert set(rows["kind"]) == {"package"} and set(rows["system"]) == {"Fixture"} and set(rows["status"]) == {"ok"}
    assert (rows["clips_per_s"] > 0).all() and (rows["int8_size_bytes"] > 0).all()
    assert rows["int8_macro_acc"].notna().all() and (rows["energy_j_per_clip"] >= 0).all()

    dataset = open_dataset(smoke_dataset)
    test = dataset.split("test")
    test_files = [str(smoke_dataset / f) for f in test["filename"]]
    evaluation = open_dataset(eval_set).split("eval")
    for module in fixture_modules(packages):
        name, order = module.CONFIG.name, module.CONFIG.class_order
        # test split: the board's metrics are those of the package's own logits, mapped to our classes by name
        logits = in_process_logits(module, test_files, test["device"].tolist())
        aligned = logits[:, [order.index(c) for c in dataset.manifest.classes]]
        scores = score_predictions(test["label"].to_numpy(), aligned, test["device"].to_numpy(),
                                   dataset.manifest.classes, dataset.manifest.roles(), n_boot=50)
        assert rows.loc[name, "macro_acc"] == scores.macro_accuracy
        assert rows.loc[name, "log_loss"] == scores.log_loss
        accuracy = json.loads((out / name / "test_accuracy.json").read_text())
        assert accuracy["Test Accuracy"] == round(scores.accuracy * 100, 2)
        # eval set: output.csv holds softmax probabilities of the same logits, in the package's class order
        eval_logits = in_process_logits(module, [str(eval_set / f) for f in evaluation["filename"]],
                                        evaluation["device"].tolist())
        np.testing.assert_array_equal(probabilities(out / name / "output.csv", order),
                                      np.exp(log_softmax(eval_logits.astype(np.float64))))
        assert "unknown" in set(evaluation["device"])
        # complexity.json: the official check's layout and numbers, device models and fallback counted apart
        complexity = json.loads((out / name / "complexity.json").read_text())
        assert set(complexity) == {"per_device", "max_MACs", "max_Params"}
        assert list(complexity["per_device"]) == list(OFFICIAL_DEVICES)
        model = module.load_model()
        for dev in ("a", "s4", "s10"):
            expected = count_complexity(module.get_model_for_device(model, dev), (1, 1, 40, 65))
            assert complexity["per_device"][dev] == {"MACs": expected.macs, "Params": expected.param_bytes}
        assert complexity["max_MACs"] == rows.loc[name, "max_macs"]
    per_device = json.loads((out / "Fixture_task1_1" / "complexity.json").read_text())["per_device"]
    assert per_device["a"]["MACs"] > per_device["s4"]["MACs"]  # module 1's wider device-a model
    fp16 = rows.loc["Fixture_task1_2"]
    assert fp16["deploy_dtype"] == "float16" and fp16["max_param_bytes"] == 2 * fp16["params"]


BROKEN = {  # module -> (timeout s, what the one-line reason must say)
    "Broken_task1_1": (120, "import: raised RuntimeError: this module is broken on purpose"),
    "Broken_task1_2": (8, "timeout after 8 s"),
    "Broken_task1_3": (120, "NaN or infinite logits on device(s) ['s2']"),
    "Broken_task1_4": (120, "unknown: ['underground'], missing: ['metro']"),
    "Fragile_task1_1": (120, "missing dependency: the package imports 'ascbench_fixture_missing_dependency', "
                             "which is not installed; pip install ascbench-fixture-missing-dependency"),
    "Fragile_task1_2": (120, "predict returned 63 logits for 64 files"),
    "Fragile_task1_3": (120, "crashed in predict (test): killed by SIGSEGV"),
    "Fragile_task1_4": (120, "can't allocate memory"),
}


@pytest.mark.heavy
def test_broken_packages_become_failed_results_with_reasons(packages, smoke_dataset, smoke_store):
    data = package_data(open_dataset(smoke_dataset), smoke_store)
    specs = discover("Broken_task1", packages) + discover("Fragile_task1", packages)
    assert sorted(s.submission for s in specs) == sorted(BROKEN)

    def score(spec):
        start = time.monotonic()
        isolation = Isolation(timeout_s=BROKEN[spec.submission][0], memory_gb=6)  # the 8 GB allocation must fail
        result = score_package(spec, data, ScoreOptions(int8=False, energy=False, n_boot=10), isolation)
        return result, time.monotonic() - start

    with ThreadPoolExecutor(len(specs)) as pool:
        outcomes = dict(zip([s.submission for s in specs], pool.map(score, specs)))
    for name, (result, seconds) in outcomes.items():
        timeout, reason = BROKEN[name]
        assert not result.ok and reason in result.error, (name, result.error)
        assert "\n" not in result.error and seconds < timeout + 10
        assert result.row()["status"] == "failed"  # a valid board row
    assert "memory limit 6 GB" in outcomes["Fragile_task1_4"][0].error


def test_failed_package_is_recorded_and_the_board_kept(packages, smoke_dataset, tmp_path):
    board = tmp_path / "board.parquet"
    append_rows(board, [make_row(submission="earlier", system="earlier", kind="system", status="ok", macro_acc=0.5)])
    result = runner.invoke(app, ["score", "--package", "Broken_task1:1", "--path", str(packages),
                                 "--data", str(smoke_dataset), "--board", str(board), "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "Broken_task1_1 failed" in result.output
    rows = read_board(board)
    assert list(rows["submission"]) == ["earlier", "Broken_task1_1"]
    assert list(rows["status"]) == ["ok", "failed"]


@pytest.mark.heavy
def test_exported_submission_scores_identically_as_a_package(smoke_dataset, tmp_path):
    torch.manual_seed(0)
    general, device_a = create_model("cpmobile_baseline"), create_model("cpmobile_baseline")
    classes = open_dataset(smoke_dataset).manifest.classes
    sub = ModelSubmission.per_device("cpmobile-export", classes, general, {"a": device_a})
    save_submission(sub, tmp_path / "run" / "submission", {"system": "cpmobile", "seed": 0})
    export = runner.invoke(app, ["export", str(tmp_path / "run"), "--package", str(tmp_path / "pkg"),
                                 "--label", "Ascb", "--data", str(smoke_dataset)])
    assert export.exit_code == 0, export.output
    package = tmp_path / "pkg" / "Ascb_task1"
    assert (package / "Ascb_task1_1.py").read_text() == MODULE_SOURCE.read_text()
    assert sf.info(str(package / "resources" / "dummy.wav")).duration == 1.0
    assert len(pd.read_csv(package / "resources" / "test.csv", sep="\t")) == 180
    assert '"ascbench"' in (tmp_path / "pkg" / "pyproject.toml").read_text()

    board = tmp_path / "board.parquet"
    common = ["--data", str(smoke_dataset), "--board", str(board), "--no-int8", "--no-energy", "--n-boot", "50"]
    ours = runner.invoke(app, ["score", "--submission", str(tmp_path / "run"), "--out", str(tmp_path / "ours"),
                               *common])
    assert ours.exit_code == 0, ours.output
    theirs = runner.invoke(app, ["score", "--package", "Ascb_task1:1", "--path", str(tmp_path / "pkg"),
                                 "--out", str(tmp_path / "theirs"), *common])
    assert theirs.exit_code == 0, theirs.output
    for name in ("output.csv", "complexity.json", "test_accuracy.json"):  # same logits, same counts
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "theirs" / name).read_bytes(), name
    rows = read_board(board)
    assert list(rows["kind"]) == ["system", "package"] and list(rows["system"]) == ["cpmobile", "Ascb"]
    same = ["macro_acc", "log_loss", "acc_per_device", "max_macs", "max_param_bytes", "complexity_per_device",
            "compliant", "deploy_dtype", "dataset_fingerprint"]
    assert rows.loc[0, same].to_dict() == rows.loc[1, same].to_dict()


def test_an_own_subfolder_imported_as_a_top_level_module_gets_a_sys_path_hint(tmp_path):
    from bench.packages.loader import missing_dependency

    package = tmp_path / "Foo_task1"
    (package / "models").mkdir(parents=True)
    (package / "helpers.py").write_text("")
    for name in ("models", "helpers"):
        hint = missing_dependency(ModuleNotFoundError(f"No module named {name!r}", name=name), "Foo_task1", package)
        assert "sys.path" in hint and f"Foo_task1.{name}" in hint and "pip install" not in hint
    other = missing_dependency(ModuleNotFoundError("No module named 'sklearn'", name="sklearn"), "Foo_task1", package)
    assert other.endswith("pip install scikit-learn")


@pytest.mark.heavy
def test_exported_int8_package_scores_the_complexity_of_its_submission_and_is_not_requantized(smoke_dataset,
                                                                                               tmp_path):
    """torchinfo sees 0 MACs in a converted model: the exported package hands the float twin to the counter
    (get_counted_model_for_device), and its INT8 column is its own accuracy, not a second quantization."""
    from bench.score.scorer import official_complexity
    from bench.submission import UNKNOWN, Deployment, load_submission

    torch.manual_seed(0)
    model = create_model("dsflexinet_sm1").eval()
    feats = model.frontend(0.1 * torch.randn(16, 32_000, generator=torch.Generator().manual_seed(3)))
    classes = open_dataset(smoke_dataset).manifest.classes
    sub = ModelSubmission("int8-export", classes, {UNKNOWN: Deployment.ptq(model, [feats])})
    save_submission(sub, tmp_path / "run" / "submission", {"system": "int8"})
    expected = official_complexity(load_submission(tmp_path / "run" / "submission"))
    assert expected.max_macs > 3_000_000 and expected.max_param_bytes == 13_787  # 1 B per parameter
    runner.invoke(app, ["export", str(tmp_path / "run"), "--package", str(tmp_path / "pkg"), "--label", "Qint"])
    board = tmp_path / "board.parquet"
    scored = runner.invoke(app, ["score", "--package", "Qint_task1:1", "--path", str(tmp_path / "pkg"),
                                 "--data", str(smoke_dataset), "--board", str(board), "--no-energy",
                                 "--n-boot", "10", "--out", str(tmp_path / "out")])
    assert scored.exit_code == 0, scored.output
    row = read_board(board).iloc[0]
    assert row["max_macs"] == expected.max_macs and row["max_param_bytes"] == expected.max_param_bytes
    assert row["deploy_dtype"] == "int8" and row["compliant"]
    assert row["int8_macro_acc"] == row["macro_acc"] and "INT8 already" in row["notes"]
    gate = runner.invoke(app, ["check", "Qint_task1:1", "--path", str(tmp_path / "pkg"), "--json"])
    assert gate.exit_code == 0 and json.loads(gate.stdout)["max_MACs"] == expected.max_macs
