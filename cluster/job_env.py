"""Print the runtime env of a pgen job as JSON: cluster/runtime_env.yaml plus the submitting shell's
S3 endpoint and region, so a job reaches the same store as a local run would.

    ray job submit --runtime-env-json "$(python cluster/job_env.py)" --working-dir . -- pgen populate …

Credentials are never passed: a job's runtime env is visible to anyone who can read the cluster's
job list. Nodes get theirs from an instance profile / service account, ~/.aws on the node, or a
Kubernetes secret (cluster/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import yaml

PASSTHROUGH = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
DEFAULT_FILE = Path(__file__).with_name("runtime_env.yaml")


def job_runtime_env(path: str | Path = DEFAULT_FILE, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The runtime env in `path` with the PASSTHROUGH variables that are set in `environ` added to env_vars."""
    runtime_env = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(runtime_env, dict):
        raise ValueError(f"{path}: a runtime env is a mapping, got {type(runtime_env).__name__}")
    env_vars = {str(k): str(v) for k, v in (runtime_env.get("env_vars") or {}).items()}
    env_vars.update({name: environ[name] for name in PASSTHROUGH if environ.get(name)})
    return {**runtime_env, "env_vars": env_vars}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime-env", default=str(DEFAULT_FILE), help="runtime env YAML (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(job_runtime_env(args.runtime_env)))
    except (OSError, ValueError, yaml.YAMLError) as err:
        print(f"job_env: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
