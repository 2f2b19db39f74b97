"""Text tower trimmed to the batch's last EOT: same pooled features and gradients, only where that holds, in training and inference."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pipelines.infer.device import inference_precision
from pipelines.infer.text import encode_texts
from pipelines.models.adapt import AdaptConfig, clip_of, prepare
from pipelines.models.text_trim import can_trim_text, mask_is_causal, trimmed_text

CAPTIONS = ["a satellite image of a river bend", "dense urban blocks", "farmland", "a forest road"]


def text_lengths_seen(clip: nn.Module) -> tuple[list[int], object]:
    """Sequence lengths the text transformer runs on, recorded by a forward hook."""
    seen: list[int] = []
    handle = clip.transformer.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[1]))
    return seen, handle


def features_and_grads(model: nn.Module, texts: torch.Tensor, trim: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with trimmed_text(clip_of(model), trim):
        features = model.encode_text(texts)
    (features * torch.linspace(-1, 1, features.shape[-1])).sum().backward()
    return features.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_trimmed_text_tower_equals_the_full_length_in_features_and_gradients(tiny, mode) -> None:
    model = copy.deepcopy(tiny.model)
    if mode == "lora":
        model = prepare(model, AdaptConfig(mode="lora", lora_forward="merged"))
        with torch.no_grad():  # B starts at zero; make the update and A's gradient visible
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    model.train()
    clip = clip_of(model)
    assert can_trim_text(clip)
    texts = tiny.tokenizer(CAPTIONS)
    last_eot = int(texts.argmax(dim=-1).max())
    assert last_eot + 1 < texts.shape[1]  # the captions leave padding to cut

    seen, handle = text_lengths_seen(clip)
    full, full_grads = features_and_grads(model, texts, trim=False)
    trimmed, trimmed_grads = features_and_grads(model, texts, trim=True)
    handle.remove()
    assert seen == [texts.shape[1], last_eot + 1]
    assert "encode_text" not in vars(clip)  # the override ends with the context
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=0)
    assert trimmed_grads.keys() == full_grads.keys() and len(full_grads) > 0
    for name, g in full_grads.items():
        # float rounding, relative to the tensor's scale (sums over the batch reach |g| ~ 100)
        assert (trimmed_grads[name] - g).abs().max() <= 1e-5 * max(1.0, g.abs().max().item()), name
    # the clip forward (what ClipTask calls) goes through the override too, also via peft
    with trimmed_text(clip), torch.no_grad():
        seen, handle = text_lengths_seen(clip)
        out = model(torch.randn(len(CAPTIONS), 3, 64, 64), texts)
        handle.remove()
    assert seen == [last_eot + 1]
    torch.testing.assert_close(out[1], nn.functional.normalize(full, dim=-1), atol=1e-5, rtol=0)


def test_trimming_is_refused_where_later_tokens_reach_the_pooled_feature(tiny) -> None:
    texts = tiny.tokenizer(CAPTIONS)
    model = copy.deepcopy(tiny.model).eval()
    assert mask_is_causal(model.attn_mask) and mask_is_causal(model.attn_mask.isinf())  # float and bool forms

    bidirectional = copy.deepcopy(model)
    bidirectional.attn_mask = torch.zeros_like(model.attn_mask)
    assert not mask_is_causal(bidirectional.attn_mask) and not can_trim_text(bidirectional)
    with torch.no_grad():
        full = bidirectional.encode_text(texts)
        with trimmed_text(bidirectional):  # forced: the padding it cuts did reach the EOT token
            forced = bidirectional.encode_text(texts)
        with trimmed_text(bidirectional, can_trim_text(bidirectional)):  # as ClipTask calls it: the fallback
            fallback = bidirectional.encode_text(texts)
    assert (forced - full).abs().max() > 1e-3
    assert torch.equal(fallback, full)

    last_pooled = copy.deepcopy(model)
    last_pooled.text_pool_type = "last"
    assert not can_trim_text(last_pooled)
    no_mask = copy.deepcopy(model)
    no_mask.attn_mask = None
    assert not can_trim_text(no_mask)
    wrapped = copy.deepcopy(model)  # a caller's own encode_text on the instance is the one encode_texts calls
    calls: list[int] = []
    wrapped.encode_text = lambda tokens, normalize=False: calls.append(len(tokens)) or model.encode_text(tokens, normalize)
    assert not can_trim_text(wrapped)
    with torch.no_grad():
        torch.testing.assert_close(encode_texts(wrapped, tiny.tokenizer, CAPTIONS, "cpu", batch_size=8),
                                   nn.functional.normalize(model.encode_text(texts, normalize=True), dim=-1))
    assert calls == [len(CAPTIONS)]
    assert not can_trim_text(nn.Linear(2, 2))


def test_clip_task_trims_an_open_clip_text_tower(tiny, tmp_path) -> None:
    from train_fixtures import FAMILIES

    from pipelines.train.clip_task import ClipTask, ClipTrainConfig
    from pipelines.train.distributed import DistInfo

    shard = FAMILIES["clip"].write_data(tmp_path / "data") / "train-000000.tar"
    texts = tiny.tokenizer(CAPTIONS)
    images = torch.randn(len(CAPTIONS), 3, 64, 64)
    losses = {}
    for trim in (True, False):
        model = copy.deepcopy(tiny.model)
        if not trim:  # a bidirectional text tower: ClipTask keeps the full length
            model.attn_mask = torch.zeros_like(model.attn_mask)
        task = ClipTask(model, tiny.preprocess_train, tiny.tokenizer, [str(shard)], ClipTrainConfig(batch_size=4), DistInfo())
        assert task.trim_text is trim
        seen, handle = text_lengths_seen(model)
        losses[trim] = task.training_forward((images, texts), None)["contrastive"]
        handle.remove()
        assert seen == [int(texts.argmax(dim=-1).max()) + 1 if trim else texts.shape[1]]
        assert "encode_text" not in vars(model)
    assert torch.isfinite(losses[True]) and torch.isfinite(losses[False])


def stock_embeddings(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's own encode_text over the whole context, normalised as encode_texts returns it.

    Under `inference_precision` in fp32, as encode_texts runs it (on an AMD CPU, oneDNN's kernels: tests/test_infer_onednn.py).
    """
    with torch.no_grad(), inference_precision(torch.device("cpu"), "fp32"):
        return nn.functional.normalize(model.encode_text(tokens, normalize=True).float(), dim=-1)


def test_encode_texts_batches_texts_of_like_length_each_up_to_its_last_eot_in_order(tiny, monkeypatch) -> None:
    from pipelines.infer import text

    model = copy.deepcopy(tiny.model).eval()
    context = int(model.attn_mask.shape[0])
    # one text that fills the whole context, among short ones: in the given order it would set the first batch's length
    texts = ["tissue " * (2 * context), CAPTIONS[0], "a", CAPTIONS[1], "fat", CAPTIONS[2], CAPTIONS[3]]
    tokens = tiny.tokenizer(texts)
    lengths = (tokens.argmax(dim=-1) + 1).tolist()
    stock = stock_embeddings(model, tokens)
    for sorted_batches, groups in ((text.SORTED_BATCHES, [sorted(lengths)]), (1, [lengths[i:i + 3] for i in range(0, 7, 3)])):
        monkeypatch.setattr(text, "SORTED_BATCHES", sorted_batches)  # texts sorted together: all, or a batch's worth
        seen, handle = text_lengths_seen(model)
        got = encode_texts(model, tiny.tokenizer, texts, "cpu", batch_size=3)
        handle.remove()
        assert seen == [max(sorted(group)[i:i + 3]) for group in groups for i in range(0, len(group), 3)]
        assert got.dtype == torch.float32 and got.shape == (len(texts), model.text_projection.shape[1])
        torch.testing.assert_close(got, stock, atol=1e-5, rtol=0)  # each text's embedding, in the texts' order
    assert seen[0] == context and min(seen) < context
    assert "encode_text" not in vars(model)  # the model is left as it was
    with pytest.raises(ValueError, match="no texts"):
        encode_texts(model, tiny.tokenizer, [], "cpu", batch_size=3)


def test_encode_texts_keeps_the_full_length_for_a_tower_it_cannot_trim(tiny) -> None:
    model = copy.deepcopy(tiny.model).eval()
    model.attn_mask = torch.zeros_like(model.attn_mask)  # bidirectional: padding reaches the EOT token
    tokens = tiny.tokenizer(CAPTIONS)
    seen, handle = text_lengths_seen(model)
    got = encode_texts(model, tiny.tokenizer, CAPTIONS, "cpu", batch_size=8)
    handle.remove()
    assert seen == [tokens.shape[1]]
    assert torch.equal(got, stock_embeddings(model, tokens))


def test_evaluation_and_inference_embed_texts_trimmed(tiny) -> None:
    from pipelines.evaluate.zero_shot import build_zero_shot_classifier
    from pipelines.infer.clip import ClipEncoder

    model = copy.deepcopy(tiny.model).eval()
    context = int(model.attn_mask.shape[0])
    encoder = ClipEncoder(model, tiny.preprocess_val, tiny.tokenizer, torch.device("cpu"), "weights", precision="fp32")
    seen, handle = text_lengths_seen(model)
    query = encoder.embed_texts([CAPTIONS[0]])
    weights = build_zero_shot_classifier(model, tiny.tokenizer, ["fat", "tumour"], ["an image of {c}.", "{c}"])
    handle.remove()
    assert len(seen) == 2 and max(seen) < context
    stock = stock_embeddings(model, tiny.tokenizer([CAPTIONS[0]])).numpy()
    assert abs(query - stock).max() <= 1e-5
    prompts = stock_embeddings(model, tiny.tokenizer(["an image of fat.", "fat", "an image of tumour.", "tumour"]))
    classes = nn.functional.normalize(prompts.view(2, 2, -1).mean(dim=1), dim=-1).T
    torch.testing.assert_close(weights, classes, atol=1e-5, rtol=0)
