"""How one raw value becomes a token, and a token a feature key (reference rules).

These few functions are the definition; the native parser (`_parse.pyx`) and
the request encoder implement the same rules in C, and the tests hold them
equal. An ad server written in another language implements these too.

- categorical: a str is its own token; an integer (or a float with an integral
  value) is its decimal digits, so 7, 7.0 and "7" are one value; anything else
  is `str(value)`. Empty string, None, NaN and the spec's `missing_values` are
  missing.
- numeric, transform `log2bin`: v > 2 -> "~" + str(floor(log(v) ** 2)),
  otherwise str(int(v)) (truncation toward zero), then keyed as a categorical
  token; NaN/None/empty are missing, other non-finite values are errors.
- numeric, transform `raw`: one feature per field, keyed by the empty token
  (`RAW_TOKEN`), with the number itself as the feature value.
- the key of a token is `feature_key(field, token, seed)`, stored as 1 when it
  is 0 (0 marks "missing" in key matrices and "empty" in the vocabulary table).
"""

from __future__ import annotations

import math

from ctrops.data.hashing import feature_key

RAW_TOKEN = ""


def log2bin_token(value: float) -> str:
    """Token of a finite number under the log2bin transform."""
    if value > 2:
        return "~" + str(math.floor(math.log(value) ** 2))
    return str(int(value))


def categorical_token(value: object) -> str:
    """Token of a raw categorical value (see module docstring)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return str(int(value))
        return str(value)
    return str(value)


def stored_key(key: int) -> int:
    """A key as key matrices and the vocabulary table hold it (0 becomes 1)."""
    return key if key != 0 else 1


def raw_feature_key(field: int, seed: int = 0) -> int:
    """Key of the single feature of a `raw` numeric field."""
    return stored_key(feature_key(field, RAW_TOKEN, seed))
