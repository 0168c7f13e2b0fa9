"""Recurrent Stage-2 models: the seed's / RSNA 2nd-place bi-LSTM and the RSNA 1st-place bi-GRU +
dilated 1-D convolutions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ct25d.models.stage2.base import STAGE2, Stage2Model, lengths_of


def run_packed(rnn: nn.RNNBase, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Run a batch-first RNN on packed sequences so the backward direction starts at each study's
    last real slice and padding never enters the recurrence; padded outputs are 0."""
    packed = pack_padded_sequence(h, lengths_of(mask).cpu(), batch_first=True, enforce_sorted=False)
    out, _ = rnn(packed)
    return pad_packed_sequence(out, batch_first=True, total_length=h.shape[1])[0]


@STAGE2.register("bilstm")
class BiLSTM(Stage2Model):
    """Stacked bi-LSTMs with the RSNA 2nd-place skip connections: the features are
    `skip(h) + sum_i (o_i + relu(W_i o_i))` over the layers' outputs `o_i`, which keeps the
    per-slice evidence next to the sequence context and eases optimisation."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden: int = 64,
        num_layers: int = 2,
        d_model: int = 128,
        dropout: float = 0.1,
        use_deltas: bool = True,
    ) -> None:
        width = 2 * hidden
        super().__init__(
            in_dim, num_classes, feature_dim=width, d_model=d_model, dropout=dropout, use_deltas=use_deltas
        )
        self.lstms = nn.ModuleList(
            nn.LSTM(d_model if i == 0 else width, hidden, batch_first=True, bidirectional=True)
            for i in range(num_layers)
        )
        self.linears = nn.ModuleList(nn.Linear(width, width) for _ in range(num_layers))
        self.skip = nn.Linear(d_model, width)
        self.dropout = nn.Dropout(dropout)

    def encode(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        feats = self.skip(h)
        out = h
        for i, (lstm, linear) in enumerate(zip(self.lstms, self.linears, strict=True)):
            out = run_packed(lstm, self.dropout(out) if i else out, mask)
            feats = feats + out + F.relu(linear(out))
        return feats


class MaskedDilatedConv(nn.Module):
    """Residual dilated 1-D conv along the slice axis. Padded positions are zeroed before the conv,
    so a study's last slices see exactly the zero padding they would see if batched alone."""

    def __init__(self, dim: int, dilation: int, kernel_size: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep slices aligned; got {kernel_size}")
        self.conv = nn.Conv1d(dim, dim, kernel_size, dilation=dilation, padding=dilation * (kernel_size // 2))
        self.norm = nn.LayerNorm(dim)  # per-slice norm: no dependence on batch or padding
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hz = torch.where(mask.unsqueeze(-1), h, torch.zeros((), dtype=h.dtype, device=h.device))
        y = self.conv(hz.transpose(1, 2)).transpose(1, 2)
        return h + self.dropout(F.gelu(self.norm(y)))


@STAGE2.register("bigru_dilated")
class BiGRUDilated(Stage2Model):
    """Bi-GRU followed by a stack of masked, residual dilated convolutions (RSNA 1st place): the
    GRU carries long-range context, the dilated convs add sharp local (multi-slice) patterns."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden: int = 64,
        gru_layers: int = 1,
        dilations: tuple[int, ...] | list[int] = (1, 2, 4, 8),
        kernel_size: int = 3,
        d_model: int = 128,
        dropout: float = 0.1,
        use_deltas: bool = True,
    ) -> None:
        width = 2 * hidden
        super().__init__(
            in_dim, num_classes, feature_dim=width, d_model=d_model, dropout=dropout, use_deltas=use_deltas
        )
        self.gru = nn.GRU(
            d_model,
            hidden,
            num_layers=gru_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if gru_layers > 1 else 0.0,
        )
        self.convs = nn.ModuleList(MaskedDilatedConv(width, d, kernel_size, dropout) for d in dilations)

    def encode(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = run_packed(self.gru, h, mask)
        for conv in self.convs:
            out = conv(out, mask)
        return out
