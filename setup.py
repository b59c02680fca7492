"""Build configuration beyond pyproject.toml: the optional fused CPU kernel for DM's gradient.

The extension is plain C against Python's C API (no torch headers, builds in about a second).
``optional=True``: where no C compiler exists the install still succeeds and dm-tune uses the
torch implementation of the same function (dm_tune._weighting), only slower on small CPU batches.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dm_tune._dmfused",
            sources=["dm_tune/_dmfused.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
