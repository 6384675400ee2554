"""The trainable model: one causal-LM backbone, its LM head (critiques) and a reward head.

Three ways to train, set by the recipe: LoRA adapters (peft; merged into the weights at export),
all weights, or only the top N decoder layers. What training changes is saved as a *delta*
(adapter or weights, plus the reward head) that `assemble` turns back into a full checkpoint on
top of the same base model; export and `make serve` both go through `assemble`, so they publish
byte-identical versions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from service.checkpoint.manifest import REWARD_HEAD_FILE, REWARD_HEAD_KEY
from service.engines.dtype import cpu_flags, resolve_generator_dtype
from trainer.config import LoraConfig
from trainer.run import StageError

ADAPTER_FILE = "adapter.safetensors"
DELTA_FILE = "delta.json"
FULL_DIR = "weights"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(name: str, device: torch.device, fsdp: bool = False) -> torch.dtype:
    """train.dtype with `auto` resolved by the service's rule for the generator: bfloat16 where
    the hardware computes it natively, float32 where it would be emulated. FSDP keeps float32
    weights (bf16 comes from train.mixed_precision there), so `auto` is float32 under it and an
    explicit bfloat16 is refused."""
    if fsdp:
        if name == "bfloat16":
            raise StageError(
                "train.dtype: FSDP shards float32 weights (the reward head is float32 too); set "
                "train.dtype=float32 and train.mixed_precision=bf16"
            )
        return torch.float32
    resolved = resolve_generator_dtype(name, device.type == "cpu", cpu_flags())
    return torch.float32 if resolved == "float32" else torch.bfloat16


def _layer_indices(num_layers: int, top: int | None) -> list[int] | None:
    if top is None or top >= num_layers:
        return None
    return list(range(num_layers - top, num_layers))


def _peft_config(lora: LoraConfig, layers: list[int] | None) -> Any:
    import peft

    return peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        layers_to_transform=layers,
        bias="none",
    )


def causal_of(model: Any) -> Any:
    """The XForCausalLM inside `model` (a PeftModel, or the causal LM itself)."""
    return model.base_model.model if hasattr(model, "peft_config") else model


@dataclass
class Policy:
    """`model` is what the optimiser trains (a PeftModel with LoRA); `causal` the underlying
    XForCausalLM whose `.model` is the decoder and `.lm_head` the LM head."""

    model: Any
    causal: Any
    head: torch.nn.Linear
    lora: LoraConfig | None
    layers: list[int] | None

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def trainable_named(self) -> dict[str, torch.nn.Parameter]:
        named = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        named["reward_head"] = self.head.weight
        return named

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.causal.model(input_ids=ids, attention_mask=mask).last_hidden_state

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()


def build_policy(
    lm: Any,
    head_init: torch.Tensor,
    *,
    lora: LoraConfig | None,
    trainable_layers: int | None,
    dtype: torch.dtype,
    device: torch.device,
) -> Policy:
    """Freeze what is not trained, add LoRA if asked, and attach a float32 reward head."""
    num_layers = int(lm.config.num_hidden_layers)
    layers = _layer_indices(num_layers, trainable_layers)
    lm = lm.to(dtype=dtype)
    for p in lm.parameters():
        p.requires_grad_(False)
    if lora is not None and lora.enabled:
        import peft

        model = peft.get_peft_model(lm, _peft_config(lora, layers))
        causal = model.base_model.model
    else:
        lora = None
        model = causal = lm
        if layers is None:  # full fine-tuning: every weight, embeddings included
            causal.requires_grad_(True)
        else:  # partial: the top layers and the final norm
            for i in layers:
                causal.model.layers[i].requires_grad_(True)
            causal.model.norm.requires_grad_(True)
    head = torch.nn.Linear(head_init.shape[-1], 1, bias=False)
    with torch.no_grad():
        head.weight.copy_(head_init.reshape(1, -1).float())
    model.to(device)
    head.to(device)
    return Policy(model, causal, head, lora, layers)


def save_delta(
    policy: Policy, out: Path, info: dict[str, Any], full_state: dict[str, Any] | None = None
) -> None:
    """Write what training changed: adapter (LoRA) or weights (full/partial), and the head.
    `full_state`: the training module's gathered state (keys model.*, head.weight) when the
    policy's own weights are FSDP or DeepSpeed shards."""
    out.mkdir(parents=True, exist_ok=True)
    if full_state is not None:
        head_weight = full_state["head.weight"]
        model_state = {
            k.removeprefix("model."): v for k, v in full_state.items() if k.startswith("model.")
        }
        if getattr(policy.causal.config, "tie_word_embeddings", False):
            # Gathered shards no longer share storage; the tied head is the embedding.
            model_state.pop("lm_head.weight", None)
    else:
        head_weight, model_state = policy.head.weight, None
    head = head_weight.detach().float().cpu().reshape(1, -1).contiguous()
    save_file({REWARD_HEAD_KEY: head}, str(out / REWARD_HEAD_FILE))
    meta = dict(info)
    if policy.lora is not None:
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(policy.model, state_dict=model_state)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
        save_file(tensors, str(out / ADAPTER_FILE))
        meta["kind"] = "lora"
        meta["lora"] = policy.lora.model_dump()
        meta["layers"] = policy.layers
    else:
        policy.causal.save_pretrained(
            out / FULL_DIR, safe_serialization=True, state_dict=model_state
        )
        meta["kind"] = "full"
    (out / DELTA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_delta(delta: Path) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((delta / DELTA_FILE).read_text())
    return meta


def apply_delta(lm: Any, delta: Path) -> tuple[Any, torch.Tensor]:
    """The base causal LM with the delta merged in (float32), and the trained reward head."""
    meta = read_delta(delta)
    head = load_file(str(delta / REWARD_HEAD_FILE))[REWARD_HEAD_KEY]
    if meta["kind"] == "full":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(delta / FULL_DIR, dtype=torch.float32), head
    import peft
    from peft import set_peft_model_state_dict

    lora = LoraConfig.model_validate(meta["lora"])
    model = peft.get_peft_model(lm.float(), _peft_config(lora, meta.get("layers")))
    result = set_peft_model_state_dict(model, load_file(str(delta / ADAPTER_FILE)))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"adapter in {delta} does not fit the base model: {unexpected[:3]}")
    return model.merge_and_unload().eval(), head
