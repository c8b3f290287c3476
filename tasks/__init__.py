"""seqio task registrations of this project; importing `tasks` registers all of them.

One module per family: `tasks.beir`, `tasks.msmarco`, `tasks.nq`, `tasks.demo`. Registration
only declares tasks -- no file is read and nothing fails when data is absent; the data
directory of a task is looked up when its dataset is first requested
(`aligner_jax.data.loaders`: ALIGNER_<FAMILY>_DIR environment variables or `set_data_dir`).

Features and lengths: `aligner_jax.data.features` (query_tokens [64], doc_tokens [1 + N, 256]
for training, ids for corpus/query tasks). Tokenised with `$ALIGNER_VOCABULARY` (default
"t5_1_1"); `aligner_jax.data.input_pipeline.get_pipeline(..., vocabulary=...)` tokenises with any
other vocabulary.
"""

from tasks import beir  # noqa: F401  pylint: disable=unused-import
from tasks import demo  # noqa: F401  pylint: disable=unused-import
from tasks import msmarco  # noqa: F401  pylint: disable=unused-import
from tasks import nq  # noqa: F401  pylint: disable=unused-import
