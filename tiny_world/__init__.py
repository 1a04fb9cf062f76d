"""The tiny world: procedural instruction tasks, demonstrations, a pretraining corpus, a hidden
preference and a true score. Pure Python, no torch: the stages and the labeling app both use it."""

from tiny_world.tasks import FAMILIES, Task, extract_answer
from tiny_world.world import PROMPT_FORMAT, Example, TinyWorld, exact_match, true_score

__all__ = ["FAMILIES", "PROMPT_FORMAT", "Example", "Task", "TinyWorld", "exact_match", "extract_answer", "true_score"]
