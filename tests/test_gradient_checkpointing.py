"""--gradient_checkpointing (issue 23): the same loss and gradients as without it, for every backbone that has the
switch (transformers video models, timm) and with LoRA; refused where nothing supports it."""
import pytest
import torch

from build_model import build_model
from videolab.core.errors import UsageError
from videolab.core.settings import Settings
from videolab.models.adapt import checkpoint_activations, enable_gradient_checkpointing

FRAMES, SIZE, CLASSES = 4, 32, 5


def tiny(**kw) -> Settings:
    base = dict(model_size="tiny", num_frames=FRAMES, image_size=SIZE, fusion_depth=1, fusion_n_heads=2,
                fusion_dropout=0.0, lora_dropout=0.0, head_dropout=0.0)
    base.update(kw)
    return Settings(**base)


def loss_and_grads(cfg: Settings) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(0)
    model = build_model(cfg, CLASSES, verbose=False).model.train()
    x, y = torch.randn(3, FRAMES, 3, SIZE, SIZE), torch.tensor([0, 3, 4])
    torch.manual_seed(1)  # the same dropout masks in both runs (non-reentrant checkpointing replays the RNG)
    loss = model(pixel_values=x, labels=y).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def checkpointed_parts(model: torch.nn.Module) -> int:
    """How many transformers / timm models inside have checkpointing switched on."""
    return sum(bool(getattr(m, "is_activation_checkpointing", False) or getattr(m, "grad_checkpointing", False))
               for m in model.modules())


@pytest.mark.parametrize("name,lora", [("videomae", False), ("timesformer", False), ("vit_small_patch16_224", False),
                                       ("swin_tiny_patch4_window7_224", False), ("timesformer", True)])
def test_gradient_checkpointing_gives_the_same_gradients(name, lora):
    plain_loss, plain = loss_and_grads(tiny(vision_model=name, use_lora_vision=lora))
    cfg = tiny(vision_model=name, use_lora_vision=lora, gradient_checkpointing=True)
    ckpt_loss, ckpt = loss_and_grads(cfg)
    assert checkpointed_parts(build_model(cfg, CLASSES, verbose=False).model) >= 1
    torch.testing.assert_close(ckpt_loss, plain_loss)
    assert plain.keys() == ckpt.keys() and plain
    for key in plain:
        torch.testing.assert_close(ckpt[key], plain[key], rtol=1e-4, atol=1e-6, msg=key)


def test_checkpointing_recomputes_in_the_backward_pass():
    """Not a no-op: the backbone's blocks run again during backward (a forward hook inside a block counts the calls;
    transformers keeps the block's own hooks outside the checkpoint)."""
    calls = []
    cfg = tiny(vision_model="videomae", gradient_checkpointing=True)
    model = build_model(cfg, CLASSES, verbose=False).model.train()
    layer = model.backbone.model.encoder.layer[0].attention
    layer.register_forward_hook(lambda *args: calls.append(1))
    model(pixel_values=torch.randn(2, FRAMES, 3, SIZE, SIZE), labels=torch.tensor([0, 1])).loss.backward()
    assert len(calls) == 2  # forward + recomputation


def test_language_models_are_checkpointed_too(tiny_bert):
    cfg = tiny(vision_model="videomae", use_vlm=True, language_model=tiny_bert, gradient_checkpointing=True)
    model = build_model(cfg, CLASSES, verbose=False).model
    assert checkpointed_parts(model) == 2  # VideoMAE + BERT


def test_refused_where_nothing_supports_it():
    assert enable_gradient_checkpointing(torch.nn.Linear(2, 2)) == 0
    with pytest.raises(UsageError, match="--gradient_checkpointing True.*has no gradient checkpointing"):
        checkpoint_activations(tiny(gradient_checkpointing=True), torch.nn.Linear(2, 2), "the test module")
