"""ParamLayout, arch keys and the policy file."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from pgen.policies.nets import Actor
from pgen.policies.policy_file import load_policies, read_policy_file, save_policy_file
from pgen.policies.spec import ParamLayout, PolicySpec

SPECS = [
    PolicySpec("mlp", 18, (64, 64), 5, True, "tanh"),
    PolicySpec("mlp", 16, (32,), 5, True, "relu"),
    PolicySpec("mlp", 18, (64, 64), 5, False, "tanh"),
    PolicySpec("gru", 14, (32, 48), 5, True, "tanh"),
    PolicySpec("gru", 7, (16, 16), 2, False, "relu"),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.arch_key)
def test_layout_round_trip_is_exact(spec):
    actor = Actor(spec)
    layout = actor.layout
    flat = actor.flat_params()
    assert flat.dtype == np.float32 and flat.shape == (layout.num_params,)
    assert layout.num_params == sum(p.numel() for p in actor.parameters())
    tensors = layout.unflatten(flat)
    for name, p in actor.named_parameters():
        assert torch.equal(tensors[name], p.detach())
    other = Actor(spec)
    other.load_flat_params(flat)
    assert np.array_equal(other.flat_params(), flat)
    assert ParamLayout.from_json(layout.to_json()) == layout


@pytest.mark.parametrize("spec", SPECS + [PolicySpec("mlp", 3, (4, 5, 6, 7), 2, True, "tanh")], ids=lambda s: s.arch_key)
def test_the_layout_a_spec_names_is_the_networks_own(spec):
    """`PolicySpec.layout` follows from the spec alone (docs/design.md "ParamLayout"): the actor
    registers exactly those tensors, in that order."""
    assert spec.layout == Actor(spec).layout == ParamLayout.of(Actor(spec))


def test_arch_key_examples():
    assert SPECS[0].arch_key == "mlp-18x64x64x5-tanh"
    assert SPECS[2].arch_key == "mlp-18x64x64x5c-tanh"
    assert SPECS[3].arch_key == "gru-14x32x48x5-tanh"
    assert len({s.arch_key for s in SPECS}) == len(SPECS)


def test_unflatten_rejects_wrong_size():
    layout = Actor(SPECS[0]).layout
    with pytest.raises(ValueError, match="layout needs"):
        layout.unflatten(np.zeros(layout.num_params + 1, np.float32))


def test_bad_spec_is_a_clear_error():
    with pytest.raises(ValueError, match="policy kind"):
        PolicySpec("cnn", 3, (4,), 2, True)
    with pytest.raises(ValueError, match="gru policies take"):
        PolicySpec("gru", 3, (4, 4, 4), 2, True)


@pytest.mark.parametrize("spec", SPECS[:1] + SPECS[3:4], ids=lambda s: s.arch_key)
def test_policy_file_round_trip(tmp_path, spec):
    actors = [Actor(spec) for _ in range(3)]
    params = np.stack([a.flat_params() for a in actors])
    path = save_policy_file(tmp_path / "p.safetensors", params, spec, "mpe2.simple_spread_v3", "agent",
                            model="gen", version="3", target_return=-30.5)
    pf = read_policy_file(path)
    assert np.array_equal(pf.params, params)
    assert pf.metadata["arch"] == spec.arch_key and pf.metadata["target_return"] == "-30.5"
    rebuilt = load_policies(path)
    obs = torch.randn(4, spec.obs_dim)
    h = rebuilt[0].initial_state(4) if spec.kind == "gru" else None
    for a, b in zip(actors, rebuilt):
        assert torch.equal(a(obs, h)[0], b(obs, h)[0])
    # a reader without pgen: safetensors + the JSON layout are enough
    with safe_open(str(path), framework="np") as f:
        layout = json.loads(f.metadata()["layout"])
        flat = f.get_tensor("params")
    sizes = [int(np.prod(shape)) for _, shape in layout]
    assert flat.shape == (3, sum(sizes)) and layout[0][0] in ("layers.0.weight", "encoder.weight")


def test_policy_file_rejects_foreign_safetensors(tmp_path):
    from safetensors.torch import save_file

    save_file({"params": torch.zeros(1, 3)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a pgen policy file"):
        read_policy_file(tmp_path / "x.safetensors")
