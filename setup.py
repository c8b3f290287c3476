"""aligner_jax: multi-vector retrieval as sparse alignment, learnable late interactions and
dual-encoder distillation in JAX/Flax.

Direct dependencies are pinned exactly; `requirements.lock` pins the full transitive set and is
passed as a constraints file by `make install`.
"""

import setuptools

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorstore==0.1.86",
    "gin-config==0.5.0",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "seqio==0.0.20",
    # ScaNN 1.4.2 imports only beside TensorFlow 2.20 (2.21 misses an absl symbol).
    "tensorflow==2.20.0",
    "tensorflow-text==2.20.1",
    "tensorflow-datasets==4.9.10",
    "scann==1.4.2",
    # 0.2.3 ships protobuf 7 generated code; 0.2.2 runs beside protobuf 6 (Apache Beam).
    "sentencepiece==0.2.2",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    # pytrec-eval 0.5 does not build offline; the terrier fork ships wheels.
    "pytrec-eval-terrier==0.5.11",
    "bm25s==0.3.16",
    "PyStemmer==3.1.0",  # the Snowball stemmer of the BM25 baseline
    "clu==0.0.12",
    "matplotlib==3.11.2",
    "threadpoolctl==3.8.0",  # one BLAS thread inside the IVF search's own threads
]

EXTRAS_REQUIRE = {
    # Reference implementations for parity tests; never imported by the library.
    "test": [
        "pytest==9.2.0",
        "pytest-timeout==2.4.0",
        "hypothesis==6.170.15",
        "torch==2.13.0",
        "transformers==5.23.0",
        "sentence-transformers==6.2.0",  # the MiniLM dense reference
        "ruff==0.17.5",  # lint and line length (ruff.toml), run by `make test`
    ],
    # Index builds fanned out as per-shard tasks on Apache Beam (`INDEX_RUNNER = 'beam'`);
    # `make install` installs it. Beam 2.77 resolves beside TensorFlow 2.20 and ScaNN only with
    # protobuf < 7 and pillow < 13.
    "beam": [
        "apache-beam==2.77.0",
        "protobuf==6.33.6",
        "pillow==12.3.0",
    ],
    "bench": [
        "faiss-cpu==1.15.1",  # the token-MIPS peer, benchmarks only
        "torch==2.13.0",
        "transformers==5.23.0",
        "sentence-transformers==6.2.0",
    ],
}

setuptools.setup(
    name="aligner_jax",
    version="0.1.0",
    description="Multi-vector retrieval as sparse alignment (ALIGNER), learnable late "
    "interactions (LITE) and dual-encoder distillation in JAX/Flax.",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["aligner_jax", "aligner_jax.*"]),
    # The compiled kernels' sources, and the libraries `make install` built from them in the
    # source tree (built with -march=native: a copy on a CPU lacking what it was built for is
    # refused at load and the XLA / NumPy paths run), ship with a non-editable install.
    package_data={"": ["*.cc", "*.h", "*.so", "native/*.cc", "native/*.h", "native/*.so"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
