"""The ``vegan`` command (``python -m cli``): the top layer, above ``flows`` and the library.

It lives outside ``vegan/`` so that the library never imports the orchestration:
``vegan run`` goes through the Prefect flow, ``vegan run --no-prefect`` calls
:func:`vegan.pipeline.run_pipeline` directly.
"""
