"""Local Label Propagation (Zhuang et al. 2019; docs/llp.md).

``propagation`` (the paper's formulas: local density, the density-weighted vote, the
aggregation loss), ``objective`` (the memory bank and label store behind ``objective: llp`` in
the one training loop), ``stage`` (``semisup stage llp``), ``analysis`` (the oracle's view of
the pseudo-labels), ``run`` (the method end to end in-process). Import-free, like every method
package.
"""
