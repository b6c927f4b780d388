"""Resolution: a scenario becomes its model, hardware, profile, framework preset and every object
the cost model derives from them, once, in a frozen context that training, serving and the
planner share (docs/architecture.md).

- :func:`sextant.resolve.train.resolve_train` -> :class:`~sextant.resolve.train.TrainContext`
- :func:`sextant.resolve.serve.resolve_serve` -> :class:`~sextant.resolve.serve.ServeContext`
- :mod:`sextant.resolve.layout`: which parallel layouts can run a model (training and serving)
- :mod:`sextant.resolve.hardware`, :mod:`sextant.resolve.framework`: catalog, profile files, presets
"""
