"""guided-diffusion model flags: parsing, defaults, and inference from a checkpoint's tensor shapes."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

from probe.errors import ProbeError

# guided-diffusion's default channel multipliers per image size (script_util.create_model).
DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}
NUM_CLASSES = 1000  # guided-diffusion's class-conditional models are ImageNet models


@dataclasses.dataclass(frozen=True)
class ModelFlags:
    """Every guided-diffusion flag, with guided-diffusion's defaults (model_and_diffusion_defaults)."""

    image_size: int = 64
    num_channels: int = 128
    num_res_blocks: int = 2
    num_heads: int = 4
    num_heads_upsample: int = -1
    num_head_channels: int = -1
    attention_resolutions: str = "16,8"
    channel_mult: str = ""
    dropout: float = 0.0
    class_cond: bool = False
    use_checkpoint: bool = False
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    use_fp16: bool = False
    use_new_attention_order: bool = False
    learn_sigma: bool = False
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    timestep_respacing: str = ""
    use_kl: bool = False
    predict_xstart: bool = False
    rescale_timesteps: bool = False
    rescale_learned_sigmas: bool = False

    @property
    def channel_multipliers(self) -> tuple[float, ...]:
        if self.channel_mult:
            return tuple(_number(m) for m in self.channel_mult.split(","))
        if self.image_size not in DEFAULT_CHANNEL_MULT:
            raise ProbeError(
                f"no default channel_mult for image_size {self.image_size}: pass --channel_mult (e.g. 1,2,2)"
            )
        return DEFAULT_CHANNEL_MULT[self.image_size]

    @property
    def attention_downsamples(self) -> tuple[int, ...]:
        """The downsampling factors at which attention blocks sit (image_size // resolution)."""
        if not self.attention_resolutions:
            return ()
        return tuple(self.image_size // int(r) for r in self.attention_resolutions.split(","))

    @property
    def out_channels(self) -> int:
        return 6 if self.learn_sigma else 3

    @property
    def decoder_blocks(self) -> int:
        return len(self.channel_multipliers) * (self.num_res_blocks + 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_string(self) -> str:
        return " ".join(f"--{k} {v}" for k, v in self.to_dict().items() if v != "")


FIELDS = {f.name: f for f in dataclasses.fields(ModelFlags)}


def _number(text: str) -> float:
    value = float(text)
    return int(value) if value.is_integer() else value


def _convert(name: str, value) -> object:
    field_type = FIELDS[name].type
    text = str(value).strip()
    try:
        if field_type == "bool":
            if isinstance(value, bool):
                return value
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if field_type == "int":
            return int(text)
        if field_type == "float":
            return float(text)
        return text
    except ValueError:
        raise ProbeError(f"model flag --{name} got {value!r}: expected a {field_type}") from None


def parse_flags(spec: str | Path | dict | None) -> dict[str, object]:
    """The flags a user gave, as {name: typed value}: a flags string, a JSON file of flags, or a dict.

    The string is what guided-diffusion users have, e.g. "--image_size 256 --num_channels 256 ...";
    dashes and underscores in names are both accepted. A JSON file may hold the flags at the top level
    or under a "flags" key.
    """
    if spec is None or spec == "":
        return {}
    if isinstance(spec, dict):
        raw = spec
    elif isinstance(spec, Path) or (not str(spec).lstrip().startswith("-") and str(spec).endswith(".json")):
        path = Path(spec)
        if not path.is_file():
            raise ProbeError(f"model flags file {path} does not exist: pass a JSON file or a flags string")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ProbeError(f"model flags file {path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
        raw = raw.get("flags", raw)
    else:
        tokens = shlex.split(str(spec))
        raw = {}
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if not token.startswith("--"):
                raise ProbeError(f"model flags: expected --name value, got {token!r} in {spec!r}")
            name, _, inline = token[2:].partition("=")
            if inline:
                raw[name] = inline
                i += 1
            elif i + 1 < len(tokens) and not re.match(r"^--[a-zA-Z]", tokens[i + 1]):
                raw[name] = tokens[i + 1]
                i += 2
            else:
                raw[name] = ""
                i += 1
    flags = {}
    for name, value in raw.items():
        key = name.replace("-", "_")
        if key not in FIELDS:
            raise ProbeError(f"unknown model flag --{name}: known flags are {', '.join(FIELDS)}")
        flags[key] = _convert(key, value)
    return flags


def _levels(keys: set[str], prefix: str) -> dict[int, set[int]]:
    """{block index: indices of its sub-modules} for prefix 'input_blocks' or 'output_blocks'."""
    found: dict[int, set[int]] = {}
    for key in keys:
        m = re.match(rf"{prefix}\.(\d+)\.(\d+)\.", key)
        if m:
            found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return found


def infer_flags(state: dict) -> dict[str, object]:
    """Flags that a guided-diffusion state dict's keys and shapes determine, with the key that shows each."""
    keys = set(state)
    if "input_blocks.0.0.weight" not in keys or "out.2.weight" not in keys:
        raise ProbeError("checkpoint is not a guided-diffusion UNet state dict (no input_blocks.0.0.weight / out.2.weight)")
    num_channels = state["input_blocks.0.0.weight"].shape[0]
    outputs = _levels(keys, "output_blocks")
    # The first output block that ends with an upsampler has index num_res_blocks.
    upsamplers = sorted(
        i for i, subs in outputs.items()
        if any(j >= 1 and (f"output_blocks.{i}.{j}.in_layers.0.weight" in keys or f"output_blocks.{i}.{j}.conv.weight" in keys)
               for j in subs)
    )
    num_res_blocks = upsamplers[0] if upsamplers else len(outputs) - 1
    levels = len(outputs) // (num_res_blocks + 1)
    mult = []
    attention_ds = []
    for level in range(levels):
        block = 1 + level * (num_res_blocks + 1)
        channels = state[f"input_blocks.{block}.0.out_layers.3.weight"].shape[0]
        mult.append(_number(str(channels / num_channels)))
        if f"input_blocks.{block}.1.qkv.weight" in keys:
            attention_ds.append(2 ** level)
    first_up = upsamplers[0] if upsamplers else None
    emb_out = state["input_blocks.1.0.emb_layers.1.weight"].shape[0]
    block_out = state["input_blocks.1.0.out_layers.3.weight"].shape[0]
    return {
        "num_channels": num_channels,
        "num_res_blocks": num_res_blocks,
        "channel_mult": ",".join(str(m) for m in mult),
        "learn_sigma": state["out.2.weight"].shape[0] == 6,
        "class_cond": "label_emb.weight" in keys,
        "use_scale_shift_norm": emb_out == 2 * block_out,
        "resblock_updown": first_up is not None and f"output_blocks.{first_up}.{max(outputs[first_up])}.in_layers.0.weight" in keys,
        "_attention_ds": tuple(attention_ds),
    }


def _shape(state: dict, key: str) -> str:
    return f"{key} has shape {tuple(state[key].shape)}" if key in state else f"{key} is absent"


EVIDENCE = {  # what in a state dict shows each inferable flag
    "num_channels": lambda s: _shape(s, "input_blocks.0.0.weight"),
    "num_res_blocks": lambda s: "the first upsampling output block sits at that index",
    "channel_mult": lambda s: "the widths of input_blocks.*.0.out_layers.3.weight are those multiples",
    "learn_sigma": lambda s: _shape(s, "out.2.weight"),
    "class_cond": lambda s: _shape(s, "label_emb.weight"),
    "use_scale_shift_norm": lambda s: _shape(s, "input_blocks.1.0.emb_layers.1.weight"),
    "resblock_updown": lambda s: "the upsampling layers of output_blocks are " + ("ResBlocks" if any(".in_layers." in k and k.startswith("output_blocks") and ".2.in_layers" in k for k in s) else "convolutions"),
}


def resolve_flags(given: dict[str, object], state: dict | None, source: str = "checkpoint") -> ModelFlags:
    """Complete the user's flags: inferable ones from the checkpoint, the rest from guided-diffusion's defaults.

    A given flag that contradicts the checkpoint raises one ProbeError naming the flag and what was found.
    """
    values = dict(given)
    if state is not None:
        inferred = infer_flags(state)
        attention_ds = inferred.pop("_attention_ds")
        for name, found in inferred.items():
            if given.get(name, "") == "":  # not given (an empty channel_mult is guided-diffusion's "by image size")
                values[name] = found
                continue
            expected = given[name]
            same = (
                tuple(_number(m) for m in str(expected).split(",")) == tuple(_number(m) for m in str(found).split(","))
                if name == "channel_mult" else expected == found
            )
            if not same:
                raise ProbeError(
                    f"--{name} {expected} contradicts {source}: {EVIDENCE[name](state)}, which means --{name} {found}; "
                    f"drop the flag or pass --{name} {found}"
                )
        if "image_size" not in values:
            raise ProbeError(f"--image_size cannot be inferred from {source}: pass it in --model-flags (e.g. --image_size 256)")
        size = values["image_size"]
        resolutions = ",".join(str(size // ds) for ds in attention_ds)
        if "attention_resolutions" not in given:
            values["attention_resolutions"] = resolutions
        else:
            flags = ModelFlags(**values)
            if set(flags.attention_downsamples) != set(attention_ds):
                raise ProbeError(
                    f"--attention_resolutions {given['attention_resolutions']} contradicts {source}: its attention "
                    f"blocks (qkv weights) sit at resolutions {resolutions or 'none'} for --image_size {size}"
                )
    return ModelFlags(**values)
