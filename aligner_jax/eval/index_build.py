"""The index job: encoded corpus shards -> INDEX_DIR, one independent task per index shard.

  plan       `index.shard_tasks.plan_tasks` over ENCODED_DIR's `corpus-<i>-of-<n>/` shards
  stage      `index.index_staging.prepare_staging` (resume a killed build, clear leftovers)
  build      `index.shard_tasks.build_task` for every task: here one after the other
             (`runner="local"`), or fanned out on Apache Beam (`runner="beam"`,
             `eval/beam_index.py`: DirectRunner processes on one machine, or any Beam runner
             of a cluster)
  publish    `index.index_staging.publish_index`: `index.json` from the shard manifests,
             written last, and the staging directory swapped in as INDEX_DIR; it carries the
             encode job's record of the encoder (ENCODED_DIR/encoder.json, `encoder_record`)

Memory holds one task's shard at a time, never the corpus, whichever runner builds it. Both
runners write the same bytes; a rerun after `kill -9` continues with the unfinished shards.
"""

import pathlib
from typing import Any, Callable, Sequence

from aligner_jax.eval import inputs as inputs_lib
from aligner_jax.eval.encoder_record import read_encoded_record
from aligner_jax.index.files import read_json
from aligner_jax.index.index_staging import prepare_staging
from aligner_jax.index.index_staging import publish_index
from aligner_jax.index.shard_tasks import build_task
from aligner_jax.index.shard_tasks import plan_tasks
from aligner_jax.index.token_index import INDEX_JSON
from aligner_jax.index.token_index import IndexConfig

RUNNERS = ("local", "beam")
Log = Callable[[str], None]


def build_index_from_shards(encoded_dir: str | pathlib.Path, index_dir: str | pathlib.Path,
                            config: IndexConfig, *, runner: str = "local",
                            beam_options: Sequence[str] = (),
                            log: Log = inputs_lib.print_log) -> dict[str, Any]:
  """Builds (or finishes) the index over ENCODED_DIR's shards in INDEX_DIR; returns
  `index.json`. `beam_options`: Beam pipeline flags, e.g. `--runner=DataflowRunner ...`."""
  if runner not in RUNNERS:
    raise ValueError(f"index runner must be one of {RUNNERS}, got {runner!r}")
  # Absolute paths: tasks may run in other processes and machines with another working dir.
  encoded_dir, index_dir = pathlib.Path(encoded_dir).absolute(), pathlib.Path(index_dir).absolute()
  tasks = plan_tasks(inputs_lib.corpus_shards(encoded_dir), config)
  names = [task.name for task in tasks]
  log(f"index plan: {len(tasks)} shards over {tasks[-1].first_document + tasks[-1].num_documents}"
      f" documents of {len({t.source for t in tasks})} encoded shards ({runner} runner)")
  staging = prepare_staging(index_dir, names, log)
  encoder = read_encoded_record(encoded_dir)
  if runner == "beam":
    from aligner_jax.eval import beam_index  # pylint: disable=g-import-not-at-top
    beam_index.run_pipeline(tasks, config, index_dir, beam_options, encoder=encoder)
    return read_json(pathlib.Path(index_dir) / INDEX_JSON)
  built = 0
  for task in tasks:
    built += build_task(task, config, staging, log)["built"]
  log(f"built {built} shards, kept {len(tasks) - built} finished ones")
  return publish_index(index_dir, names, config, log, encoder=encoder)
