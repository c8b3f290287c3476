"""Claim R1 on a model trained with the alignment it is evaluated against: a frozen-encoder
head trained with top-1 (MaxSim over a trained projection: `repro.frozen`'s "colbert" head,
ALIGNER's top-1 training on frozen MiniLM states), then R1's strategy sweep and fold protocol
(`repro.r1_job.repro_r1`) over its token vectors.

The head is R4's (`gin/experiments/repro_r4_rerank.gin`): trained with R4's objective and
temperature, its setting chosen on dev over R4's sweep and read back from the head store when
R4 trained it. Its token vectors of the corpus and of the evaluated split's queries are
written once as an encode-job cache (`export_head_cache`: `corpus-00000-of-00001/`,
`queries-<split>/`, the lengths of the source cache in the manifests), which R1 then reads
like any other. Registered under the gin module `repro`: repro_r1_frozen_head (run.job).
"""

import dataclasses
import json
import pathlib
from typing import Any, Mapping, Sequence

import gin

from aligner_jax.index.token_store_io import save_token_store
from repro import r1_job
from repro.frozen import cache
from repro.frozen import experiments
from repro.frozen import head_eval
from repro.frozen import r2_r5_jobs  # noqa: F401  (registers FrozenData, FrozenHead, FrozenTrain)
from repro.frozen.frozen_data import FrozenData
from repro.frozen.head_training import TrainConfig
from repro.frozen.heads import HeadConfig


def _source_config(path: pathlib.Path) -> dict[str, Any]:
  return json.loads((path / "manifest.json").read_text(encoding="utf-8"))["config"]


def export_head_cache(module: Any, params: Any, data: FrozenData, out_dir: str | pathlib.Path,
                      *, split: str, key: str) -> pathlib.Path:
  """Writes the head's token vectors of `data`'s corpus and `split` queries to `out_dir` as
  an encode-job cache (float16), unless `out_dir` already holds this head's (`key`)."""
  out = pathlib.Path(out_dir)
  corpus_dir, query_dir = out / "corpus-00000-of-00001", cache.query_dir(out, split)
  if all((d / "manifest.json").is_file() and _source_config(d).get("head_key") == key
         for d in (corpus_dir, query_dir)):
    print(f"head cache {out} is current ({key})", flush=True)
    return out
  source = sorted(pathlib.Path(data.cache_dir).glob("corpus-*"))[0]
  store = head_eval.head_store(module, params, data.corpus, doc_length=data.doc_length)
  save_token_store(store, corpus_dir, dataset=data.name, head_key=key, first_document=0,
                   doc_length=_source_config(source).get("doc_length", data.doc_length))
  src_queries = cache.query_dir(data.cache_dir, split)
  queries = head_eval.head_queries(module, params, cache.load_queries(data.cache_dir, split))
  from aligner_jax.index.token_store import from_padded  # pylint: disable=g-import-not-at-top
  save_token_store(from_padded(queries.ids, queries.vectors, queries.mask,
                               vector_dtype="float16"), query_dir, dataset=data.name,
                   head_key=key, query_length=_source_config(src_queries).get(
                       "query_length", data.encode_query_length))
  print(f"wrote head cache {out}: {store.num_docs} documents, {len(queries)} queries",
        flush=True)
  return out


@gin.configurable(module="repro")
def repro_r1_frozen_head(*, data: FrozenData, head_name: str, head: HeadConfig,
                         train: TrainConfig, temperature: float,
                         sweep: Mapping[str, Sequence[Any]], head_cache: str,
                         dataset: r1_job.R1Dataset, output_json: str, figures_dir: str,
                         work_dir: str, retriever: str = "exact",
                         figure_prefix: str = "r1_head", seed: int = 0) -> dict[str, Any]:
  """R1 over the trained head's vectors -> `output_json` (+ .md) and two figures.

  The setting is chosen over `sweep` on seed 0's dev nDCG@10, as R4 chooses it; the head
  evaluated is then trained (or read back) with `seed`.
  """
  config = dataclasses.replace(train, objective="group", temperature=temperature)
  config, _ = experiments.select_on_dev(data, head_name, head, config, sweep, 0)
  module, params, history = experiments.train_or_load(data, head_name, head, config, seed)
  export_head_cache(module, params, data, head_cache, split=dataset.split, key=history["key"])
  return r1_job.repro_r1(datasets=[dataclasses.replace(dataset, encoded_dir=head_cache)],
                         output_json=output_json, figures_dir=figures_dir, work_dir=work_dir,
                         retriever=retriever, figure_prefix=figure_prefix,
                         extra_setup={"head": dataclasses.asdict(head), "head_name": head_name,
                                      "head_seed": seed,
                                      "head_training": dataclasses.asdict(config),
                                      "head_dev_ndcg@10": history.get("dev_ndcg@10")})
