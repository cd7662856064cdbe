"""Weight quantizers, by name: the :class:`Quantizer` extension point and its registry.

A new quantizer is one module in this package (a :class:`Quantizer` subclass) plus one ``register`` line
below; ``tests/test_quantizer_conformance.py`` then checks it like every other.
"""

from __future__ import annotations

from methods.quantizers.base import (
    QUANTIZERS,
    Codes,
    MaskedWeight,
    Quantizer,
    check_quantizer_names,
    parametrization,
    stored_weight,
)
from methods.quantizers.hashed import HashedQuantizer
from methods.quantizers.kmeans import KMeansQuantizer
from methods.quantizers.linear import LinearQuantizer

QUANTIZERS.register("linear", LinearQuantizer())
QUANTIZERS.register("kmeans", KMeansQuantizer())
QUANTIZERS.register("hashed", HashedQuantizer())

__all__ = [
    "QUANTIZERS",
    "Codes",
    "HashedQuantizer",
    "KMeansQuantizer",
    "LinearQuantizer",
    "MaskedWeight",
    "Quantizer",
    "check_quantizer_names",
    "parametrization",
    "stored_weight",
]
