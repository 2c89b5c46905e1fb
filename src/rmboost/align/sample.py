"""Generate from a policy, conditioned on a goal score the way reward-augmented DPO is used.

A policy trained on relabelled pairs learned what each score level looks like; at inference it
is asked for the top of the scale. `rmboost sample` reads the goal format (variant, template,
scale) that `rmboost dpo` saved beside such a policy and, by default, conditions every prompt on
the scale's top; a plain policy is sampled without a goal unless `--goal` asks for one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rmboost import options
from rmboost.align.dpo import META_FILE
from rmboost.align.goals import GoalFlags, GoalSpec, format_score, parse_scale
from rmboost.align.policy import fit_prompt, load_policy, policy_prompt
from rmboost.data.inputs import InputError, read_located_rows
from rmboost.data.messages import check_messages, split_pair
from rmboost.data.pairs import atomic_write_jsonl, input_written_over, write_summary
from rmboost.options import at_least, nucleus_mass, option, reuse
from rmboost.training import read_meta


@dataclass
class SampleConfig:
    """What `rmboost sample` does: its flags, in this order."""

    model: str = option(flags=("--model", "-m"), help="A folder written by `rmboost dpo`, smollm2 (the base policy), a causal-LM folder or a .gguf file.")
    input: Path = option(flags=("--input", "-i"), help="Prompt rows (prompt) or pair rows (their prompt); one response per distinct prompt.")
    output: Path = option(flags=("--output", "-o"), help="Rows with response, goal_score and the exact policy input (.jsonl).")
    goal: str | None = option(None, help="top (the scale's top), a score, or none. Default: top for a policy trained on relabelled pairs, none otherwise.")
    variant: str | None = option(None, help="Override the saved goal variant (system or user).")
    template: str | None = reuse(GoalFlags, "goal_template")  # None: the saved one
    scale: str | None = option(None, help="Override the saved goal scale LOW-HIGH.")
    max_new_tokens: int = option(256, check=at_least(1))
    temperature: float = option(0.0, check=at_least(0), help="0: greedy.")
    top_p: float = option(1.0, check=nucleus_mass)
    batch_size: int = option(8, check=at_least(1))
    seed: int = option(0)
    max_prompt_length: int | None = option(None, help="Default: the policy's training value, else 512.")
    limit: int | None = option(None, check=at_least(1), help="Only the first N distinct prompts.")
    device: str | None = option(None, help="cpu or cuda (default: cuda if available).")


def resolve_goal(cfg: SampleConfig, meta: dict[str, Any]) -> tuple[GoalSpec | None, float | None]:
    """The goal format and score to condition on (None, None: no goal)."""
    saved = meta.get("goal")
    spec = GoalSpec(**saved) if saved else None
    if cfg.variant or cfg.template or cfg.scale:
        base = spec or GoalSpec()
        changes: dict[str, Any] = {}
        if cfg.variant:
            changes["variant"] = cfg.variant
        if cfg.template:
            changes["template"] = cfg.template
        if cfg.scale:
            changes["low"], changes["high"] = parse_scale(cfg.scale)
        spec = replace(base, **changes)
    choice = (cfg.goal or ("top" if saved else "none")).strip().lower()
    if choice == "none":
        return None, None
    spec = spec or GoalSpec()
    if choice == "top":
        return spec, spec.high
    try:
        score = float(choice)
    except ValueError:
        raise ValueError(f"--goal {cfg.goal!r}: use top, none or a number on the scale {spec.scale}") from None
    if not spec.low <= score <= spec.high:
        raise ValueError(f"--goal {cfg.goal}: outside the goal scale {spec.scale}")
    return spec, score


def read_prompts(path: Path, limit: int | None = None) -> list[tuple[str, dict[str, Any], Any]]:
    """(where, row, prompt) for each DISTINCT prompt: prompt rows, or pair rows (their prompt)."""
    seen: set[str] = set()
    out = []
    for index, (where, row) in enumerate(read_located_rows(path)):
        if "chosen" in row and "rejected" in row:
            prompt = split_pair(row, where, index).prompt
        elif "prompt" in row and row["prompt"] is not None:
            prompt = row["prompt"]
            if not isinstance(prompt, str):
                check_messages(prompt, where, "prompt")
        else:
            raise InputError(f"{where}: missing field 'prompt'")
        key = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
        if key in seen:
            continue
        seen.add(key)
        out.append((where, row, prompt))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise InputError(f"{path}: no prompts in the file")
    return out


def generate(
    model: Any, tokenizer: Any, prompts: list[Any], *, max_new_tokens: int = 256, temperature: float = 0.0,
    top_p: float = 1.0, batch_size: int = 8, seed: int = 0,
) -> tuple[list[str], list[str], int]:
    """(responses, the exact text fed to the model per prompt, tokens generated), in input order."""
    import torch

    texts = []
    for p in prompts:
        p = policy_prompt(tokenizer, p)
        texts.append(p if isinstance(p, str) else tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths share a batch
    responses = [""] * len(texts)
    generated = 0
    for b, start in enumerate(range(0, len(order), batch_size)):
        idx = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        torch.manual_seed(seed + b)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
        with torch.inference_mode():
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id, **sampling,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        for i, ids in zip(idx, new, strict=True):
            ids = ids.tolist()
            if tokenizer.eos_token_id in ids:
                ids = ids[: ids.index(tokenizer.eos_token_id)]
            generated += len(ids)
            responses[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return responses, texts, generated


def run_sample(cfg: SampleConfig, log: Any = None) -> dict[str, Any]:
    """Read the prompts, condition them on the goal, generate, and write one row per prompt."""
    import torch

    started = time.perf_counter()
    say = log or (lambda _m: None)
    if cfg.output.suffix != ".jsonl":
        raise ValueError(f"--output {cfg.output}: use a .jsonl file name")
    if input_written_over([cfg.output], [cfg.input]):
        raise ValueError(f"--output {cfg.output} is the input file: write the samples to another file")
    options.validate(cfg)  # the declared checks, for configs built in code (the command line has run them)
    meta = read_meta(cfg.model, META_FILE) if Path(cfg.model).is_dir() else {}
    spec, score = resolve_goal(cfg, meta)
    limit = cfg.max_prompt_length or meta.get("format", {}).get("max_prompt_length") or 512
    items = read_prompts(cfg.input, cfg.limit)
    model, tokenizer, path = load_policy(cfg.model, log=say)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    fed, cut = [], 0
    for where, _row, prompt in items:
        prompt = policy_prompt(tokenizer, prompt, where)
        protect = ""
        if spec is not None and score is not None:
            prompt = spec.condition(prompt, score)
            protect = spec.user_prefix(score)
        prompt, was_cut = fit_prompt(tokenizer, prompt, limit, where, protect)
        fed.append(prompt)
        cut += was_cut
    goal_note = f"goal {format_score(score)} on {spec.scale} ({spec.variant})" if spec and score is not None else "no goal"
    say(f"sampling {len(items)} prompts from {cfg.model} with {goal_note}")
    responses, texts, generated = generate(
        model, tokenizer, fed, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
        batch_size=cfg.batch_size, seed=cfg.seed,
    )
    rows = []
    for (_where, row, prompt), conditioned, text, response in zip(items, fed, texts, responses, strict=True):
        out = {k: v for k, v in row.items() if k not in ("chosen", "rejected", "prompt")}
        out.update(
            prompt=prompt, response=response, policy_prompt=conditioned, policy_input=text,
            goal_score=score, policy=str(cfg.model),
        )
        rows.append(out)
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(cfg.output, rows)
    summary = {
        "model": str(cfg.model),
        "policy_path": path,
        "output": str(cfg.output),
        "prompts": len(rows),
        "goal": {"score": score, **spec.as_dict()} if spec is not None else None,
        "prompts_cut": cut,
        "max_prompt_length": limit,
        "tokens_generated": generated,
        "mean_response_tokens": round(generated / max(1, len(rows)), 1),
        "empty_responses": sum(1 for r in responses if not r),
        "temperature": cfg.temperature,
        "seed": cfg.seed,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_summary(cfg.output, summary)
    return summary
