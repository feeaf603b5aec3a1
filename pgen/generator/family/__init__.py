"""The arch-family generator kind (`generator=family`): an architecture as a graph of units
(`archgraph`), the model (`model`), the normaliser for unseen architectures (`normalize`) and the
kind's entry (`kind`)."""
