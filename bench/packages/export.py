"""``bench export``: one of our saved submissions as an official DCASE 2025 Task 1 inference package.

Layout written under DEST::

    pyproject.toml                      # declares ascbench (the model code) as a dependency
    <Label>_task1/__init__.py
    <Label>_task1/<Label>_task1_<k>.py  # exported_module.py, verbatim: load_model, load_inputs, ...
    <Label>_task1/ckpts/<Label>_task1_<k>/{submission.json, models.pt, system/ (when it has its own code)}
    <Label>_task1/resources/{__init__.py, dummy.wav, test.csv}

The module holds no model code: it rebuilds the submission with ``bench.submission.load_submission``. Exporting
another submission with another ``k`` into the same DEST adds a module to the same package.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from bench.data.tau import Dataset
from bench.packages.loader import MAX_MODULES, PackageError

MODULE_SOURCE = Path(__file__).with_name("exported_module.py")
DUMMY_RATE = 44_100

PYPROJECT = """[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.1.0"
description = "DCASE 2025 Task 1 inference package exported by ascbench"
requires-python = ">=3.11"
# ascbench is not on PyPI: install it from its repository first (pip install -e <ascbench checkout>)
dependencies = ["ascbench", "torch", "torchaudio", "numpy", "soundfile"]

[tool.setuptools.packages.find]
include = ["{name}*"]

[tool.setuptools.package-data]
"{name}" = ["ckpts/**/*"]
"{name}.resources" = ["*.wav", "*.csv"]
"""


def submission_dir(run: Path) -> Path:
    """A saved submission folder (has submission.json) or a run directory holding one in ``submission/``."""
    for candidate in (run, run / "submission"):
        if (candidate / "submission.json").is_file():
            return candidate
    raise PackageError(f"{run}: no submission.json here or in {run / 'submission'}; pass a folder written by "
                       "`bench run` or save_submission()")


def default_label(name: str) -> str:
    """A package label from a submission name: word characters only, not starting with a digit."""
    label = re.sub(r"\W+", "_", name).strip("_") or "ascbench"
    return label if not label[0].isdigit() else f"S{label}"


def write_dummy_wav(path: Path, rate: int = DUMMY_RATE, seed: int = 0) -> Path:
    """One second of quiet seeded noise: what the official complexity check feeds ``load_inputs``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = 0.01 * np.random.default_rng(seed).standard_normal(rate)
    sf.write(str(path), noise.astype(np.float32), rate, subtype="PCM_16")
    return path


def export_package(run: Path, dest: Path, label: str | None = None, index: int = 1,
                   dataset: Dataset | None = None) -> Path:
    """Write the submission in ``run`` as module ``<label>_task1_<index>`` of a package under ``dest``;
    ``dataset`` supplies ``resources/test.csv`` (its test split). Returns the module file."""
    source = submission_dir(Path(run))
    label = label or default_label(json.loads((source / "submission.json").read_text())["name"])
    if not label.isidentifier():
        raise PackageError(f"label {label!r} must be a Python identifier (letters, digits, _), e.g. Surname_INST")
    if not 1 <= index <= MAX_MODULES:
        raise PackageError(f"module index {index} is outside 1..{MAX_MODULES}")
    name = f"{label}_task1"
    package = Path(dest) / name
    module = package / f"{name}_{index}.py"
    checkpoint = package / "ckpts" / module.stem
    checkpoint.mkdir(parents=True, exist_ok=True)
    for file in ("submission.json", "models.pt"):
        shutil.copy2(source / file, checkpoint / file)
    if (source / "system").is_dir():  # a system's own architectures travel with the package
        shutil.rmtree(checkpoint / "system", ignore_errors=True)
        shutil.copytree(source / "system", checkpoint / "system")
    shutil.copy2(MODULE_SOURCE, module)
    (package / "__init__.py").write_text(f'"""{name}: DCASE 2025 Task 1 inference package exported by ascbench."""\n')
    (package / "resources" / "__init__.py").parent.mkdir(exist_ok=True)
    (package / "resources" / "__init__.py").write_text("")
    write_dummy_wav(package / "resources" / "dummy.wav")
    if dataset is not None:
        test = dataset.split(dataset.manifest.test_split)
        pd.DataFrame({"filename": test["filename"], "scene_label": test["scene_label"]}).to_csv(
            package / "resources" / "test.csv", sep="\t", index=False)
    (Path(dest) / "pyproject.toml").write_text(PYPROJECT.format(name=name))
    return module
