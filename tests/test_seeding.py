"""Population actors seeded by the served generator through a DeploymentHandle (no HTTP): the Serve
application runs in this test's local Ray (`serve.app.run`, what `pgen serve` does) and
`pgen populate population.seed.model=…` members ask its PolicyGenerator deployment for their
initial policies."""

from __future__ import annotations

import numpy as np
import pytest

from pgen.commands.train_generator import train_generator
from pgen.config import compose_config
from pgen.generator.versions import load_generator
from pgen.store import CheckpointStore
from tests.s3server import free_ports
from tests.serving import local_serve_env
from tests.test_generator import fill_store, train_cfg

POPULATE = ["policy.hidden=[8]", "population.size=2", "population.max_env_steps=400", "population.eval_episodes=4",
            "algo.num_envs=4", "algo.rollout_steps=50", "population.checkpoint_every=1",
            "population.cpus_per_worker=0.5", "seed=3"]


@pytest.fixture(scope="module")
def served_generator(tmp_path_factory):
    """One generator served for the module's tests (each writes its own run ids)."""
    import ray
    from ray import serve

    from serve.launcher import run

    store_uri = str(tmp_path_factory.mktemp("seeding") / "store")
    fill_store(CheckpointStore(store_uri))
    train_generator(train_cfg(store_uri, name="spread", epochs=2))
    with pytest.MonkeyPatch.context() as patch:
        for key, value in local_serve_env().items():  # free side ports for the HAProxy ingress `run` starts
            patch.setenv(key, value)
        port, grpc_port = free_ports(2)
        run(compose_config("serve", [f"store.uri={store_uri}", f"serve.port={port}", f"serve.grpc_port={grpc_port}",
                                     "serve.max_replicas=1", "serve.app_name=gen"]), blocking=False)
        yield store_uri
        serve.shutdown()
        ray.shutdown()


def test_population_members_seeded_through_a_deployment_handle(served_generator):
    from pgen.commands.populate import populate

    store_uri = served_generator
    cfg = compose_config("populate", POPULATE + [f"store.uri={store_uri}", "run_id=handle",
                                                 "population.seed.model=spread", "population.seed.target_return=-45"])
    statuses = populate(cfg)
    assert all(s["done"] and s["origin"] == "seeded:spread@v0001" for s in statuses.values()), statuses
    store = CheckpointStore(store_uri)
    gen = load_generator(store, "spread@v0001")
    for member in (0, 1):
        first = min(store.read_records(run_id=f"handle-m{member:03d}").table.to_pylist(), key=lambda r: r["step"])
        assert first["step"] == 0 and first["origin"] == "seeded:spread@v0001"
        # member m asked for one policy with its own seed (seed · 1000 + m): exactly what the generator gives
        expected = gen.generate(-45.0, num=1, seed=3 * 1000 + member)[0]
        np.testing.assert_allclose(np.asarray(first["params"], np.float32), expected, rtol=1e-5, atol=1e-6)


def test_a_member_seeded_from_candidates_starts_from_the_best_on_the_selection_episodes(served_generator):
    """population.seed.candidates=4: each member asks for four policies, plays each greedily on the
    selection episodes, starts from the best, and counts those episodes' env steps as its own."""
    from pgen.commands.populate import populate
    from pgen.policies.nets import actor_from_flat
    from pgen.policies.rollout import SELECTION_SEED, evaluate_returns

    store_uri = served_generator
    cfg = compose_config("populate", POPULATE + [f"store.uri={store_uri}", "run_id=best", "population.max_env_steps=800",
                                                 "population.seed.model=spread", "population.seed.target_return=-45",
                                                 "population.seed.candidates=4"])
    populate(cfg)
    store = CheckpointStore(store_uri)
    gen = load_generator(store, "spread@v0001")
    chosen = []
    for member in (0, 1):
        first = min(store.read_records(run_id=f"best-m{member:03d}").table.to_pylist(), key=lambda r: r["step"])
        candidates = gen.generate(-45.0, num=4, seed=3 * 1000 + member)
        means = [evaluate_returns(cfg.env, {"agent": actor_from_flat(gen.spec, flat)}, 4,
                                  seed=SELECTION_SEED)["agent"].mean() for flat in candidates]
        assert len(set(np.round(means, 6))) > 1, means  # the candidates differ, so the choice is a real one
        chosen.append(int(np.argmax(means)))
        np.testing.assert_allclose(np.asarray(first["params"], np.float32), candidates[chosen[-1]],
                                   rtol=1e-5, atol=1e-6)
        assert first["step"] == 4 * 4 * 25  # four candidates × four selection episodes × 25 steps, before training
    assert chosen != [0, 0], "every member's best candidate is its first: the test cannot tell a choice from none"
    with pytest.raises(ValueError, match="population.seed.candidates must be between 1 and 64"):
        populate(compose_config("populate", POPULATE + [f"store.uri={store_uri}", "population.seed.model=spread",
                                                        "population.seed.target_return=-45",
                                                        "population.seed.candidates=0"]))


def test_seeding_through_a_handle_needs_a_target_and_excludes_seed_from(tmp_path):
    from pgen.commands.populate import populate

    base = POPULATE + [f"store.uri={tmp_path / 'store'}", "population.seed.model=spread"]
    with pytest.raises(ValueError, match="population.seed.target_return"):
        populate(compose_config("populate", base))
    with pytest.raises(ValueError, match="alternatives"):
        populate(compose_config("populate", base + ["population.seed.target_return=1", "population.seed_from=x"]))
    with pytest.raises(ValueError, match="finite"):
        populate(compose_config("populate", base + ["population.seed.target_return=nan"]))
