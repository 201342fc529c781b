"""TFX's Trainer contract: `run_fn(fn_args)` with `tfx.components.FnArgs` field names."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class FnArgs:
    """The fields of tfx.components.FnArgs (TFX 1.x), so one run_fn serves both."""

    working_dir: str | None = None
    train_files: list[str] = dataclasses.field(default_factory=list)
    eval_files: list[str] = dataclasses.field(default_factory=list)
    train_steps: int | None = None
    eval_steps: int | None = None
    schema_path: str | None = None
    schema_file: str | None = None
    transform_graph_path: str | None = None
    transform_output: str | None = None
    data_accessor: Any = None
    serving_model_dir: str | None = None
    eval_model_dir: str | None = None
    model_run_dir: str | None = None
    base_model: str | None = None
    hyperparameters: dict | None = None
    custom_config: dict | None = None
