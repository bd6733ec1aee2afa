"""groklab's training engine: a pure PyTorch library (no api/ or worker/ imports).

`engine.spec` holds the pydantic specs and imports no torch; `engine.train.train_run` trains one
run and `engine.train.train_ensemble` several as one batched computation, reporting every metric
point to a `engine.sink.MetricSink`.
"""
