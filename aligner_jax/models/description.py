"""A `DualEncoder`'s token-encoding architecture as JSON, and the module rebuilt from it.

An index records the model that encoded its documents (`retrieval/encoder_record.py`); what
rebuilding the query encoder needs is the module's settings, written here as plain JSON:
the encoder config (`params_io.config_to_dict`), the heads' settings and the two sides'
`Framing`s. A LITE / KNRM head re-ranks and plays no part in token encoding, so it is not
described and the rebuilt module has none (its parameters are then simply not used).
"""

import dataclasses
from typing import Any

from aligner_jax.models import params_io
from aligner_jax.models.configs import hidden_size
from aligner_jax.models.dual_encoder import DualEncoder
from aligner_jax.models.framing import Framing
from aligner_jax.models.hf_import import CheckpointError

_NOT_DESCRIBED = ("parent", "name", "lite_scorer")
_FRAMINGS = ("query_framing", "doc_framing")


def _framing_json(framing: Framing | None) -> dict[str, Any] | None:
  if framing is None:
    return None
  return {**dataclasses.asdict(framing), "skip_ids": list(framing.skip_ids)}


def describe(module: DualEncoder) -> dict[str, Any]:
  """The JSON description of `module`'s token encoding (see the module docstring)."""
  if not isinstance(module, DualEncoder):
    raise TypeError(f"only a DualEncoder can be described, got {type(module).__name__}")
  out: dict[str, Any] = {}
  for field in dataclasses.fields(DualEncoder):
    if field.name in _NOT_DESCRIBED:
      continue
    value = getattr(module, field.name)
    if field.name == "encoder_config":
      value = params_io.config_to_dict(value)
    elif field.name in _FRAMINGS:
      value = _framing_json(value)
    out[field.name] = value
  return out


def from_description(description: dict[str, Any], *, source: str = "description"
                     ) -> DualEncoder:
  """The `DualEncoder` a description was made from (without a LITE / KNRM head).

  Raises:
    CheckpointError: naming `source`, when the description is malformed or has fields this
      version does not know.
  """
  if not isinstance(description, dict) or "encoder_config" not in description:
    raise CheckpointError(f"{source}: a model description needs an encoder_config")
  known = {f.name for f in dataclasses.fields(DualEncoder)} - set(_NOT_DESCRIBED)
  unknown = sorted(set(description) - known)
  if unknown:
    raise CheckpointError(f"{source}: unknown DualEncoder settings {unknown} (written by "
                          "another version?)")
  kwargs = dict(description)
  kwargs["encoder_config"] = params_io.config_from_dict(kwargs["encoder_config"],
                                                        source=source)
  for name in _FRAMINGS:
    if kwargs.get(name) is not None:
      framing = dict(kwargs[name])
      framing["skip_ids"] = tuple(framing.get("skip_ids", ()))
      try:
        kwargs[name] = Framing(**framing)
      except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: malformed {name} ({e})") from None
  try:
    return DualEncoder(**kwargs)
  except TypeError as e:
    raise CheckpointError(f"{source}: malformed model description ({e})") from None


def token_dim(module: DualEncoder) -> int:
  """h, the width of the module's token vectors (its projection, else the encoder's)."""
  return module.projection_dim or hidden_size(module.encoder_config)
