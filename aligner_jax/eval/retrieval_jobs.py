"""Gin jobs for encoding, indexing and evaluation (`gin/runs/{encode,index,eval_beir}.gin`).

Entry-point code: gin configures the arguments; the work is done by the gin-free
`aligner_jax.eval.evaluators` and the index / retrieval libraries. Registered under the gin
module `aligner_jax.eval`:
  encode_beir       run.job: corpus and split queries -> token stores (resumable corpus shards)
  build_index       run.job: token stores -> the (pruned) token index in INDEX_DIR
  eval_beir         run.job: run.trec, metrics.json (+ adaptation.json, report.html)
  load_model        (module, params) from a trained MODEL_DIR or a pretrained checkpoint
  IndexConfig       the index build settings

Model parameters (`load_model`): with `model_dir`, the newest (or `step`) trainer checkpoint
`MODEL_DIR/checkpoints/<step>/state` is read and only its `params` are restored; otherwise
`checkpoint_path` (Hugging Face / T5X / orbax encoder) gives the encoder weights of a model
without trained heads (zero-shot, e.g. all-MiniLM-L6-v2), or a sentence-transformers / PyLate
ColBERT directory its encoder and token projection.
"""

import pathlib
from typing import Any, Sequence

import gin
import jax

from aligner_jax.eval import evaluators
from aligner_jax.eval import inputs as inputs_lib
from aligner_jax.eval.index_build import build_index_from_shards
from aligner_jax.eval.model_loading import LoadedModel
from aligner_jax.eval.model_loading import ModelLoadError  # noqa: F401 (its callers' error)
from aligner_jax.eval.model_loading import load_model
from aligner_jax.eval.model_loading import restore_trained_params  # noqa: F401
from aligner_jax.eval.results import summary_table
from aligner_jax.index import IndexConfig
from aligner_jax.index.token_store_io import save_token_store
from aligner_jax.io import remove_leftovers
from aligner_jax.io import write_json
from aligner_jax.retrieval.corpus_shards import ShardPlan
from aligner_jax.retrieval.corpus_shards import encode_corpus_shards
from aligner_jax.retrieval.corpus_shards import params_fingerprint
from aligner_jax.retrieval.corpus_shards import store_is_current
from aligner_jax.retrieval.encoding import Encoder
from aligner_jax.retrieval.encoding import encode_queries
from aligner_jax.retrieval.encoding import make_encode_fn
from aligner_jax.retrieval.passages import Passages

_MODULE = "aligner_jax.eval"


def model_encoders(module: Any, params: Any, vocabulary: str, *, batch_size: int = 32,
                   num_partitions: int = 1, local: bool = False) -> inputs_lib.ModelEncoders:
  """The model's encoders; `local`: over this process's devices only (no lockstep with other
  processes, `batch_size` is then this process's batch)."""
  from aligner_jax.data.vocab import get_vocabulary  # pylint: disable=g-import-not-at-top
  from aligner_jax.partitioning import Partitioner  # pylint: disable=g-import-not-at-top
  vocab = get_vocabulary(vocabulary)
  partitioner = Partitioner(num_partitions, devices=jax.local_devices() if local else None)
  make = lambda side: Encoder(make_encode_fn(module, side), params, batch_size=batch_size,  # noqa
                              pad_id=vocab.pad_id, partitioner=partitioner)
  lite = lengths = None
  head = getattr(module, "lite_scorer", None)
  if head is not None:
    from aligner_jax.retrieval import lite_pair_fn  # pylint: disable=g-import-not-at-top
    lite = lite_pair_fn(module, params)
    # KNRM takes any shape; LITE's matrices have the fixed shape it was built with.
    lengths = (getattr(head, "query_len", None), getattr(head, "doc_len", None))
  return inputs_lib.ModelEncoders(vocab, make("query"), make("doc"), lite, lengths)


def _encode_queries(enc: inputs_lib.ModelEncoders, beir_dir: str, split: str,
                    directory: pathlib.Path, config: dict[str, Any]) -> None:
  """Encodes the split's judged queries into `directory` unless it already holds them."""
  from aligner_jax.index.token_store import from_padded  # pylint: disable=g-import-not-at-top
  table = inputs_lib.judged_queries(beir_dir, split)
  if store_is_current(directory, config, table.ids, inputs_lib.print_log):
    print(f"{directory} is complete (verified)", flush=True)
    return
  print(f"encoding {len(table)} {split} queries", flush=True)
  remove_leftovers(directory)
  queries = encode_queries(enc.queries, enc.vocabulary, table.ids, table.texts,
                           max_length=config["query_length"])
  store = from_padded(queries.ids, queries.vectors, queries.mask, salience=queries.salience,
                      token_ids=queries.token_ids, pooled=queries.pooled)
  save_token_store(store, directory, **config)


def _record(model: Any, vocabulary: str, query_length: int, doc_length: int) -> Any:
  """The `encoder_record.EncoderRecord` of a `LoadedModel` (None for a bare (module, params)
  pair, whose parameters' origin is unknown)."""
  if not isinstance(model, LoadedModel):
    return None
  from aligner_jax.eval import encoder_record  # pylint: disable=g-import-not-at-top
  return encoder_record.make_record(model, vocabulary, query_length=query_length,
                                    doc_length=doc_length)


@gin.configurable(module=_MODULE)
def encode_beir(*, model: tuple[Any, Any], vocabulary: str, beir_dir: str, split: str,
                output_dir: str, doc_length: int = 256, query_length: int = 64,
                batch_size: int = 32, num_partitions: int = 1,
                vector_dtype: str = "float16",
                shard_documents: int = 100_000,
                strict_data: bool | None = None) -> dict[str, Any]:
  """Encodes the corpus into OUTPUT_DIR/corpus-<i>-of-<n>/ shards of `shard_documents`
  documents (`retrieval.corpus_shards`: each process its own shards on its own devices; a
  rerun continues where a run stopped) and, on process 0, the split's queries into
  OUTPUT_DIR/queries-<split>/. `batch_size` is each process's batch. Documents with neither
  title nor text are encoded as their framing tokens only, unless `strict_data` (None:
  `ALIGNER_STRICT_DATA`) refuses them."""
  module, params = model
  enc = model_encoders(module, params, vocabulary, batch_size=batch_size,
                       num_partitions=num_partitions, local=True)
  out = pathlib.Path(output_dir)
  name, documents = inputs_lib.corpus_documents(beir_dir, strict=strict_data)
  settings = {"dataset": name, "model": params_fingerprint(params)}
  framings = [getattr(module, f"{side}_framing", None) for side in ("query", "doc")]
  if any(framings):  # what the model keeps of each text depends on them, not on the params
    settings["framing"] = repr(framings)
  process, processes = jax.process_index(), jax.process_count()
  if process == 0:
    _encode_queries(enc, beir_dir, split, out / f"queries-{split}",
                    {**settings, "query_length": query_length})
  plan = ShardPlan(len(documents), shard_documents)
  mine = plan.owned(process, processes)
  print(f"process {process}/{processes}: {len(mine)} of {plan.num_shards} corpus shards "
        f"({len(documents)} documents, {shard_documents} a shard)", flush=True)
  done = encode_corpus_shards(enc.documents, enc.vocabulary, documents, out, plan, shards=mine,
                              config=settings, max_length=doc_length,
                              vector_dtype=vector_dtype, log=inputs_lib.print_log)
  record = _record(model, vocabulary, query_length, doc_length)
  if process == 0 and record is not None:
    from aligner_jax.eval import encoder_record  # pylint: disable=g-import-not-at-top
    write_json(out / encoder_record.ENCODED_RECORD, record.to_json())
  print(f"process {process}/{processes}: encoded shards {done['encoded']}, skipped finished "
        f"shards {done['skipped']}; {done['documents']} documents, {done['tokens']} tokens",
        flush=True)
  return done


@gin.configurable(module=_MODULE)
def build_index(*, encoded_dir: str, index_dir: str,
                index_config: IndexConfig = IndexConfig(), runner: str = "local",
                beam_options: Sequence[str] = ()) -> dict[str, Any]:
  """Builds the token index over every encoded corpus shard, one task per index shard
  (`eval.index_build`): `runner` "local" builds them in this process, "beam" on Apache Beam
  with `beam_options` (its pipeline flags). Process 0 runs the job; the others wait."""
  info: dict[str, Any] = {}
  if jax.process_index() == 0:
    info = build_index_from_shards(encoded_dir, index_dir, index_config, runner=runner,
                                   beam_options=beam_options)
    print(f"index {index_dir}: {info['counts']}, {info['total_bytes'] / 2**20:.1f} MiB, "
          f"{info['bytes_per_original_token']:.1f} bytes per original token", flush=True)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("build_index")
  return info


@gin.configurable(module=_MODULE)
def eval_beir(*, beir_dir: str, split: str, output_dir: str, retriever: str = "scann",
              model: tuple[Any, Any] | None = None, vocabulary: str | None = None,
              index_dir: str | None = None, index_config: IndexConfig = IndexConfig(),
              rebuild_index: bool = False, alignment: str = "top_k:1",
              extra_alignments: Sequence[str] = (), num_neighbors: int = 4000,
              prune_query_ratio: float = 1.0, top_n: int = 1000, doc_length: int = 256,
              query_length: int = 64, batch_size: int = 32, num_partitions: int = 1,
              rerank_depth: int = 0, rerank_with: str = "alignment",
              adaptation: bool = False, num_pictures: int = 0,
              pruning_curve: Sequence[float] = (), ignore_identical_ids: bool = True,
              encoded_dir: str | None = None, strict_data: bool | None = None,
              verify_index: bool = False, num_refine: int | None = None,
              leaves_to_search: int | None = None, passage_overlap: int | None = None,
              passage_scoring: str = "maxp") -> dict[str, Any]:
  """Evaluates on one BEIR split (see `evaluators.evaluate_beir`).

  `encoded_dir`: the encode job's ENCODED_DIR for the same model and lengths; the corpus (and
  the split's queries, when encoded there) are read from it instead of being encoded again
  (`--gin.eval_beir.encoded_dir="'DIR'"`). `strict_data`: refuse documents with neither title
  nor text (None: the `ALIGNER_STRICT_DATA` environment variable; off when unset).
  `verify_index`: compare the SHA-256 of every file of an existing index with its manifests
  before using it. With several processes each retrieves its slice of the judged queries,
  encoding on its own devices, and process 0 gathers the runs and writes the files (the
  others return their query count). `num_refine`: R, refine only each query's R best
  candidates by first-stage (XTR) score (None / 0: all); `leaves_to_search`: ScaNN leaves
  searched per query token (None: the index's setting).
  `passage_overlap`: documents longer than `doc_length` become passages sharing this many
  tokens, scored back per document by `passage_scoring` ("maxp" | "firstp"); None cuts them.
  """
  evaluator = evaluators.make_evaluator(
      retriever, alignments=[alignment, *extra_alignments], rerank_depth=rerank_depth,
      rerank_with=rerank_with, index_dir=index_dir, index_config=index_config,
      rebuild_index=rebuild_index, num_neighbors=num_neighbors,
      prune_query_ratio=prune_query_ratio, adaptation=adaptation, pruning_curve=pruning_curve,
      verify_index=verify_index, num_refine=num_refine, leaves_to_search=leaves_to_search)
  encoders = None
  if model is not None and not isinstance(evaluator, evaluators.BM25Evaluator):
    if vocabulary is None:
      raise ValueError("eval_beir needs the model's VOCABULARY")
    encoders = model_encoders(model[0], model[1], vocabulary, batch_size=batch_size,
                              num_partitions=num_partitions, local=True)
    encoders.record = _record(model, vocabulary, query_length, doc_length)
  passages = None if passage_overlap is None else Passages(passage_overlap, passage_scoring)
  inputs = inputs_lib.EvalInputs(beir_dir, split, encoders, encoded_dir, doc_length,
                                 query_length, ignore_identical_ids, strict_data, passages)
  result = evaluators.evaluate_beir(evaluator, inputs, output_dir, top_n=top_n,
                                    num_pictures=num_pictures)
  if jax.process_index() == 0:
    print(summary_table(result), flush=True)
  return result


gin.external_configurable(load_model, module=_MODULE)
gin.external_configurable(IndexConfig, module=_MODULE)
