"""One `default=` hook for json.dumps across ctrops (reports, model headers, logs).

NumPy scalars and arrays and paths show up in every report; converting them in
one place keeps the files written by different stages alike.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

import numpy as np


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, PurePath):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
