"""Networks and how they are built from names: backbones, fusion, language models, composed models. Never imports
data."""
