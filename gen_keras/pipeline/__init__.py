"""TFX-style pipeline: ExampleGen -> Trainer(run_fn) -> Evaluator(blessing) -> Pusher.

Each component is a function with typed input and output artifacts (a URI plus
properties) and execution properties; `runner.run_pipeline` records every execution in a
SQLite metadata store (`metadata.MetadataStore`) and reuses a component's outputs when its
inputs and properties did not change. The Trainer calls a module's `run_fn(fn_args)` with
TFX's `FnArgs` field names, so `gen_keras.pipeline.trainer_module` also runs under real
TFX where it is installed.
"""
