"""Stage 2: sequence models over a study's per-slice Stage-1 embeddings.

`STAGE2.create(name, in_dim=..., num_classes=..., **kwargs)` or `STAGE2.from_config({...})`;
every model maps `(x (B, L, in_dim), mask (B, L) bool)` to per-slice logits `(B, L, C)`
(contract in `ct25d.models.stage2.base`). Importing this package registers all models.
"""

from ct25d.models.stage2 import mamba2, rnn, transformer  # noqa: F401  (registers the models)
from ct25d.models.stage2.base import STAGE2, Stage2Model
from ct25d.models.stage2.features import neighbour_deltas
from ct25d.models.stage2.pooling import masked_slice_loss, volume_logits

__all__ = ["STAGE2", "Stage2Model", "masked_slice_loss", "neighbour_deltas", "volume_logits"]
