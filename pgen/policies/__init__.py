"""Policies: what one is as data (`spec`: `PolicySpec`, `ParamLayout`, the arch key), as a network
(`nets`: `Actor` and the critics), as a file (`policy_file`), how one architecture grows into another
of its family (`growth`), and what it achieves in its env (`rollout`)."""
