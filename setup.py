"""Build the native kernels; all metadata lives in pyproject.toml."""
import os
import sys
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
compile_args = ["-O3", "-fno-math-errno", "-funroll-loops", *openmp]
directives = {
    "language_level": "3",
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "nonecheck": False,
}


def native(name: str, source: str) -> Extension:
    return Extension(
        name,
        [source],
        include_dirs=[np.get_include()],
        extra_compile_args=compile_args,
        extra_link_args=openmp,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        depends=[str(h) for h in Path(source).parent.glob("*.h")],  # C headers next to the .pyx
    )


NATIVE_MODULES = {
    "ctrops.data._hashing": "src/ctrops/data/_hashing.pyx",
    "ctrops.models._ffm": "src/ctrops/models/_ffm.pyx",
    "ctrops.models._predict": "src/ctrops/models/_predict.pyx",
    "ctrops.data._parse": "src/ctrops/data/_parse.pyx",
    "ctrops.serve._fastpath": "src/ctrops/serve/_fastpath.pyx",
    "ctrops.serve._logcolumns": "src/ctrops/serve/_logcolumns.pyx",
}
# a module is built once its source exists, so the tree builds at every step
# CTROPS_BUILD_ONLY=ctrops.models._ffm limits a developer's rebuild to one module
_only = {m for m in os.environ.get("CTROPS_BUILD_ONLY", "").split(",") if m}
extensions = [native(name, src) for name, src in NATIVE_MODULES.items()
              if Path(src).exists() and (not _only or name in _only)]

setup(ext_modules=cythonize(extensions, compiler_directives=directives))
