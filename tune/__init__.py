"""Ray Tune sweeps of the generator's hyper-parameters (`pgen tune`).

`tune.sweep.sweep` is the driver: it reads one store slice, measures the evaluation baselines once,
runs a Tuner over the search space of `tune.space` (random search or Optuna, ASHA on the
per-epoch validation loss), evaluates the trials that survive by rollouts (alignment R² and
normalised score), registers the best as a generator version and summarises the trials.
`tune.trainable` is one trial: `pgen.generator.fit.fit`, unchanged, reporting every epoch to Tune.
`tune.space` turns the config's search space into Tune domains.
"""
