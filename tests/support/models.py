"""The app's own models for tests: the ones `bin/setup` trained, or trained now into a temporary directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CASE_TYPE_MODEL = ROOT / "models" / "case_type_classifier.joblib"
CATEGORY_MODEL = ROOT / "models" / "category_classifier.joblib"
LETTER_MODEL = ROOT / "models" / "letter_kind.joblib"


def _trained(shipped: Path, scratch: Path, *command: str) -> Path:
    """`shipped` if `bin/setup` trained it, else the model `command --out` trains now into `scratch`."""
    if shipped.exists():
        return shipped
    model = scratch / shipped.name
    if not model.exists():
        subprocess.run([sys.executable, "-m", *command, "--out", str(model)], cwd=ROOT, check=True)
    return model


def case_type_model(scratch: Path) -> Path:
    """The case-type recogniser (trained now: about 10 s)."""
    return _trained(CASE_TYPE_MODEL, scratch, "crm_backend.dispatch", "train-types")


def category_model(scratch: Path) -> Path:
    """The category classifier (trained now: about a minute)."""
    return _trained(CATEGORY_MODEL, scratch, "crm_backend.dispatch", "train")


def letter_model(scratch: Path) -> Path:
    """The letter gate's model (trained now: a few seconds)."""
    return _trained(LETTER_MODEL, scratch, "bot.letters", "train")
