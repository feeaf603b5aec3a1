"""The checkpoint store: write-once objects and Parquet checkpoint records, locally or on S3.

One `CheckpointStore` serves a local folder (a path or `file:///abs/path`) and any S3-compatible
service (`s3://bucket/prefix`) through the same interface; the layout and the record are the
contract in docs/design.md ("Store URI", "Layout under the store", "Checkpoint record").

- Every object is written whole and once: locally a temp file (name starting with ".") is
  hard-linked to its final name, which fails if that name exists; on S3 a single PUT with
  `If-None-Match: *`. Some S3-compatible servers accept that condition and overwrite anyway: a
  probe before the first write-once PUT finds out, and on such a server each write-once PUT is
  preceded by a HEAD, so a writer that comes later never overwrites. Pointers are the only objects that may be overwritten: plainly
  (`put_pointer`) or forward only (`advance_pointer`: compare-and-swap, `If-Match` on S3, a lock
  file locally).
- S3 calls retry transient failures (connection errors, timeouts, 5xx, throttling) with botocore's
  `standard` retry mode (exponential backoff with full jitter, capped at 20 s, and its retry
  quota), with enough attempts for the mean backoff to span `retry_s` seconds; each retry is
  logged. Permanent failures (no such bucket, access denied, bad credentials) raise `StoreError`
  at once.
- Readers verify each row's checksum and skip bad rows and unreadable parts, counting them; they
  never raise on bad data and never unpickle anything.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import logging
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from pgen.config import StoreConfig

log = logging.getLogger("pgen")


class StoreError(RuntimeError):
    """A permanent store problem (bad URI, no such bucket, access denied); the message says which."""


RECORD_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("member", pa.int32()), ("env_id", pa.string()), ("env_key", pa.string()),
    ("group", pa.string()), ("arch", pa.string()), ("step", pa.int64()), ("update", pa.int64()),
    ("return_mean", pa.float64()), ("return_std", pa.float64()), ("episodes", pa.int32()),
    ("num_params", pa.int32()), ("params", pa.list_(pa.float32())), ("checksum", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")), ("seed", pa.int64()), ("origin", pa.string()),
])
PARTITIONS = ("env", "group", "arch", "run")
PART_RE = re.compile(r"checkpoints/env=([^/]+)/group=([^/]+)/arch=([^/]+)/run=([^/]+)/part-(\d{6})\.parquet")
READ_THREADS = 8  # parallel GETs when scanning parts (S3 latency dominates small parts)


def params_checksum(params: np.ndarray) -> str:
    """Hex SHA-256 of `params` as little-endian float32 bytes (the record's `checksum`)."""
    return hashlib.sha256(np.ascontiguousarray(params, dtype="<f4").tobytes()).hexdigest()


def part_key(env_key: str, group: str, arch: str, run_id: str, seq: int) -> str:
    """Store key of checkpoint part `seq` of one run's (env, group, arch) slice."""
    for name, value in zip(PARTITIONS, (env_key, group, arch, run_id)):
        if not value or "/" in value or value.startswith("."):
            raise ValueError(f"bad {name} partition value {value!r}: must be non-empty, no '/', no leading '.'")
    return f"checkpoints/env={env_key}/group={group}/arch={arch}/run={run_id}/part-{seq:06d}.parquet"


@dataclass
class ReadResult:
    """Checkpoint rows that passed verification, and what was skipped."""

    table: pa.Table  # good rows only, RECORD_SCHEMA (or the requested columns of it)
    rows: int  # good rows
    bad_rows: int  # rows skipped: checksum mismatch, wrong params length, NaN/inf params or return
    bad_parts: list[tuple[str, str]] = field(default_factory=list)  # (key, reason) of unreadable parts


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or any(not p or p in (".", "..") or p.startswith(".") for p in parts):
        raise ValueError(f"bad store key {key!r}: '/'-separated, non-empty segments, none starting with '.'")
    return key


# --- local folder ---------------------------------------------------------------------------------

class _LocalBackend:
    def __init__(self, root: Path):
        self.root = root

    def _write_tmp(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def put_once(self, key: str, data: bytes) -> bool:
        path = self.root / key
        try:
            tmp = self._write_tmp(path, data)
            try:
                os.link(tmp, path)  # atomic create-if-absent of a complete file
                return True
            except FileExistsError:
                return False
            finally:
                tmp.unlink()
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e}") from e

    def put_pointer(self, key: str, data: bytes) -> None:
        path = self.root / key
        try:
            os.replace(self._write_tmp(path, data), path)
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e}") from e

    def get_pointer(self, key: str) -> tuple[bytes | None, str | None]:
        try:
            data = self.get(key)
        except KeyError:
            return None, None
        return data, hashlib.sha256(data).hexdigest()

    def put_pointer_if(self, key: str, data: bytes, tag: str | None) -> bool:
        path = self.root / key
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path.with_name(f".{path.name}.lock"), "a") as lock:  # a hidden name: never listed
                fcntl.flock(lock, fcntl.LOCK_EX)  # held until the file is closed
                if self.get_pointer(key)[1] != tag:
                    return False
                os.replace(self._write_tmp(path, data), path)
                return True
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e}") from e

    def get(self, key: str) -> bytes:
        try:
            return (self.root / key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(key) from None

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def list(self, prefix: str) -> list[str]:
        if ".." in prefix.split("/"):
            raise ValueError(f"bad store prefix {prefix!r}")
        top = self.root / prefix.rpartition("/")[0]
        keys = []
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = Path(folder).relative_to(self.root).as_posix()
            base = "" if rel == "." else rel + "/"
            keys += [base + f for f in files if not f.startswith(".") and (base + f).startswith(prefix)]
        return sorted(keys)


# --- S3 -------------------------------------------------------------------------------------------

_MISSING = object()
MAX_BACKOFF_S = 20.0  # botocore's cap on one retry's delay


def retry_attempts(retry_s: float) -> int:
    """Attempts of botocore's standard retry mode whose mean backoff (full jitter: half of
    min(2^(n-1), 20 s) before retry n) adds up to at least `retry_s` seconds."""
    attempts, waited = 1, 0.0
    while waited < retry_s:
        waited += 0.5 * min(2.0 ** (attempts - 1), MAX_BACKOFF_S)
        attempts += 1
    return attempts


def _error_code(e: Exception) -> tuple[str, int]:
    response = getattr(e, "response", {}) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(response.get("Error", {}).get("Code", "")), int(status)


class _S3Backend:
    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None, retry_s: float):
        import boto3
        from botocore.config import Config

        self.attempts = retry_attempts(retry_s)
        # endpoint_url=None lets botocore apply AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL itself
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url or None,
            config=Config(retries={"total_max_attempts": self.attempts, "mode": "standard"},
                          connect_timeout=2, read_timeout=20))
        self.client.meta.events.register("needs-retry.s3", self._log_retry)
        self.bucket, self.prefix, self.retry_s = bucket, prefix, retry_s
        self.endpoint = self.client.meta.endpoint_url
        self._enforces: bool | None = None  # `enforces_conditions`, once known
        # fail fast on a missing bucket / bad credentials (listing is needed by readers anyway)
        self._call("list", "", lambda: self.client.list_objects_v2(Bucket=bucket, Prefix=self._full(""), MaxKeys=1))

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _log_retry(self, attempts: int, response: Any, caught_exception: Exception | None, operation: Any,
                   request_dict: dict[str, Any], **_: Any) -> None:
        """needs-retry hook: a line for each failed attempt that botocore's standard mode retries
        (botocore's own handler decides and waits; this one only tells)."""
        from botocore.retries.standard import RetryContext, ThrottledRetryableChecker, TransientRetryableChecker

        http, parsed = response if response is not None else (None, None)
        if caught_exception is None and http is not None and http.status_code < 400:
            return  # the common case, answered before any work
        context = RetryContext(attempt_number=attempts, operation_model=operation, http_response=http,
                               parsed_response=parsed, caught_exception=caught_exception,
                               request_context=request_dict.get("context", {}))
        transient = TransientRetryableChecker().is_retryable(context) or ThrottledRetryableChecker().is_retryable(context)
        if transient and attempts < self.attempts:
            reason = type(caught_exception).__name__ if caught_exception else f"{http.status_code} {context.get_error_code()}"
            log.warning(f"store: S3 {operation.name} on s3://{self.bucket} at {self.endpoint} failed ({reason});"
                        f" retry {attempts} of {self.attempts - 1} (botocore standard mode, backoff up to"
                        f" {MAX_BACKOFF_S:g} s)")

    def _call(self, op: str, key: str, fn: Callable[[], Any], expect: dict[str, Any] | None = None) -> Any:
        """`fn()` (botocore retries transient errors itself). An error whose code or HTTP status is in
        `expect` returns `expect[...]`; any other error raises StoreError naming the operation, the
        object and the endpoint."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except (ClientError, BotoCoreError) as e:
            code, status = _error_code(e)
            if expect is not None and (code in expect or str(status) in expect):
                return expect.get(code, expect.get(str(status)))
            where = f"s3://{self.bucket}/{self._full(key)} at {self.endpoint}"
            if isinstance(e, ClientError) and not (status >= 500 or status == 429):
                hint = {"NoSuchBucket": "no such bucket", "AccessDenied": "access denied",
                        "InvalidAccessKeyId": "unknown access key", "SignatureDoesNotMatch": "bad secret key",
                        "404": "not found (no such bucket?)", "403": "forbidden (credentials?)"}.get(code, code)
                raise StoreError(f"S3 {op} {where}: {hint} ({status} {code}: "
                                 f"{e.response.get('Error', {}).get('Message', '')})") from e
            reason = f"{status} {code}" if isinstance(e, ClientError) else f"{type(e).__name__}: {e}"
            raise StoreError(f"S3 {op} {where}: still failing after {self.attempts} attempts"
                             f" (store.retry_s={self.retry_s:g}): {reason}") from e

    def enforces_conditions(self) -> bool:
        """Whether this server answers a second `If-None-Match: *` PUT of a key with 412, asked once
        (two PUTs and a DELETE of a probe object under `_pgen/`) before the first write-once PUT."""
        if self._enforces is None:
            probe = self._full(f"_pgen/conditional-write-probe-{uuid.uuid4().hex}")
            def put() -> bool:
                self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"", IfNoneMatch="*")
                return False  # when it is the second PUT: it overwrote, so the condition is ignored

            self._call("put", probe, put, expect={"PreconditionFailed": False, "412": False})  # 412: a retry found it
            self._enforces = self._call("put", probe, put, expect={"PreconditionFailed": True, "412": True})
            try:
                self.client.delete_object(Bucket=self.bucket, Key=probe)
            except Exception:  # noqa: BLE001 - a probe left behind is harmless (readers never list _pgen/)
                pass
            if not self._enforces:
                log.warning(f"store: {self.endpoint} ignores If-None-Match (overwrote a write-once object):"
                            " pgen checks with a HEAD before each write-once PUT instead; two writers of the"
                            " same key at the same instant are not kept apart on such a server")
        return self._enforces

    def put_once(self, key: str, data: bytes) -> bool:
        if not self.enforces_conditions() and self.exists(key):  # never overwrite on a server that ignores it
            return False

        def put() -> bool:
            self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data, IfNoneMatch="*")
            return True

        # 412: the key exists (also when an earlier attempt of this very call landed); 409: a concurrent
        # conditional write of the same key is in progress, so it will exist
        return self._call("put", key, put, expect={"PreconditionFailed": False, "412": False,
                                                   "ConditionalRequestConflict": False, "409": False})

    def put_pointer(self, key: str, data: bytes) -> None:
        self._call("put", key, lambda: self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data))

    def get_pointer(self, key: str) -> tuple[bytes | None, str | None]:
        def get() -> tuple[bytes, str]:
            reply = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
            return reply["Body"].read(), reply["ETag"]

        found = self._call("get", key, get, expect={"NoSuchKey": _MISSING})
        return (None, None) if found is _MISSING else found

    def put_pointer_if(self, key: str, data: bytes, tag: str | None) -> bool:
        condition = {"IfNoneMatch": "*"} if tag is None else {"IfMatch": tag}

        def put() -> bool:
            self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data, **condition)
            return True

        return self._call("put", key, put, expect={"PreconditionFailed": False, "412": False, "NoSuchKey": False,
                                                   "ConditionalRequestConflict": False, "409": False})

    def get(self, key: str) -> bytes:
        def get() -> bytes:  # reading the body inside the retried call: a cut stream is retried too
            return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()

        data = self._call("get", key, get, expect={"NoSuchKey": _MISSING})
        if data is _MISSING:
            raise KeyError(key)
        return data

    def exists(self, key: str) -> bool:
        def head() -> bool:
            self.client.head_object(Bucket=self.bucket, Key=self._full(key))
            return True

        return self._call("head", key, head, expect={"404": False, "NoSuchKey": False})

    def list(self, prefix: str) -> list[str]:
        strip = len(self._full(""))

        def list_all() -> list[str]:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._full(prefix))
            return [obj["Key"][strip:] for page in pages for obj in page.get("Contents", [])]

        return sorted(self._call("list", prefix, list_all))


# --- the store ------------------------------------------------------------------------------------

class CheckpointStore:
    """Write-once objects and checkpoint records under a local folder or an S3 bucket/prefix."""

    def __init__(self, uri: str, endpoint_url: str | None = None, retry_s: float = 120.0):
        """Open the store at `uri`: a local path, `file:///abs/path` or `s3://bucket[/prefix]`.

        `endpoint_url` (S3 only) overrides `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`; transient S3
        errors are retried for `retry_s` seconds. Raises StoreError on a bad URI or, for S3, a
        missing bucket or refused credentials.
        """
        scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", uri or "")
        forms = "a local path, file:///abs/path or s3://bucket/prefix"
        if not uri:
            raise StoreError(f"empty store URI; use {forms}")
        if scheme is None:
            self.uri = str(Path(uri).expanduser().resolve())
            self._backend: _LocalBackend | _S3Backend = _LocalBackend(Path(self.uri))
        elif scheme[1] == "file":
            parsed = urlparse(uri)
            if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
                raise StoreError(f"bad file URI {uri!r}: use file:///abs/path")
            self.uri = uri
            self._backend = _LocalBackend(Path(unquote(parsed.path)))
        elif scheme[1] == "s3":
            parsed = urlparse(uri)
            if not parsed.netloc:
                raise StoreError(f"bad S3 URI {uri!r}: no bucket; use s3://bucket/prefix")
            self.uri = uri
            self._backend = _S3Backend(parsed.netloc, parsed.path.strip("/"), endpoint_url, retry_s)
        else:
            raise StoreError(f"unsupported store URI {uri!r} (scheme {scheme[1]}://); use {forms}")

    # --- objects -----------------------------------------------------------------------------------

    def put_once(self, key: str, data: bytes) -> bool:
        """Write `key` if it does not exist: True if written, False if it already existed (unchanged)."""
        return self._backend.put_once(_check_key(key), data)

    def put_pointer(self, key: str, data: bytes) -> None:
        """Write or overwrite the mutable pointer object `key` (whole or nothing)."""
        self._backend.put_pointer(_check_key(key), data)

    def advance_pointer(self, key: str, value: str, rank: Callable[[str], Any]) -> bool:
        """Point `key` at `value` unless it already holds a value of equal or higher `rank`: a
        compare-and-swap loop (S3 `If-Match` on the ETag read; locally a lock file), so concurrent
        writers never move it backwards where the store enforces conditions. Returns whether it
        moved. On a store that ignores them, readers must not trust the pointer alone (see
        `pgen.generator.versions`)."""
        key = _check_key(key)
        while True:
            current, tag = self._backend.get_pointer(key)
            if current is not None and rank(current.decode().strip()) >= rank(value):
                return False
            if self._backend.put_pointer_if(key, value.encode(), tag):
                return True

    def get(self, key: str) -> bytes:
        """The bytes of `key`; KeyError if it does not exist."""
        return self._backend.get(_check_key(key))

    def exists(self, key: str) -> bool:
        """Whether object `key` exists."""
        return self._backend.exists(_check_key(key))

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys that start with `prefix` (a plain string prefix, not only whole folders)."""
        return self._backend.list(prefix)

    # --- checkpoint records ------------------------------------------------------------------------

    def write_part(self, records: list[dict], env_key: str, group: str, arch: str, run_id: str, seq: int) -> bool:
        """Write `records` as one zstd Parquet part at `part_key(...)`, write-once.

        Returns `put_once`'s result (False: the part already existed, e.g. a retry after a crash).
        Every record must carry every RECORD_SCHEMA field and the partition values given here.
        """
        key = part_key(env_key, group, arch, run_id, seq)
        for r in records:
            missing = set(RECORD_SCHEMA.names) - set(r)
            if missing:
                raise ValueError(f"record lacks fields {sorted(missing)}")
            if (r["env_key"], r["group"], r["arch"], r["run_id"]) != (env_key, group, arch, run_id):
                raise ValueError(f"record of {r['env_key']}/{r['group']}/{r['arch']}/{r['run_id']} written to {key}")
        params = [np.asarray(r["params"], dtype=np.float32).ravel() for r in records]
        offsets = np.cumsum([0] + [p.size for p in params], dtype=np.int32)
        values = np.concatenate(params) if params else np.zeros(0, np.float32)
        columns = [pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)) if f.name == "params"
                   else pa.array([r[f.name] for r in records], type=f.type) for f in RECORD_SCHEMA]
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_arrays(columns, schema=RECORD_SCHEMA), buf, compression="zstd",
                       use_dictionary=[f.name for f in RECORD_SCHEMA if f.type == pa.string()])
        return self.put_once(key, buf.getvalue())

    def next_part_seq(self, env_key: str, group: str, arch: str, run_id: str) -> int:
        """1 + the highest part sequence number of this run's slice, 0 if it has none."""
        folder = part_key(env_key, group, arch, run_id, 0).rpartition("/")[0]
        seqs = [int(m[5]) for k in self.list(folder + "/") if (m := PART_RE.fullmatch(k))]
        return max(seqs, default=-1) + 1

    def read_records(self, env_key: str | None = None, group: str | None = None, arch: str | None = None,
                     run_id: str | None = None, columns: list[str] | None = None) -> ReadResult:
        """All verified checkpoint rows matching the given partitions (None = any), as one table.

        `columns` selects record fields (default all, in RECORD_SCHEMA order). Rows are checked
        for a finite `return_mean`; when `params` is read, also for length == `num_params`, finite
        values and the checksum. Bad rows and unreadable parts are skipped and counted.
        """
        columns = list(RECORD_SCHEMA.names) if columns is None else list(columns)
        unknown = set(columns) - set(RECORD_SCHEMA.names)
        if unknown:
            raise ValueError(f"unknown record columns {sorted(unknown)}; known: {RECORD_SCHEMA.names}")
        wanted = (env_key, group, arch, run_id)
        prefix = "checkpoints/"
        for name, value in zip(PARTITIONS, wanted):  # the longest fully known key prefix
            if value is None:
                break
            prefix += f"{name}={value}/"
        keys = [k for k in self.list(prefix)
                if (m := PART_RE.fullmatch(k)) and all(w is None or w == v for w, v in zip(wanted, m.groups()))]
        check = ["return_mean"] + (["num_params", "params", "checksum"] if "params" in columns else [])
        read_cols = [n for n in RECORD_SCHEMA.names if n in columns or n in check]
        schema = pa.schema([RECORD_SCHEMA.field(n) for n in columns])
        tables, bad_rows, bad_parts = [], 0, []
        with ThreadPoolExecutor(READ_THREADS) as pool:
            for start in range(0, len(keys), 4 * READ_THREADS):  # bounded number of raw parts in memory
                batch = keys[start:start + 4 * READ_THREADS]
                for key, data in zip(batch, pool.map(self._get_or_none, batch)):
                    table, reason = _read_part(data, read_cols)
                    if table is None:
                        bad_parts.append((key, reason))
                        continue
                    good = _good_rows(table)
                    if not good.all():
                        bad_rows += len(good) - int(np.count_nonzero(good))
                        table = table.filter(pa.array(good))
                    tables.append(table.select(columns))
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        return ReadResult(table=table, rows=table.num_rows, bad_rows=bad_rows, bad_parts=bad_parts)

    def _get_or_none(self, key: str) -> bytes | None:
        try:
            return self.get(key)
        except KeyError:
            return None  # vanished between list and get


def _read_part(data: bytes | None, columns: list[str]) -> tuple[pa.Table | None, str]:
    """The part's `columns`, or (None, why not) if it is missing, not Parquet or of another schema."""
    if data is None:
        return None, "missing (deleted while reading)"
    try:
        part = pq.ParquetFile(io.BytesIO(data))
        if not part.schema_arrow.equals(RECORD_SCHEMA):
            found = {f.name: f.type for f in part.schema_arrow}
            diff = [f"{f.name}: {found.get(f.name, 'missing')}" for f in RECORD_SCHEMA if found.get(f.name) != f.type]
            extra = [n for n in found if n not in RECORD_SCHEMA.names]
            return None, f"wrong schema: {', '.join(diff + [f'{n}: unexpected' for n in extra]) or 'field order'}"
        return part.read(columns=columns), ""
    except (pa.ArrowException, OSError, ValueError) as e:
        return None, f"unreadable: {type(e).__name__}: {e}"


def _good_rows(table: pa.Table) -> np.ndarray:
    """Boolean mask of rows that pass verification (see `read_records`)."""
    returns = table["return_mean"].to_numpy(zero_copy_only=False)
    good = np.isfinite(returns.astype(np.float64))
    if "params" not in table.column_names:
        return good
    params = table["params"].combine_chunks()
    offsets = params.offsets.to_numpy()
    values = params.values.to_numpy(zero_copy_only=False).astype("<f4", copy=False)  # null values -> NaN
    lengths = table["num_params"].to_numpy(zero_copy_only=False)
    valid = pc.and_(pc.is_valid(params), pc.is_valid(table["checksum"].combine_chunks())).to_numpy(zero_copy_only=False)
    checksums = table["checksum"].to_pylist()
    for i in range(table.num_rows):
        row = values[offsets[i]:offsets[i + 1]]
        good[i] &= bool(valid[i]) and row.size == lengths[i] and bool(np.isfinite(row).all()) \
            and params_checksum(row) == checksums[i]
    return good


def s3_endpoint(endpoint_url: str | None = None) -> str | None:
    """The S3 endpoint a store uses: `endpoint_url`, else `AWS_ENDPOINT_URL_S3`, else
    `AWS_ENDPOINT_URL`, else None (AWS itself), the order botocore applies."""
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def open_store(cfg: StoreConfig) -> CheckpointStore:
    """The store of a command's `store` config (StoreError on a bad URI, missing bucket, ...)."""
    return CheckpointStore(cfg.uri, endpoint_url=cfg.endpoint_url, retry_s=cfg.retry_s)


def portable_store_config(cfg: StoreConfig) -> dict[str, Any]:
    """`cfg` as a plain dict for Ray actors and replicas, which may run on other nodes: the URI made
    absolute (the store is opened, so a bad one fails here) and the S3 endpoint spelled out, since
    other processes do not see this one's environment."""
    return {"uri": open_store(cfg).uri, "endpoint_url": s3_endpoint(cfg.endpoint_url), "retry_s": cfg.retry_s}
