"""Reward models: Bradley-Terry training (TRL's RewardTrainer), held-out evaluation, scoring.

torch, transformers and TRL are imported inside the functions that need them, so importing this
package (or the CLI that registers its commands) stays fast.
"""

from rmboost.rm.score import RewardScorer
from rmboost.rm.train import TrainRMConfig, train_rm

__all__ = ["RewardScorer", "TrainRMConfig", "train_rm"]
