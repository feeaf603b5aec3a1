"""The learner: MAPPO / IPPO with parameter sharing per agent group (`ppo`), and its state for resume
as safetensors + JSON (`state`)."""
