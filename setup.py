"""Build configuration beyond pyproject.toml: the optional fused CPU kernels (DM's gradient, a
population's losses, a population CNN block's BatchNorm + pooling + ReLU).

The extension is plain C against Python's C API (no torch headers, builds in about a second).
``optional=True``: where no C compiler exists the install still succeeds and dm-tune uses the
torch implementations of the same functions (the references), only slower on small CPU batches.
``-fno-wrapv`` undoes Python's ``-fwrapv`` (with it GCC did not vectorise the row loops: 4-5x
slower); ``-fopenmp-simd`` lets the ``omp simd`` reductions reorder their float additions (no
OpenMP runtime is linked).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dm_tune._dmfused",
            sources=["dm_tune/_dmfused.c"],
            extra_compile_args=["-O3", "-fno-wrapv", "-fopenmp-simd"],
            optional=True,
        )
    ]
)
