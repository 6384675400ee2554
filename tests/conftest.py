from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from service.checkpoint.manifest import Templates
from service.checkpoint.store import CheckpointRoot, CheckpointVersion
from service.contract.formatting import PromptFormatter

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def checkpoint_root() -> Path:
    """The bootstrapped default checkpoint (`make test` builds it before pytest runs)."""
    root = Path(os.environ.get("CRM_TEST_CHECKPOINT_ROOT", REPO / "checkpoints")).resolve()
    if CheckpointRoot(root).current_version() is None:
        pytest.fail(f"no checkpoint at {root}: run `make checkpoint` (make test does)")
    return root


@pytest.fixture(scope="session")
def default_version(checkpoint_root: Path) -> CheckpointVersion:
    return CheckpointRoot(checkpoint_root).resolve(verify_hashes=False)


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ.get("CRM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def build_tiny_llama(out: Path, tokenizer_dir: Path, **config: int) -> Path:
    """Save a randomly initialised 2-layer Llama (seed 0) with `tokenizer_dir`'s tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    sizes = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        **config,
    }
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        **sizes,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(llama).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama(
    tmp_path_factory: pytest.TempPathFactory, default_version: CheckpointVersion
) -> Path:
    """A randomly initialised 2-layer Llama with the default model's tokenizer."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), default_version.generator_path)


@pytest.fixture(scope="session")
def tiny_formatter(tiny_llama: Path) -> PromptFormatter:
    """The service's formatter over the tiny Llama's tokenizer, a 1024-token context."""
    from transformers import AutoTokenizer

    return PromptFormatter(
        AutoTokenizer.from_pretrained(tiny_llama), Templates(), "<|endoftext|>", 1024
    )
