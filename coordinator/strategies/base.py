"""What a server-side strategy is: it turns a round's updates into the next global model, with state.

The coordinator and the in-process experiment transport call a strategy through
:func:`coordinator.aggregation.aggregate_round`, which also builds the complete prototypes (the same for
every algorithm). A strategy's state (FedOpt's momentum) is a dict of arrays that the coordinator stores as
a blob next to the model version it produced and hands back on the next round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from coordinator.aggregation.fedavg import Buffer
from mfcpl.wire.schemas import FederationCreate

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class RoundUpdates:
    """One round's input to a strategy."""

    config: FederationCreate
    sources: Sequence[tuple[Buffer, float]]  # stored update bodies and their num_samples, in a fixed order
    global_weights: Mapping[str, np.ndarray] | None  # the input model (when the strategy needs it)
    state: Mapping[str, np.ndarray] | None  # the strategy's state after the previous round (None at first)


class Strategy:
    """Server-side aggregation of one algorithm. Subclasses register with :func:`coordinator.strategies.register`."""

    name: ClassVar[str]
    needs_global_weights: ClassVar[bool] = False  # read the input model's weights for every round
    stateful: ClassVar[bool] = False  # carries state from round to round

    def aggregate(self, round_: RoundUpdates) -> tuple[Arrays, Arrays | None]:
        """The new global weights (any float dtype; cast back by the caller) and the new state."""
        raise NotImplementedError
