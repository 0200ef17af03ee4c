"""The lab's throw-away PKI generator (lab/mtlab/pki.py), importable from the unit tests."""

from __future__ import annotations

import sys
from pathlib import Path

LAB = Path(__file__).resolve().parents[3] / "lab"
if str(LAB) not in sys.path:
    sys.path.insert(0, str(LAB))

from mtlab.pki import Pki, lab_pki  # noqa: E402

__all__ = ["Pki", "lab_pki"]
