"""ctrops: click- and conversion-rate models from training to serving.

The public surface is kept deliberately small; stages live in sub-packages
(`data`, `models`, `artifact`, `serve`, `pipeline`, ...) and talk to each other
only through the typed objects they export.
"""

__version__ = "0.1.0"
