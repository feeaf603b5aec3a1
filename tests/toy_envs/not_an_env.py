"""A module without parallel_env, for the error-message test."""

VALUE = 1
