"""Build of the optional compiled gate kernels (cells/_gate_kernels.c); the rest of the
project's metadata is in setup.cfg.

The extension is optional: where it cannot be built (no C compiler), the install
goes on without it and the cells run their NumPy steps, which give the same
numbers to the last bit (tests/test_gate_kernels.py holds the two to it).
"""

import numpy
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "cells._gate_kernels", ["cells/_gate_kernels.c"],
    include_dirs=[numpy.get_include()],
    # every operation rounded on its own, as NumPy's ufuncs round it: no fused
    # multiply-add (-ffp-contract=off), no reassociation (-fno-fast-math, in case the
    # interpreter's own flags ask for it)
    extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math"],
    optional=True)])
