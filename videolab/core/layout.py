"""Names inside checkpoint folders that the models use themselves (a language model saves and reads its tokenizer
there). Kept apart from ``checkpoints.py`` so the model code, which export folders carry (``export/remote_code.py``),
does not depend on the checkpoint machinery (accelerate, safetensors)."""
from __future__ import annotations

TOKENIZER_DIR = "tokenizer"  # a language model's tokenizer / processor inside a checkpoint folder
