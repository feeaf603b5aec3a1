"""Shared test setup: one torch thread (small nets; avoids oversubscribing a 2-core machine)."""

import torch

torch.set_num_threads(1)
