"""The encoders' compiled CPU kernels (XLA FFI): `dense_cpu.cc`, built by `make install` into
`_dense_cpu.so` beside it (never committed), loaded through `aligner_jax.scoring.native`."""

import os

from aligner_jax.scoring import native

DENSE_TARGET = "aligner_dense_cpu"

DENSE = native.Library(os.path.join(os.path.dirname(__file__), "_dense_cpu.so"),
                       "the CPU dense-layer kernel", "aligner_jax/models/native/dense_cpu.cc",
                       {DENSE_TARGET: "DenseCpu"}, "the dense layers use the XLA path.")
