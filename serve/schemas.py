"""The Serve API's requests, validated at the edge (FastAPI / pydantic models), and its JSON errors.

Every bad request gets a 4xx with a JSON body `{"error": "<what is wrong>", "detail": ...}` (docs/serve.md).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from pgen.config import DEFAULT_TEMPERATURE
from pgen.dataset.seed_runs import RUN_ID_RE
from pgen.generator.family.archgraph import MAX_DEPTH, MAX_WIDTH

MODEL_ID = r"^[A-Za-z0-9][A-Za-z0-9._=-]*(@v[0-9]{4,})?$"
SEED_MAX = 2**63 - 1

FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class ArchFields(BaseModel):
    """The architecture asked of an arch-family generator (unset: the generator's default)."""

    arch: Optional[str] = Field(None, max_length=200, description="an arch key, e.g. mlp-18x96x96x5-tanh")
    hidden: Optional[list[Annotated[int, Field(ge=1, le=MAX_WIDTH, strict=True)]]] = Field(
        None, min_length=1, max_length=MAX_DEPTH, description=f"hidden sizes (each ≤ {MAX_WIDTH}, ≤ {MAX_DEPTH} layers)")
    kind: Optional[Literal["mlp", "gru"]] = None
    activation: Optional[Literal["tanh", "relu"]] = None

    def arch_request(self) -> dict[str, Any]:
        return {"arch": self.arch, "hidden": self.hidden, "kind": self.kind, "activation": self.activation}


class GenerateRequest(ArchFields):
    """POST /v1/generate: `num` policies for `target_return` from generator `model`."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(max_length=200, pattern=MODEL_ID, description="`name` (its LATEST) or `name@vNNNN`")
    target_return: FiniteFloat = Field(description="the group return the policies should achieve")
    num: int = Field(1, ge=1, strict=True, description="policies to generate (at most serve.max_num)")
    seed: Optional[int] = Field(None, ge=0, le=SEED_MAX, strict=True, description="default: a random seed, returned")
    temperature: float = Field(DEFAULT_TEMPERATURE, ge=0.0, le=10.0, strict=True, allow_inf_nan=False,
                               description="generation noise ε ~ N(0, temperature² I)")
    format: Literal["json", "safetensors"] = Field("json", description="safetensors: the policy file of docs/design.md")


class SeedRequest(ArchFields):
    """POST /v1/seed: write `population_size` generated policies as seed checkpoints of a new run."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(max_length=200, pattern=MODEL_ID)
    target_return: FiniteFloat
    population_size: int = Field(ge=1, strict=True, description="seed policies (at most serve.max_population)")
    run_id: Optional[str] = Field(None, pattern=RUN_ID_RE.pattern)
    seed: Optional[int] = Field(None, ge=0, le=SEED_MAX, strict=True)
    temperature: float = Field(DEFAULT_TEMPERATURE, ge=0.0, le=10.0, strict=True, allow_inf_nan=False)


def error(status: int, message: str, headers: dict[str, str] | None = None, **detail: Any) -> JSONResponse:
    return JSONResponse({"error": message, **detail}, status_code=status, headers=headers)



def error_summary(errors: list[dict[str, Any]], skip: int = 1) -> tuple[str, list[dict[str, Any]]]:
    """A one-line summary and a JSON-able list of pydantic errors (never the input: it may not even be
    JSON-serialisable, NaN, and it is the caller's anyway)."""
    detail = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in errors]
    return "; ".join(f"{'.'.join(d['loc'][skip:]) or 'body'}: {d['msg']}" for d in detail), detail
