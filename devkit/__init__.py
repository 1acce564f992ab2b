"""The development kit: what the tests, `make demo TINY=1` and the benchmarks share.

``runtime``: the embedded ComfyUI imported in-process (and the golden root); ``pack``: this pack
imported under one fixed name, whatever the checkout folder is called; ``tiny_models``,
``tiny_sd15``, ``tiny_sd15_fastcomposer``, ``anystory_tiny``, ``incontext_tiny``: tiny random-weight models with the
real architectures and key layouts; ``tiny_files``: tiny model files by models folder;
``server``: the embedded ComfyUI server with this pack and the test-only loaders.

Imported from the checkout root: the tests put it on ``sys.path`` through pytest's
``pythonpath`` setting, the scripts and benchmarks run as modules from there
(``python -m scripts.demo``, ``python -m bench.run_all``).
"""
