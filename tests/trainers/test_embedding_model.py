"""Method.embedding_model: what `--embedding backbone | projection` embeds with."""
from __future__ import annotations

import pytest
import torch

from groundfloor.errors import UsageError
from tests.trainers.tiny import GLOBAL_PX, TINY_CONFIGS
from trainers.methods import build_method
from trainers.methods.base import EMBEDDINGS

# The methods whose loss compares views after `self.projector` on the evaluated backbone.
WITH_HEAD = {"simclr", "moco_v2", "moco_v3", "moco_v3_vit", "swav", "byol", "simsiam", "barlow_twins", "vicreg",
             "moby", "moby_swin"}


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_projection_is_the_backbone_then_the_loss_side_projector(name):
    method = build_method(TINY_CONFIGS[name], seed=0).eval()
    images = torch.randn(3, 3, GLOBAL_PX, GLOBAL_PX, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(method.embedding_model("backbone")(images), method.eval_backbone(images),
                                   rtol=0, atol=0)
    if name not in WITH_HEAD:
        with pytest.raises(UsageError, match="no projection head.*--embedding backbone"):
            method.embedding_model("projection")
        return
    with torch.no_grad():
        embedded = method.embedding_model("projection")(images)
        expected = method.projector(method.backbone(images))
    assert method.projection_head is method.projector
    assert embedded.shape == (3, TINY_CONFIGS[name].get("projection_dim", expected.shape[1]))
    torch.testing.assert_close(embedded, expected, rtol=0, atol=0)


def test_dino_has_no_projection_embedding_because_it_evaluates_the_teacher():
    method = build_method(TINY_CONFIGS["dino"], seed=0)
    assert method.eval_backbone is method.teacher_backbone and method.projection_head is None


def test_an_unknown_embedding_is_a_usage_error():
    method = build_method(TINY_CONFIGS["simclr"], seed=0)
    with pytest.raises(UsageError, match="'head'.*backbone, projection"):
        method.embedding_model("head")


def test_the_command_line_offers_exactly_the_methods_embeddings():
    from viewstream.commands.model_inputs import EMBEDDINGS as CLI_EMBEDDINGS

    assert CLI_EMBEDDINGS == EMBEDDINGS


@pytest.mark.parametrize("name, nhwc", [("simclr", True), ("moco_v3_vit", False)])
def test_evaluation_models_are_laid_out_as_trained_and_fed_to_match(name, nhwc):
    """Conv nets evaluate NHWC, as the Trainer trains them (`wants_channels_last`), and feature
    extraction feeds them NHWC; the features equal the NCHW model's."""
    from evaluation.features import extract_features, input_memory_format
    from trainers.checkpoint import evaluation_model

    reference = build_method(TINY_CONFIGS[name], seed=0).eval_backbone.eval()
    model = evaluation_model(build_method(TINY_CONFIGS[name], seed=0))
    expected = torch.channels_last if nhwc else torch.contiguous_format
    assert input_memory_format(model) == expected and input_memory_format(reference) == torch.contiguous_format
    images = torch.randn(5, 3, GLOBAL_PX, GLOBAL_PX, generator=torch.Generator().manual_seed(2))
    got = extract_features(model, [images]).features
    torch.testing.assert_close(got, extract_features(reference, [images]).features, rtol=1e-5, atol=1e-6)
