"""videolab: the parts behind the repo's scripts (``main.py``, ``inference.py``, ...).

Layers, lowest first; a module imports only from its own layer's lower modules and from layers below it::

    core        errors, settings (plain data), registry, files (atomic writes), hub, checkpoints, runs, runtime
    data        datasets, sampling, transforms, decoding              (core only; never models)
    models      backbones, fusion, language models, composed models   (core only; never data)
    evaluation  metrics, caption metrics, reports, plots              (core only)
    tasks       classification, captioning, pretraining: loss, evaluation, report   (core, models, evaluation)
    export      Hugging Face folders                                   (core, models)
    cli         the one command-line parser (choices from the registries; imports no torch)

The top-level files assemble these parts (``build_model.py``, ``VLoader.py``, ``train_code.py``) and run them
(``main.py``, ``inference.py``, ``dummy_data.py``, ``create_dummy.py``, ``apps/``); nothing here imports them.
``tests/test_layers.py`` enforces the rules.
"""
