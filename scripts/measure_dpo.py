"""Measure reward-augmented DPO against plain DPO and the base policy on held-out QA-Feedback questions.

Two steps around the `rmboost` commands (the full sequence is in docs/alignment.md):

    prepare   scored training pairs and held-out prompts from the question-level split;
    evaluate  mean reward of a trained RM per policy, and judge win rates (both orders), with
              95% bootstrap intervals over prompts.

Scores for relabelling come from the human comparisons themselves: QA-Feedback has four
responses per question and six human comparisons, so each response gets 1 + 2*wins + ties over
its three comparisons, a whole number on a 1-7 scale (a Borda count). That is real, human
quality information, and it is independent of both evaluators (the RM and the judge).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
from pathlib import Path
from typing import Any

from rmboost.data.pairs import atomic_write_jsonl
from rmboost.data.qa_feedback import COMPARISONS, question_id


def borda_scores(feedback_file: Path) -> dict[str, dict[str, int]]:
    """question id -> {response text: 1 + 2*wins + ties}, from the six human comparisons."""
    records = json.loads(feedback_file.read_text("utf-8"))
    out: dict[str, dict[str, int]] = {}
    for rec in records:
        score = dict.fromkeys(range(1, 5), 1)
        for (a, b), pref in zip(COMPARISONS, rec["preference"], strict=True):
            if pref == 0:
                score[a] += 1
                score[b] += 1
            else:
                score[a if pref == 1 else b] += 2
        out[question_id(rec["question"])] = {rec[f"prediction {i}"].strip(): s for i, s in score.items()}
    return out


def prepare(args: argparse.Namespace) -> None:
    scores = borda_scores(Path(args.source) / "dev_feedback.json")
    split = Path(args.split_dir)
    train = [json.loads(line) for line in (split / "train.jsonl").open(encoding="utf-8")]
    test = [json.loads(line) for line in (split / "test.jsonl").open(encoding="utf-8")]
    groups = sorted({p["group"] for p in train})
    random.Random(args.seed).shuffle(groups)
    chosen_groups: list[str] = []
    count = 0
    for g in groups:
        if count >= args.train_pairs:
            break
        chosen_groups.append(g)
        count += sum(1 for p in train if p["group"] == g)
    keep = set(chosen_groups)
    pairs = [p for p in train if p["group"] in keep][: args.train_pairs]
    for p in pairs:
        table = scores[p["group"]]
        p["chosen_score"], p["rejected_score"] = table[p["chosen"]], table[p["rejected"]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out / "train_scored.jsonl", pairs)
    test_groups = sorted({p["group"] for p in test})
    random.Random(args.seed).shuffle(test_groups)
    first = {}
    for p in test:
        first.setdefault(p["group"], p)
    prompts = [
        {"id": g, "group": g, "prompt": first[g]["prompt"], "inputs": first[g]["inputs"]}
        for g in test_groups[: args.test_prompts]
    ]
    atomic_write_jsonl(out / "heldout_prompts.jsonl", prompts)
    (out / "NOTICE.md").write_text(
        "Derived from QA-Feedback (Wu et al. 2023; allenai/FineGrainedRLHF), Apache License 2.0.\n", "utf-8"
    )
    ties = sum(p["chosen_score"] == p["rejected_score"] for p in pairs)
    print(
        f"{len(pairs)} scored training pairs from {len(keep)} questions (ties {ties}, mean chosen "
        f"{statistics.mean(p['chosen_score'] for p in pairs):.2f} vs rejected "
        f"{statistics.mean(p['rejected_score'] for p in pairs):.2f}); {len(prompts)} held-out prompts -> {out}"
    )


def bootstrap(values: list[float], resamples: int = 2000, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return [means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]]


def _read(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).open(encoding="utf-8") if line.strip()]


async def judge_all(systems: dict[str, list[dict[str, Any]]], pairs: list[tuple[str, str]], k: int, seed: int) -> dict[str, Any]:
    from rmboost.llm.cache import RequestCache, default_cache_path
    from rmboost.methods.common import StepFailed
    from rmboost.methods.judge import JudgeOptions, make_judge
    from rmboost.tasks import load_task

    cache = RequestCache(default_cache_path())
    judge = make_judge(JudgeOptions(mode="logprobs"), load_task("qa_feedback"), seed, cache)
    results: dict[str, Any] = {}
    try:
        for a, b in pairs:
            wins, p_values, agree, failed = [], [], 0, 0
            for ra, rb in list(zip(systems[a], systems[b], strict=True))[:k]:
                row = {"id": ra["id"], **ra["inputs"]}
                try:
                    v = await judge.compare(row, ra["response"] or "(empty)", rb["response"] or "(empty)", step="winrate")
                except StepFailed:
                    failed += 1
                    continue
                assert v.p_a is not None
                p_values.append(v.p_a)
                wins.append(1.0 if v.p_a > 0.5 else 0.0 if v.p_a < 0.5 else 0.5)
                first, second = v.verdicts
                agree += ((first.p_first or 0) > 0.5) == ((second.p_first or 0) < 0.5)
                print(f"  judge {a} vs {b}: {len(wins)}/{k}", file=sys.stderr, flush=True)
            results[f"{a} vs {b}"] = {
                "n": len(wins), "failed": failed, "win_rate": statistics.mean(wins), "ci95": bootstrap(wins, seed=seed),
                "mean_p": statistics.mean(p_values), "orders_agree": agree / max(1, len(wins)),
            }
    finally:
        await judge.ctx.llm.backend.aclose()
        cache.close()
    results["usage"] = judge.ctx.llm.usage.as_dict()
    return results


def evaluate(args: argparse.Namespace) -> None:
    from rmboost.rm.score import RewardScorer

    systems = {}
    for spec in args.samples:
        name, _, path = spec.partition("=")
        rows = sorted(_read(path), key=lambda r: r["id"])
        systems[name] = rows
    ids = [r["id"] for r in next(iter(systems.values()))]
    for name, rows in systems.items():
        if [r["id"] for r in rows] != ids:
            raise SystemExit(f"{name}: not the same prompts as the others")
    scorer = RewardScorer(args.rm)
    result: dict[str, Any] = {"prompts": len(ids), "rm": args.rm, "reward": {}, "length_chars": {}}
    rewards = {}
    for name, rows in systems.items():
        prompts = [scorer.prompt_for(r, default=r["prompt"] if isinstance(r["prompt"], str) else "") for r in rows]
        rewards[name] = scorer.score(prompts, [r["response"] for r in rows])
        result["reward"][name] = {"mean": statistics.mean(rewards[name]), "ci95": bootstrap(rewards[name], seed=args.seed)}
        result["length_chars"][name] = statistics.mean(len(r["response"]) for r in rows)
    base = next(iter(systems))
    for name in list(systems)[1:]:
        diff = [x - y for x, y in zip(rewards[name], rewards[base], strict=True)]
        result["reward"][f"{name} - {base}"] = {"mean": statistics.mean(diff), "ci95": bootstrap(diff, seed=args.seed)}
    names = list(systems)
    if len(names) == 3 and args.judge_prompts:
        comparisons = [(names[2], names[1]), (names[2], names[0]), (names[1], names[0])]
        result["judge"] = asyncio.run(judge_all(systems, comparisons, args.judge_prompts, args.seed))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    print(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--source", default="../shared/data/qa_feedback")
    p.add_argument("--split-dir", default="runs/qaf-final", help="from `rmboost data qa-feedback --out DIR --seed 0`")
    p.add_argument("--train-pairs", type=int, default=48)
    p.add_argument("--test-prompts", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/align")
    e = sub.add_parser("evaluate")
    e.add_argument("--samples", nargs="+", required=True, help="NAME=FILE from `rmboost sample`, base first, relabelled last")
    e.add_argument("--rm", required=True, help="a reward model from `rmboost train-rm`")
    e.add_argument("--judge-prompts", type=int, default=24, help="prompts compared by the judge (0: none)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", default="runs/align/results.json")
    args = parser.parse_args()
    prepare(args) if args.command == "prepare" else evaluate(args)


if __name__ == "__main__":
    main()
