"""dasd: Distribution-Aligned Sequence Distillation, as composable command-line tools."""

__version__ = "0.1.0"
