import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

MODULES = ["mem", "store", "embed", "model", "core"]
# MELVIN_CFLAGS lets sanitizer/coverage builds add flags without replacing Python's own.
extra = os.environ.get("MELVIN_CFLAGS", "-O2").split()

extensions = [
    Extension(
        f"melvin._core.{name}",
        [f"pyx/melvin/_core/{name}.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=extra,
        extra_link_args=[f for f in extra if f.startswith("-fsanitize")],
    )
    for name in MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=["pyx"],
        compiler_directives={"language_level": "3", "embedsignature": True},
        emit_linenums=bool(os.environ.get("MELVIN_LINENUMS")),
    ),
)
