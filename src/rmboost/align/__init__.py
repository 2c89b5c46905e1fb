"""Alignment on preference pairs: reward-augmented relabelling, DPO training and goal-conditioned sampling.

`relabel` turns scored pairs into goal-conditioned pairs (each training pair twice: once asking for
the chosen response's score, once, swapped, for the rejected one's); `goals` is the goal format and
the swap, `scores` where the scores come from. `dpo` trains a policy on plain or relabelled pairs
with TRL's DPOTrainer; `sample` generates from a policy with a goal score; `policy` loads the policy
and fits prompts to its token budget for both.
"""
