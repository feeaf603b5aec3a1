"""One module per command of the library, each a `main(cfg)` that `pgen.cli` calls: `train`,
`populate`, `dataset`, `train_generator`, `generate`, `evaluate`, `pipeline`. (`pgen serve`, `pgen
tune` and `pgen loop` are `serve.launcher.run`, `tune.sweep.run` and `loop.driver.run`.)"""
