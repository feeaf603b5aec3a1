"""The store's checkpoints as data: slices a generator learns from (`slices`), the reference policies
a group's returns are measured against (`reference`), seed runs of generated policies (`seed_runs`),
and what a store holds (`summary`, `pgen dataset`)."""
