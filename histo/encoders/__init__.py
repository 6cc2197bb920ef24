"""Encoders: SSL methods (trainable) and baselines, one registry; artifacts carry preprocessing."""

#: Pixels an encoder sees unless told otherwise: training, the demo and baselines made with no trained
#: encoder to match. Chosen by measurement (``benchmarks/results/input_conditions.md``, 3 seeds): on
#: real tissue 96 px beats 224 px by 0.19-0.21 top-1 (far beyond the seed spread), on the synthetic
#: BACH-like set 224 px is ahead by 0.08 mMV@5, on the BRACS-like set they tie; 96 px is also 3x
#: cheaper to train and 5x cheaper to embed.
DEFAULT_INPUT_SIZE = 96
