"""A (data=2, fsdp=2, tensor=2) mesh on 8 CPU devices gives the single-device logits; shardings follow the rules."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from tests.tiny_models import TINY_HF_CONFIGS, make_tiny_hf_model
from xalign_jax import models, sharding


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(2, 2, 2)


@pytest.mark.parametrize("name", ["gemma3", "bloom"])
def test_sharded_logits_equal_single_device(tmp_path, mesh, name):
    make_tiny_hf_model(name, tmp_path)
    single = models.from_pretrained(tmp_path)
    sharded = models.from_pretrained(tmp_path, mesh=mesh)
    ids = jnp.asarray(np.random.default_rng(0).integers(4, 256, (4, 12)), jnp.int32)
    graphdef, params = nnx.split(sharded, nnx.Param)

    @jax.jit
    def forward(params, ids):
        return nnx.merge(graphdef, params)(ids).logits

    ids_sharded = jax.device_put(ids, sharding.batch_sharding(mesh))
    np.testing.assert_allclose(np.asarray(forward(params, ids_sharded)), np.asarray(single(ids).logits),
                               atol=1e-5, rtol=0)


def test_every_parameter_follows_the_rules_table(tmp_path, mesh):
    make_tiny_hf_model("gemma3", tmp_path)
    model = models.from_pretrained(tmp_path, mesh=mesh)
    expected = {  # gemma3 tiny: d=32, 4 heads, 1 kv head (cannot split over tensor=2: replicated), mlp 64
        "embed": P("tensor", "fsdp"), "blocks.q": P(None, "fsdp", "tensor", None),
        "blocks.k": P(None, "fsdp", None, None), "blocks.o": P(None, "tensor", None, "fsdp"),
        "blocks.up": P(None, "fsdp", "tensor"), "blocks.down": P(None, "tensor", "fsdp"),
        "blocks.attn_norm": P(None, None), "final_norm": P(None)}
    arrays = model.arrays()
    for name, spec in expected.items():
        assert arrays[name].sharding.spec == spec, name
    specs = models.param_specs(model.config)
    for name, array in arrays.items():
        assert array.sharding.spec == sharding.logical_spec(specs[name].axes, array.shape, mesh), name


def test_random_models_are_drawn_in_the_rules_shardings_by_one_compiled_draw_per_config(mesh):
    compiles = []

    def count(event, seconds, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(seconds)
    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        config = models.ModelConfig.from_hf(TINY_HF_CONFIGS["gemma3"])
        first = models.init_model(config, seed=0, mesh=mesh).arrays()
        drawn = len(compiles)
        again, other = (models.init_model(config, seed=seed, mesh=mesh).arrays() for seed in (0, 1))
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    assert drawn >= 1 and len(compiles) == drawn                    # the same draw, compiled once
    specs = models.param_specs(config)
    for name, array in first.items():
        assert array.sharding.spec == sharding.logical_spec(specs[name].axes, array.shape, mesh), name
        np.testing.assert_array_equal(again[name], array)
    assert not np.array_equal(other["embed"], first["embed"])


def test_mesh_size_must_match_device_count():
    with pytest.raises(ValueError, match="needs 12 devices, there are 8"):
        sharding.make_mesh(2, 3, 2)


def test_adam_moments_are_sharded_like_their_parameters(tmp_path, mesh):
    from xalign_jax import train
    from xalign_jax.train_step import make_optimizer
    from xalign_jax.config_defaults import train_config
    make_tiny_hf_model("gemma3", tmp_path)
    _, params = nnx.split(models.from_pretrained(tmp_path, mesh=mesh), nnx.Param)
    tx, _ = make_optimizer(train_config())
    state = train.init_train_state(params, tx, mesh, seed=0)
    param_specs = [x.sharding.spec for x in jax.tree.leaves(params)]
    assert any(spec != P() for spec in param_specs)
    adam = state["opt_state"][1][0]     # chain(clip, adamw = chain(scale_by_adam, ...))
    for moment in (adam.mu, adam.nu):
        assert [x.sharding.spec for x in jax.tree.leaves(moment)] == param_specs

