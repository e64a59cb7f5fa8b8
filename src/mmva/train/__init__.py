"""Training and evaluation: ``mmva.train.fit.fit`` (the Lightning loop), ``mmva.train.evaluate.evaluate``,
metrics and losses.

>>> from mmva.train import compute_metrics
>>> compute_metrics([0, 1], [0, 1], ["a", "b"])["accuracy"]
1.0

``fit`` and ``evaluate`` are imported from their modules (``from mmva.train.fit import fit``): a
package attribute of the same name would be replaced by the submodule once it is imported.
"""

from __future__ import annotations

from mmva.train.metrics import compute_metrics

__all__ = ["compute_metrics"]
