"""Populations: a member as a Ray actor that trains continuously and streams checkpoints to the store
(`worker`), and the handle to the served generator members start from (`served`)."""
