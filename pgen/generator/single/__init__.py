"""The single-architecture generator kind (`generator=single`): its model (`model`), how it reads a
policy (`tokens`), its normaliser (`normalize`) and the kind's entry (`kind`)."""
