"""What a run learns and how it is judged: classification, captioning, self-supervised pretraining."""
