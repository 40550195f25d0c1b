"""Named models (``zoo:NAME``) and synthetic graphs (``synthetic:FAMILY:...``).

Every model is built on the ``meta`` device with random weights from a transformers config
class (no hub access) or from plain torch modules in `rlplace.zoo_models`, so even a
13B-parameter model costs no memory. Example inputs are keyword inputs that make the model
compute its own training loss (``labels`` / ``target``), so a captured training graph starts
at the inputs and ends at the loss.

Specs:
    ``zoo:NAME`` or ``NAME``      a model of `ZOO` (see `list_zoo`);
    ``synthetic:FAMILY[:k=v...]`` a graph of `rlplace.synthetic` (``n``, ``seed``, ``training``
                                  and the family's own knobs).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rlplace.errors import RlplaceError

ModelAndInputs = tuple[Any, dict[str, Any]]


@dataclass(frozen=True)
class ZooEntry:
    """One named model.

    Attributes:
        family: architecture family (``gpt2``, ``llama``, ``resnet``, ``mlp`` ...).
        description: one line for listings.
        build: ``(batch_size, seq_len, image_size) -> (module, example keyword inputs)``,
            built on the meta device.
        batch_size: default batch size.
        seq_len: tokens per sample (sequence models), else None.
        image_size: pixels per side (vision models), else None.
        params: rough parameter count (within a few percent of the built model).
        slow: capturing a training graph takes more than about 10 s on a laptop core.
    """

    family: str
    description: str
    build: Callable[[int, int | None, int | None], ModelAndInputs] = field(repr=False)
    batch_size: int
    seq_len: int | None = None
    image_size: int | None = None
    params: int = 0
    slow: bool = False


@dataclass(frozen=True)
class ZooSpec:
    """A parsed model spec: ``kind`` is ``"model"`` (``name`` in `ZOO`) or ``"synthetic"``
    (``name`` a family of `rlplace.synthetic`, ``params`` its knobs as written)."""

    kind: str
    name: str
    params: Mapping[str, str] = field(default_factory=dict)


# =========================================================================== builders
def _meta() -> Any:
    import torch

    return torch.device("meta")


def _tokens(batch: int, seq: int, vocab: int) -> Any:
    import torch

    return torch.zeros(batch, seq, dtype=torch.long) % vocab


def _hf_causal_lm(config_name: str, model_name: str, **config: Any) -> Callable[[int, int | None, int | None], ModelAndInputs]:
    def build(batch: int, seq: int | None, image: int | None) -> ModelAndInputs:
        import transformers

        with _meta():
            cfg = getattr(transformers, config_name)(use_cache=False, **config)
            model = getattr(transformers, model_name)(cfg)
            # transformers infers the loss from the class name and warns for names like
            # GPT2LMHeadModel; say which loss it is.
            model.loss_type = "ForCausalLM"
            ids = _tokens(batch, seq or 128, cfg.vocab_size)
        return model, {"input_ids": ids, "labels": ids}

    return build


def _hf_masked_lm(**config: Any) -> Callable[[int, int | None, int | None], ModelAndInputs]:
    def build(batch: int, seq: int | None, image: int | None) -> ModelAndInputs:
        import transformers

        with _meta():
            cfg = transformers.BertConfig(attn_implementation="sdpa", **config)
            model = transformers.BertForMaskedLM(cfg)
            ids = _tokens(batch, seq or 128, cfg.vocab_size)
        return model, {"input_ids": ids, "labels": ids}

    return build


def _hf_t5(**config: Any) -> Callable[[int, int | None, int | None], ModelAndInputs]:
    def build(batch: int, seq: int | None, image: int | None) -> ModelAndInputs:
        import transformers

        with _meta():
            cfg = transformers.T5Config(use_cache=False, decoder_start_token_id=0, pad_token_id=0, **config)
            model = transformers.T5ForConditionalGeneration(cfg)
            ids = _tokens(batch, seq or 128, cfg.vocab_size)
        return model, {"input_ids": ids, "labels": ids}

    return build


def _hf_image(config_name: str, model_name: str, **config: Any) -> Callable[[int, int | None, int | None], ModelAndInputs]:
    def build(batch: int, seq: int | None, image: int | None) -> ModelAndInputs:
        import torch
        import transformers

        with _meta():
            cfg = getattr(transformers, config_name)(num_labels=1000, **config)
            model = getattr(transformers, model_name)(cfg)
            pixels = torch.zeros(batch, 3, image or 224, image or 224)
            labels = torch.zeros(batch, dtype=torch.long)
        return model, {"pixel_values": pixels, "labels": labels}

    return build


def _plain(factory_name: str, **kwargs: Any) -> Callable[[int, int | None, int | None], ModelAndInputs]:
    def build(batch: int, seq: int | None, image: int | None) -> ModelAndInputs:
        from rlplace import zoo_models

        with _meta():
            return getattr(zoo_models, factory_name)(batch=batch, seq_len=seq, image_size=image, **kwargs)

    return build


_LLAMA = {"attn_implementation": "sdpa"}
_GPT2 = {"attn_implementation": "sdpa"}

#: The named models. Parameter counts are those of the built models, rounded.
ZOO: dict[str, ZooEntry] = {
    # ---------------------------------------------------------------- language models
    "gpt2": ZooEntry("gpt2", "GPT-2 small, 12 layers, d=768", _hf_causal_lm("GPT2Config", "GPT2LMHeadModel", **_GPT2), 8, seq_len=1024, params=124_000_000),
    "gpt2-medium": ZooEntry(
        "gpt2",
        "GPT-2 medium, 24 layers, d=1024",
        _hf_causal_lm("GPT2Config", "GPT2LMHeadModel", n_embd=1024, n_layer=24, n_head=16, **_GPT2),
        8,
        seq_len=1024,
        params=355_000_000,
        slow=True,
    ),
    "gpt2-large": ZooEntry(
        "gpt2",
        "GPT-2 large, 36 layers, d=1280",
        _hf_causal_lm("GPT2Config", "GPT2LMHeadModel", n_embd=1280, n_layer=36, n_head=20, **_GPT2),
        4,
        seq_len=1024,
        params=774_000_000,
        slow=True,
    ),
    "gpt2-xl": ZooEntry(
        "gpt2",
        "GPT-2 XL, 48 layers, d=1600",
        _hf_causal_lm("GPT2Config", "GPT2LMHeadModel", n_embd=1600, n_layer=48, n_head=25, **_GPT2),
        2,
        seq_len=1024,
        params=1_558_000_000,
        slow=True,
    ),
    "bert-base": ZooEntry("bert", "BERT base masked LM, 12 layers, d=768", _hf_masked_lm(), 8, seq_len=512, params=110_000_000),
    "bert-large": ZooEntry(
        "bert",
        "BERT large masked LM, 24 layers, d=1024",
        _hf_masked_lm(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
        8,
        seq_len=512,
        params=336_000_000,
        slow=True,
    ),
    "t5-small": ZooEntry("t5", "T5 small encoder-decoder, 6+6 layers, d=512", _hf_t5(), 8, seq_len=512, params=60_500_000),
    "t5-base": ZooEntry(
        "t5",
        "T5 base encoder-decoder, 12+12 layers, d=768",
        _hf_t5(d_model=768, d_ff=3072, num_layers=12, num_heads=12),
        8,
        seq_len=512,
        params=223_000_000,
        slow=True,
    ),
    "llama-1b": ZooEntry(
        "llama",
        "LLaMA 3.2 1B shape: 16 layers, d=2048, GQA 32/8 heads, vocab 128k",
        _hf_causal_lm(
            "LlamaConfig",
            "LlamaForCausalLM",
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            tie_word_embeddings=True,
            rope_theta=500000.0,
            **_LLAMA,
        ),
        4,
        seq_len=2048,
        params=1_236_000_000,
        slow=True,
    ),
    "llama-7b": ZooEntry(
        "llama",
        "LLaMA 7B: 32 layers, d=4096, 32 heads",
        _hf_causal_lm(
            "LlamaConfig",
            "LlamaForCausalLM",
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32000,
            **_LLAMA,
        ),
        1,
        seq_len=2048,
        params=6_738_000_000,
        slow=True,
    ),
    "llama-13b": ZooEntry(
        "llama",
        "LLaMA 13B: 40 layers, d=5120, 40 heads",
        _hf_causal_lm(
            "LlamaConfig",
            "LlamaForCausalLM",
            hidden_size=5120,
            intermediate_size=13824,
            num_hidden_layers=40,
            num_attention_heads=40,
            num_key_value_heads=40,
            vocab_size=32000,
            **_LLAMA,
        ),
        1,
        seq_len=2048,
        params=13_016_000_000,
        slow=True,
    ),
    "mixtral-tiny": ZooEntry(
        "moe",
        "Mixtral MoE (transformers, batched_mm experts): 2 layers, d=512, 8 experts, top-2; gathers expert weights per token (1 GB tensors)",
        _hf_causal_lm(
            "MixtralConfig",
            "MixtralForCausalLM",
            hidden_size=512,
            intermediate_size=1024,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=8,
            num_local_experts=8,
            num_experts_per_tok=2,
            vocab_size=32000,
            max_position_embeddings=4096,
            experts_implementation="batched_mm",
            **_LLAMA,
        ),
        1,
        seq_len=128,
        params=60_000_000,
    ),
    "moe-gshard": ZooEntry(
        "moe",
        "GShard-style MoE transformer (plain torch): 4 layers, d=1024, 8 experts, top-2, capacity dispatch",
        _plain("moe_transformer"),
        8,
        seq_len=512,
        params=351_000_000,
    ),
    # ---------------------------------------------------------------- vision
    "vit-base": ZooEntry(
        "vit",
        "ViT-B/16 image classifier",
        _hf_image("ViTConfig", "ViTForImageClassification", attn_implementation="sdpa"),
        32,
        image_size=224,
        params=86_600_000,
    ),
    "resnet-50": ZooEntry(
        "resnet",
        "ResNet-50 (bottleneck 3-4-6-3)",
        _hf_image("ResNetConfig", "ResNetForImageClassification", depths=[3, 4, 6, 3]),
        32,
        image_size=224,
        params=25_600_000,
    ),
    "resnet-101": ZooEntry(
        "resnet",
        "ResNet-101 (bottleneck 3-4-23-3)",
        _hf_image("ResNetConfig", "ResNetForImageClassification", depths=[3, 4, 23, 3]),
        32,
        image_size=224,
        params=44_500_000,
        slow=True,
    ),
    "resnet-152": ZooEntry(
        "resnet",
        "ResNet-152 (bottleneck 3-8-36-3)",
        _hf_image("ResNetConfig", "ResNetForImageClassification", depths=[3, 8, 36, 3]),
        32,
        image_size=224,
        params=60_200_000,
        slow=True,
    ),
    "convnext-tiny": ZooEntry(
        "convnext",
        "ConvNeXt-T (3-3-9-3, 96..768 channels)",
        _hf_image("ConvNextConfig", "ConvNextForImageClassification"),
        32,
        image_size=224,
        params=28_600_000,
    ),
    "mobilenet-v2": ZooEntry(
        "mobilenet", "MobileNetV2 1.0 / 224", _hf_image("MobileNetV2Config", "MobileNetV2ForImageClassification"), 64, image_size=224, params=3_500_000
    ),
    "regnet-y-040": ZooEntry(
        "regnet",
        "RegNetY-4.0GF (2-6-12-2, group width 64)",
        _hf_image("RegNetConfig", "RegNetForImageClassification"),
        32,
        image_size=224,
        params=20_600_000,
        slow=True,
    ),
    "inception": ZooEntry(
        "inception",
        "GoogLeNet-like CNN: 9 four-branch inception blocks (plain torch)",
        _plain("inception_net"),
        32,
        image_size=224,
        params=7_300_000,
        slow=True,
    ),
    # ---------------------------------------------------------------- other
    "mlp-small": ZooEntry("mlp", "MLP tower: 4 layers of 2048 (plain torch)", _plain("mlp_tower", width=2048, depth=4), 256, params=16_800_000),
    "mlp-medium": ZooEntry("mlp", "MLP tower: 8 layers of 4096 (plain torch)", _plain("mlp_tower", width=4096, depth=8), 256, params=126_000_000),
    "mlp-large": ZooEntry("mlp", "MLP tower: 16 layers of 8192 (plain torch)", _plain("mlp_tower", width=8192, depth=16), 256, params=1_023_000_000),
    "gnmt": ZooEntry(
        "gnmt",
        "GNMT-like LSTM encoder-decoder with attention: 4+4 layers of 1024, vocab 32k (plain torch)",
        _plain("gnmt"),
        64,
        seq_len=50,
        params=179_000_000,
        slow=True,
    ),
    "dlrm": ZooEntry(
        "dlrm", "DLRM-like recommender: 8 embedding tables of 1M x 64, MLPs, dot interaction (plain torch)", _plain("dlrm"), 2048, params=513_000_000
    ),
}


# =========================================================================== specs
def parse_zoo_spec(spec: str) -> ZooSpec:
    """Parse ``zoo:NAME``, ``NAME`` or ``synthetic:FAMILY[:k=v...]``; unknown names raise with close matches."""
    from rlplace.synthetic import SYNTHETIC_FAMILIES, parse_synthetic_spec

    text = spec.strip()
    if text.startswith("synthetic:"):
        family, params = parse_synthetic_spec(text)
        return ZooSpec(kind="synthetic", name=family, params=params)
    name = text.removeprefix("zoo:")
    if name in ZOO:
        return ZooSpec(kind="model", name=name)
    candidates = [*ZOO, *(f"synthetic:{family}" for family in SYNTHETIC_FAMILIES)]
    close = difflib.get_close_matches(name, candidates, n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise RlplaceError(f"unknown zoo model {name!r}{hint} (`rlplace zoo` lists them all)")


def zoo_model(name: str, batch_size: int | None = None) -> ModelAndInputs:
    """``(module, example keyword inputs)`` of the zoo model ``name``, on the meta device."""
    spec = parse_zoo_spec(name)
    if spec.kind != "model":
        raise RlplaceError(f"{name!r} is a synthetic graph, not a model; load it with rlplace.load.load_model")
    entry = ZOO[spec.name]
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise RlplaceError(f"batch size must be a positive integer (got {batch_size!r})")
    return entry.build(batch_size or entry.batch_size, entry.seq_len, entry.image_size)


def list_zoo() -> list[dict[str, Any]]:
    """One row per zoo model and synthetic family: ``spec``, ``family``, ``description``,
    ``params``, ``batch_size``, ``seq_len``, ``image_size``, ``slow``."""
    from rlplace.synthetic import FAMILY_PARAMS

    rows: list[dict[str, Any]] = [
        {
            "spec": f"zoo:{name}",
            "family": entry.family,
            "description": entry.description,
            "params": entry.params,
            "batch_size": entry.batch_size,
            "seq_len": entry.seq_len,
            "image_size": entry.image_size,
            "slow": entry.slow,
        }
        for name, entry in ZOO.items()
    ]
    for family, knobs in FAMILY_PARAMS.items():
        rows.append(
            {
                "spec": f"synthetic:{family}",
                "family": "synthetic",
                "description": f"seeded synthetic {family} DAG; options " + ":".join(f"{knob}=..." for knob in knobs),
                "params": None,
                "batch_size": None,
                "seq_len": None,
                "image_size": None,
                "slow": False,
            }
        )
    return rows
