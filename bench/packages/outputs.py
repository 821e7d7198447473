"""The files the official evaluation scripts write, so the harness can stand in for them.

``output.csv`` (tab-separated: filename, scene_label = argmax, then one softmax-probability column per class in
the submission's class order), ``complexity.json`` (``per_device`` MACs/Params, ``max_MACs``, ``max_Params``; Params
in bytes) and ``test_accuracy.json`` (``{"Test Accuracy": percent}``, plus our macro class-wise accuracy).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from bench.score.complexity import SubmissionComplexity
from bench.score.metrics import Scores, log_softmax

OUTPUT_FILES = ("output.csv", "complexity.json", "test_accuracy.json")


def write_outputs(out: Path, filenames: Sequence[str], logits: np.ndarray, class_order: Sequence[str],
                  complexity: SubmissionComplexity | None = None, scores: Scores | None = None) -> list[Path]:
    """Write the official files into ``out``; files of an earlier run that this one has no data for are removed,
    so the folder never mixes two runs."""
    out.mkdir(parents=True, exist_ok=True)
    probs = np.exp(log_softmax(np.ascontiguousarray(logits, dtype=np.float64)))  # C order: same sums, same bits
    frame = pd.DataFrame({"filename": list(filenames), "scene_label": np.asarray(class_order)[probs.argmax(axis=1)]})
    for i, name in enumerate(class_order):
        frame[name] = probs[:, i]
    contents = {"output.csv": frame.to_csv(sep="\t", index=False)}
    if complexity is not None:
        contents["complexity.json"] = json.dumps(complexity.official_json(), indent=2) + "\n"
    if scores is not None:
        accuracy = {"Test Accuracy": round(scores.accuracy * 100, 2),
                    "Macro-average Class-wise Accuracy": round(scores.macro_accuracy * 100, 2)}
        contents["test_accuracy.json"] = json.dumps(accuracy, indent=2) + "\n"
    for name in OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)
    for name, text in contents.items():
        (out / name).write_text(text)
    return [out / name for name in contents]
