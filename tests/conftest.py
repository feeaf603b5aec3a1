"""Shared test setup: one torch thread (small nets; avoids oversubscribing a 2-core machine), and a
moto S3 server (`s3_server`, `s3_store_uri`) for store tests."""

import signal
import uuid

import pytest
import torch

from tests.s3server import S3Server

torch.set_num_threads(1)

# Started as a background job of a shell without job control (as CI runners may start it), this
# process inherits SIGINT ignored, and so would every command a test starts and then stops with
# SIGINT as a user's Ctrl-C (pgen serve, serve run, tensorboard): each would wait out its timeout and
# be killed instead, leaving Ray's processes behind. An ignored disposition is inherited across exec,
# a handler is not: restoring Python's own handler here gives the commands the default SIGINT.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A moto S3 server subprocess on 127.0.0.1 for the session (see tests/s3server.py).

    Sets test credentials, region and `AWS_ENDPOINT_URL` (the only way its endpoint reaches code)
    in os.environ for the session, hiding any real profile, session token or S3-specific endpoint.
    The server keeps its buckets and objects across `stop()` / `start()`.
    """
    server = S3Server(state_dir=tmp_path_factory.mktemp("moto")).start()
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
        yield server
    server.stop()


@pytest.fixture
def s3_store_uri(s3_server):
    """`s3://<fresh bucket>/pgen` on the session's moto server."""
    import boto3

    bucket = f"pgen-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    yield f"s3://{bucket}/pgen"


@pytest.fixture
def pgen_in_process(capsys, monkeypatch, tmp_path):
    """`pgen <args>` through the CLI's entry point in this process, in the test's folder, for commands
    that do not start Ray (`pgen dataset`) or refuse their input before it starts (a subprocess would
    spend seconds on imports to print a few lines): returns (exit status, stdout, stderr). The test
    process's logging is left as it is."""
    from pgen.cli import main

    monkeypatch.setattr("pgen.cli.setup_logging", lambda: None)
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> tuple[int, str, str]:
        status = main(list(args))
        out = capsys.readouterr()
        return status, out.out, out.err

    return run
