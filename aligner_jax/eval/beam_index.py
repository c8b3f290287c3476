"""The index build's fan-out on Apache Beam: one Beam element per index shard task.

  Create(tasks) | Reshuffle | Map(build_task) | ToList | Map(publish_index)

Each element is a `shard_tasks.ShardTask` (a few strings and integers); a worker builds that
shard alone, reading only its encoded shard's pages, and writes it into INDEX_DIR's staging
directory; the last step checks that every task reported and publishes `index.json`. The same
code runs on every runner: with no `--runner` flag it is the DirectRunner in multi-processing
mode (`--direct_num_workers`, default 2: each worker a separate process with its own memory);
`--runner=DataflowRunner --project=P --region=R --temp_location=gs://… --setup_file=./setup.py`
(or Flink / Spark) runs it on a cluster, whose workers must see ENCODED_DIR and INDEX_DIR at
the same paths (a shared file system), since shards are written with atomic renames.

Beam is imported here only, when a build asks for it (the `beam` extra of setup.py).
"""

import pathlib
from typing import Any, Sequence

from aligner_jax.index.index_staging import publish_index
from aligner_jax.index.index_staging import staging_dir
from aligner_jax.index.shard_tasks import ShardTask
from aligner_jax.index.shard_tasks import build_task
from aligner_jax.index.token_index import IndexConfig

DEFAULT_OPTIONS = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")
QUIET_WORKERS = "--default_sdk_harness_log_level=WARNING"  # not every worker's INFO start-up


def pipeline_flags(options: Sequence[str]) -> list[str]:
  """`options` completed with the local defaults for what they leave unset."""
  flags = list(options)
  given = {flag.split("=", 1)[0] for flag in flags}
  if "--runner" not in given:
    flags.append("--runner=DirectRunner")
  if QUIET_WORKERS.split("=", 1)[0] not in given:
    flags.append(QUIET_WORKERS)
  if any(flag in ("--runner=DirectRunner", "--runner=direct") for flag in flags):
    flags += [flag for flag in DEFAULT_OPTIONS if flag.split("=", 1)[0] not in given]
  return flags


def _build(task: ShardTask, config: IndexConfig, staging: str) -> tuple[int, str, bool]:
  entry = build_task(task, config, staging)
  return task.position, entry["name"], entry["built"]


def _publish(results: list[tuple[int, str, bool]], index_dir: str, names: list[str],
             config: IndexConfig, encoder: dict[str, Any] | None) -> dict[str, Any]:
  reported = sorted(results)
  if [name for _, name, _ in reported] != names:
    missing = sorted(set(names) - {name for _, name, _ in reported})
    raise RuntimeError(f"{index_dir}: shard tasks did not all report (missing {missing[:5]}); "
                       "not publishing")
  print(f"built {sum(b for _, _, b in reported)} shards, kept "
        f"{sum(not b for _, _, b in reported)} finished ones", flush=True)
  return publish_index(index_dir, names, config, encoder=encoder)


def run_pipeline(tasks: Sequence[ShardTask], config: IndexConfig, index_dir: str | pathlib.Path,
                 options: Sequence[str] = (), *, encoder: dict[str, Any] | None = None) -> None:
  """Builds `tasks` into INDEX_DIR's staging directory on Beam and publishes the index (with
  `encoder`, the record of the model that encoded the documents, in its `index.json`)."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  names = [task.name for task in tasks]
  staging = str(staging_dir(index_dir))
  with beam.Pipeline(options=PipelineOptions(pipeline_flags(options))) as pipeline:
    _ = (pipeline
         | "Tasks" >> beam.Create(list(tasks))
         | "Spread" >> beam.Reshuffle()
         | "BuildShard" >> beam.Map(_build, config, staging)
         | "Collect" >> beam.combiners.ToList()
         | "Publish" >> beam.Map(_publish, str(index_dir), names, config, encoder))
