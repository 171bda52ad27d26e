"""Deterministic arm assignment: the same unit id always lands in the same arm.

A unit id (the user id, else the request id) is hashed with the experiment's
salt by the project's stable 64-bit feature hash into one of 10 000 buckets;
each arm owns a contiguous run of buckets sized by its share. Changing the salt
reshuffles everyone; changing shares moves only the units whose bucket crosses
a boundary.
"""

from __future__ import annotations

import bisect

from ctrops.data._hashing import feature_key
from ctrops.experiments.definition import SHARE_RESOLUTION, Arm, ExperimentDefinition

_UNIT_FIELD = 0xFFFF_FFFF  # a field number no feature uses, so keys never collide with features


class Assigner:
    """Maps unit ids to arms of one experiment definition."""

    def __init__(self, definition: ExperimentDefinition) -> None:
        self.definition = definition
        self._seed = feature_key(_UNIT_FIELD, definition.salt, 0)
        bounds: list[int] = []
        arms: list[Arm] = []
        edge = 0
        for arm in definition.arms:
            width = round(arm.share * SHARE_RESOLUTION / 100)
            if width == 0:
                continue
            edge += width
            bounds.append(edge)
            arms.append(arm)
        self._bounds = bounds
        self._arms = arms

    def bucket(self, unit_id: str) -> int:
        return feature_key(_UNIT_FIELD, unit_id, self._seed) % SHARE_RESOLUTION

    def assign(self, unit_id: str) -> Arm:
        """The arm of `unit_id` (a str; callers convert numeric ids with str())."""
        return self._arms[bisect.bisect_right(self._bounds, self.bucket(unit_id))]
