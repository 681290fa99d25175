"""The pipeline's stages: one module per stage, each ending in a ``STAGE = Stage(...)`` declaration.

:mod:`vegan.stages.registry` lists them; :mod:`vegan.stages.context` is the
``Run`` object their functions receive. Adding a stage is one new module here
and one line in the registry (plus its config section in ``PipelineConfig``,
which the registry checks).
"""
