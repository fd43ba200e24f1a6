"""The downstream experiment behind `synthgen augment-eval`: does synthetic minority data help a classifier?

data.py (real splits from shards, synthetic rows from a generate output) → arms.py (the four training sets)
→ train.py (one trial: Net1D classifier, selected on validation, scored once on test) → experiment.py
(synthetic set, trials on Ray, mean ± sd table and plot).
"""
