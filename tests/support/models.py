"""The app's own models for tests: the ones `bin/setup` trained, or trained now into a temporary directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CASE_TYPE_MODEL = ROOT / "models" / "case_type_classifier.joblib"


def case_type_model(scratch: Path) -> Path:
    """The case-type recogniser `bin/setup` trained, else one trained now into `scratch` (about 10 s)."""
    if CASE_TYPE_MODEL.exists():
        return CASE_TYPE_MODEL
    model = scratch / "case_type_classifier.joblib"
    if not model.exists():
        subprocess.run(
            [sys.executable, "-m", "crm_backend.dispatch", "train-types", "--out", str(model)], cwd=ROOT, check=True
        )
    return model


CATEGORY_MODEL = ROOT / "models" / "category_classifier.joblib"


def category_model(scratch: Path) -> Path:
    """The category classifier `bin/setup` trained, else one trained now into `scratch` (about a minute)."""
    if CATEGORY_MODEL.exists():
        return CATEGORY_MODEL
    model = scratch / "category_classifier.joblib"
    if not model.exists():
        subprocess.run(
            [sys.executable, "-m", "crm_backend.dispatch", "train", "--out", str(model)], cwd=ROOT, check=True
        )
    return model


LETTER_MODEL = ROOT / "models" / "letter_kind.joblib"


def letter_model(scratch: Path) -> Path:
    """The letter gate's model `bin/setup` trained, else one trained now into `scratch` (a few seconds)."""
    if LETTER_MODEL.exists():
        return LETTER_MODEL
    model = scratch / "letter_kind.joblib"
    if not model.exists():
        subprocess.run([sys.executable, "-m", "bot.letters", "train", "--out", str(model)], cwd=ROOT, check=True)
    return model
