"""Models in the Hugging Face format: export folders (``huggingface.py``) with their model code (``remote_code.py``)
and card (``card.py``), ONNX (``onnx.py``), upload to the Hub (``push.py``)."""
