"""Retrieval data: readers with `file:line` checks, vocabularies, features, the input pipeline.

Data flow: a reader (`beir`, `msmarco`, `nq`, `demo_collection`) checks files and builds a
`collection.Collection`; `sources` gives random access to its training groups, corpus or
queries; `features.Featurizer` tokenises with a `vocab` vocabulary into padded arrays;
`pipeline.Pipeline` batches them deterministically, resumably and per host; `seqio_tasks`
exposes the same thing as seqio tasks (registered by the top-level `tasks` package), and
`loaders` finds the directories and caches loaded collections.

Commands: `python -m aligner_jax.data.validate` and `python -m aligner_jax.data.demo_collection`.

The names below are loaded on first use, so importing a small module of this package (e.g.
`errors`) does not import TensorFlow.
"""

import importlib

_EXPORTS = {
    "DataError": "aligner_jax.data.errors",
    "Collection": "aligner_jax.data.collection",
    "read_beir": "aligner_jax.data.beir",
    "read_msmarco": "aligner_jax.data.msmarco",
    "read_nq": "aligner_jax.data.nq",
    "check_dataset": "aligner_jax.data.validate",
    "get_vocabulary": "aligner_jax.data.vocab",
    "TokenizersVocabulary": "aligner_jax.data.vocab",
    "SentencePieceVocabulary": "aligner_jax.data.vocab",
    "FeatureLengths": "aligner_jax.data.features",
    "Featurizer": "aligner_jax.data.features",
    "Pipeline": "aligner_jax.data.input_pipeline",
    "get_pipeline": "aligner_jax.data.input_pipeline",
    "dataset_fn": "aligner_jax.data.input_pipeline",
    "set_data_dir": "aligner_jax.data.loaders",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'aligner_jax.data' has no attribute {name!r}")
